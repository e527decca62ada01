# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test bench fuzz venv clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(PY) -m explorer demo

test: $(VENV)/.test
	$(PY) tests/setup_browser.py
	$(PY) -m pytest -n 2 -q

# Random-program differential fuzzer (tests/fuzz/README.md): N programs in worker processes.
N ?= 1000
FUZZ_ARGS ?=
fuzz: $(VENV)/.test
	$(PY) tests/fuzz/fuzz_run.py -n $(N) $(FUZZ_ARGS)

bench: $(VENV)/.test
	$(PY) -m explorer bench

clean:
	rm -rf $(VENV) explorer-demo
