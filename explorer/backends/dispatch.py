"""A C-level call path for small serial CPU programs (built once per machine, used when it builds).

`c(a, b)` on a 16x16 @ 16x16 matmul cost 1.6 µs through the Python fast path (argument checks
0.5 µs, output block and pointers 0.7, the ctypes call 0.25) where NumPy's `a @ b` costs 0.9; the
kernel itself runs in ~0.1. This module compiles one small CPython extension, `_ke_dispatch`, whose
`Call` object does that path in C: the same checks as `CpuExecutable.fast_call` (exact ndarray,
dtype, native byte order, shape, C-contiguous), a fresh output array per call, and a direct call
of each kernel's function pointer with the GIL released (as ctypes releases it).

It serves only programs whose every kernel runs serially, with outputs and temporaries of at most
`cpu.OWN_OUTPUT_BYTES` each: larger outputs keep the caching allocator (first-touching fresh pages
costs more than the call), parallel kernels keep the call-time thread policy. Anything else, or any
argument the checks reject, takes the Python path (which then gives the full path's conversions and
errors). Without Python's or NumPy's C headers, or without a C compiler, `available()` says why and
everything runs as before.

>>> from explorer.backends import dispatch
>>> dispatch.status()                                   # doctest: +SKIP
'C call path: built (/root/.cache/kernel-explorer/cpu/....so)'
"""
from __future__ import annotations

import ctypes
import os
import sysconfig
from typing import Any, Sequence

import numpy as np

MAX_ARGS = 16      # parameters of one kernel, and inputs / outputs of a program
MAX_KERNELS = 8

SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#define KE_MAX_ARGS @MAX_ARGS@
#define KE_MAX_KERNELS @MAX_KERNELS@

typedef void (*ke_fn)(void);
typedef struct { int type, ndim; npy_intp dims[NPY_MAXDIMS]; } ke_spec;
/* a kernel parameter: source 0 = input i, 1 = output i, 2 = a fixed pointer (a constant) */
typedef struct { int source, index; void *fixed; } ke_param;
typedef struct { ke_fn fn; int n_params; ke_param params[KE_MAX_ARGS]; } ke_kernel;

typedef struct {
  PyObject_HEAD
  int n_in, n_out, n_returned, n_kernels;   /* out: the outputs, then the temporaries (not returned) */
  ke_spec in[KE_MAX_ARGS], out[KE_MAX_ARGS];
  ke_kernel kernels[KE_MAX_KERNELS];
  unsigned long long calls;
} Call;

static void ke_run(ke_fn f, int n, void **p) {
  switch (n) {
#define A(k) p[k]
  case 1: ((void (*)(void*))f)(A(0)); break;
  case 2: ((void (*)(void*, void*))f)(A(0), A(1)); break;
  case 3: ((void (*)(void*, void*, void*))f)(A(0), A(1), A(2)); break;
  case 4: ((void (*)(void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3)); break;
  case 5: ((void (*)(void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4)); break;
  case 6: ((void (*)(void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5)); break;
  case 7: ((void (*)(void*, void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5), A(6)); break;
  case 8: ((void (*)(void*, void*, void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7)); break;
  case 9: ((void (*)(void*, void*, void*, void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8)); break;
  case 10: ((void (*)(void*, void*, void*, void*, void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9)); break;
  case 11: ((void (*)(void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10)); break;
  case 12: ((void (*)(void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11)); break;
  case 13: ((void (*)(void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11), A(12)); break;
  case 14: ((void (*)(void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11), A(12), A(13)); break;
  case 15: ((void (*)(void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11), A(12), A(13), A(14)); break;
  case 16: ((void (*)(void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*, void*))f)(A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11), A(12), A(13), A(14), A(15)); break;
#undef A
  }
}

static int ke_matches(PyObject *o, const ke_spec *s) {
  if (!PyArray_CheckExact(o)) return 0;
  PyArrayObject *a = (PyArrayObject *)o;
  if (PyArray_TYPE(a) != s->type || PyArray_NDIM(a) != s->ndim || !PyArray_ISNOTSWAPPED(a)
      || !PyArray_IS_C_CONTIGUOUS(a)) return 0;
  npy_intp *d = PyArray_DIMS(a);
  for (int i = 0; i < s->ndim; ++i) if (d[i] != s->dims[i]) return 0;
  return 1;
}

/* call(args: tuple) -> list of fresh outputs, or None when an argument is not exactly as expected */
static PyObject *Call_call(Call *self, PyObject *args, PyObject *kwargs) {
  PyObject *t;
  if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &t)) return NULL;
  if (PyTuple_GET_SIZE(t) != self->n_in) Py_RETURN_NONE;
  void *in[KE_MAX_ARGS], *out[KE_MAX_ARGS];
  for (int i = 0; i < self->n_in; ++i) {
    PyObject *o = PyTuple_GET_ITEM(t, i);
    if (!ke_matches(o, &self->in[i])) Py_RETURN_NONE;
    in[i] = PyArray_DATA((PyArrayObject *)o);
  }
  PyObject *arrays[KE_MAX_ARGS];
  for (int i = 0; i < self->n_out; ++i) {
    arrays[i] = PyArray_SimpleNew(self->out[i].ndim, self->out[i].dims, self->out[i].type);
    if (arrays[i] == NULL) { for (int j = 0; j < i; ++j) Py_DECREF(arrays[j]); return NULL; }
    out[i] = PyArray_DATA((PyArrayObject *)arrays[i]);
  }
  /* the caller's tuple keeps the inputs alive while the GIL is released */
  Py_BEGIN_ALLOW_THREADS
  for (int k = 0; k < self->n_kernels; ++k) {
    const ke_kernel *kn = &self->kernels[k];
    void *p[KE_MAX_ARGS];
    for (int j = 0; j < kn->n_params; ++j) {
      const ke_param *q = &kn->params[j];
      p[j] = q->source == 0 ? in[q->index] : (q->source == 1 ? out[q->index] : q->fixed);
    }
    ke_run(kn->fn, kn->n_params, p);
  }
  Py_END_ALLOW_THREADS
  self->calls++;
  for (int i = self->n_returned; i < self->n_out; ++i) Py_DECREF(arrays[i]);   /* temporaries */
  PyObject *res = PyList_New(self->n_returned);
  if (res == NULL) { for (int i = 0; i < self->n_returned; ++i) Py_DECREF(arrays[i]); return NULL; }
  for (int i = 0; i < self->n_returned; ++i) PyList_SET_ITEM(res, i, arrays[i]);
  return res;
}

static int ke_parse_specs(PyObject *seq, ke_spec *specs, int *n) {
  /* seq: [(type number, (dim, ...)), ...] */
  Py_ssize_t len = PySequence_Length(seq);
  if (len < 0 || len > KE_MAX_ARGS) { PyErr_SetString(PyExc_ValueError, "too many arrays"); return -1; }
  *n = (int)len;
  for (Py_ssize_t i = 0; i < len; ++i) {
    PyObject *item = PySequence_GetItem(seq, i), *dims;
    int type;
    if (item == NULL || !PyArg_ParseTuple(item, "iO", &type, &dims)) { Py_XDECREF(item); return -1; }
    Py_ssize_t nd = PySequence_Length(dims);
    if (nd < 0 || nd > NPY_MAXDIMS) { Py_DECREF(item); PyErr_SetString(PyExc_ValueError, "bad shape"); return -1; }
    specs[i].type = type;
    specs[i].ndim = (int)nd;
    for (Py_ssize_t d = 0; d < nd; ++d) {
      PyObject *x = PySequence_GetItem(dims, d);
      specs[i].dims[d] = x ? (npy_intp)PyLong_AsSsize_t(x) : -1;
      Py_XDECREF(x);
    }
    Py_DECREF(item);
    if (PyErr_Occurred()) return -1;
  }
  return 0;
}

/* Call(inputs, outputs and temporaries, number returned, kernels):
 * kernels = [(function address, [(source, index, fixed address), ...]), ...] */
static int Call_init(Call *self, PyObject *args, PyObject *kwargs) {
  PyObject *ins, *outs, *kernels;
  if (!PyArg_ParseTuple(args, "OOiO", &ins, &outs, &self->n_returned, &kernels)) return -1;
  if (ke_parse_specs(ins, self->in, &self->n_in) < 0 || ke_parse_specs(outs, self->out, &self->n_out) < 0)
    return -1;
  if (self->n_returned < 0 || self->n_returned > self->n_out) {
    PyErr_SetString(PyExc_ValueError, "bad number of returned outputs"); return -1;
  }
  Py_ssize_t nk = PySequence_Length(kernels);
  if (nk < 1 || nk > KE_MAX_KERNELS) { PyErr_SetString(PyExc_ValueError, "bad kernel count"); return -1; }
  self->n_kernels = (int)nk;
  for (Py_ssize_t k = 0; k < nk; ++k) {
    PyObject *item = PySequence_GetItem(kernels, k), *params;
    unsigned long long fn;
    if (item == NULL || !PyArg_ParseTuple(item, "KO", &fn, &params)) { Py_XDECREF(item); return -1; }
    Py_ssize_t np_ = PySequence_Length(params);
    if (np_ < 1 || np_ > KE_MAX_ARGS) { Py_DECREF(item); PyErr_SetString(PyExc_ValueError, "bad parameter count"); return -1; }
    ke_kernel *kn = &self->kernels[k];
    kn->fn = (ke_fn)(uintptr_t)fn;
    kn->n_params = (int)np_;
    for (Py_ssize_t j = 0; j < np_; ++j) {
      PyObject *p = PySequence_GetItem(params, j);
      unsigned long long fixed;
      int ok = p != NULL && PyArg_ParseTuple(p, "iiK", &kn->params[j].source, &kn->params[j].index, &fixed);
      Py_XDECREF(p);
      if (!ok) { Py_DECREF(item); return -1; }
      kn->params[j].fixed = (void *)(uintptr_t)fixed;
      int limit = kn->params[j].source == 0 ? self->n_in : self->n_out;
      if (kn->params[j].source < 2 && (kn->params[j].index < 0 || kn->params[j].index >= limit)) {
        Py_DECREF(item); PyErr_SetString(PyExc_ValueError, "parameter index out of range"); return -1;
      }
    }
    Py_DECREF(item);
  }
  self->calls = 0;
  return 0;
}

static PyObject *Call_get_calls(Call *self, void *closure) { return PyLong_FromUnsignedLongLong(self->calls); }

static PyGetSetDef Call_getset[] = {
  {"calls", (getter)Call_get_calls, NULL, "calls made through this path", NULL},
  {NULL}
};

static PyTypeObject CallType = {
  PyVarObject_HEAD_INIT(NULL, 0)
  .tp_name = "_ke_dispatch.Call",
  .tp_basicsize = sizeof(Call),
  .tp_flags = Py_TPFLAGS_DEFAULT,
  .tp_doc = "call(args) -> fresh outputs of a small serial CPU program, or None for other arguments",
  .tp_new = PyType_GenericNew,
  .tp_init = (initproc)Call_init,
  .tp_call = (ternaryfunc)Call_call,
  .tp_getset = Call_getset,
};

static struct PyModuleDef ke_module = {PyModuleDef_HEAD_INIT, "_ke_dispatch", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__ke_dispatch(void) {
  import_array();
  if (PyType_Ready(&CallType) < 0) return NULL;
  PyObject *m = PyModule_Create(&ke_module);
  if (m == NULL) return NULL;
  Py_INCREF(&CallType);
  if (PyModule_AddObject(m, "Call", (PyObject *)&CallType) < 0) { Py_DECREF(&CallType); Py_DECREF(m); return NULL; }
  return m;
}
""".replace("@MAX_ARGS@", str(MAX_ARGS)).replace("@MAX_KERNELS@", str(MAX_KERNELS))

_state: dict[str, Any] = {}


def _headers() -> tuple[list[str], str | None]:
    """(-I flags for Python's and NumPy's C headers, why not when one is missing)."""
    py = sysconfig.get_paths().get("include") or ""
    if not os.path.isfile(os.path.join(py, "Python.h")):
        return [], f"Python's C headers are not installed (no Python.h in {py or 'sysconfig include'})"
    npy = np.get_include()
    if not os.path.isfile(os.path.join(npy, "numpy", "arrayobject.h")):
        return [], f"NumPy's C headers are missing (no numpy/arrayobject.h in {npy})"
    return [f"-I{py}", f"-I{npy}"], None


def module() -> Any | None:
    """The built `_ke_dispatch` extension, built on first use and cached like the kernels; None
    (and `status()` says why) when it cannot be built here."""
    if "module" in _state:
        return _state["module"]
    _state["module"] = None
    if os.environ.get("KE_PYTHON_CALL_PATH"):
        _state["why"] = "off (KE_PYTHON_CALL_PATH is set)"
        return None
    includes, why = _headers()
    if why:
        _state["why"] = why
        return None
    from importlib.machinery import ExtensionFileLoader
    from importlib.util import module_from_spec, spec_from_file_location
    from . import cpu
    from ..errors import ExplorerError
    key = f"/* python {sysconfig.get_python_version()} {sysconfig.get_config_var('SOABI')}, numpy {np.__version__} */\n"
    try:
        so = cpu.compile_source(key + SOURCE, extra_flags=includes)
        loader = ExtensionFileLoader("_ke_dispatch", str(so))
        mod = module_from_spec(spec_from_file_location("_ke_dispatch", str(so), loader=loader))
        loader.exec_module(mod)
    except (ExplorerError, ImportError, OSError) as e:
        _state["why"] = f"could not be built ({str(e).splitlines()[0][:160]})"
        return None
    _state["module"], _state["why"] = mod, f"built ({so})"
    return mod


def status() -> str:
    """One line for people: whether small serial programs are called from C, or why not."""
    module()
    return f"C call path: {_state['why']}"


def make_call(in_specs: Sequence[tuple[tuple[int, ...], np.dtype]],
              out_specs: Sequence[tuple[tuple[int, ...], np.dtype]], n_returned: int,
              kernels: Sequence[tuple[Any, Sequence[tuple[int, int, int]]]]) -> Any | None:
    """A `Call` for a program: `out_specs` are its outputs (the first `n_returned`) then its temporaries,
    each allocated per call; `kernels` are (ctypes function, [(source, index, fixed address)]) with
    source 0 = input, 1 = output or temporary, 2 = the fixed address (a constant the caller keeps
    alive); None when the extension is not available or the program has more arrays than it takes."""
    mod = module()
    if mod is None or len(kernels) > MAX_KERNELS or len(in_specs) > MAX_ARGS or len(out_specs) > MAX_ARGS:
        return None
    if any(len(params) > MAX_ARGS or not params for _, params in kernels):
        return None
    spec = lambda specs: [(np.dtype(dt).num, tuple(int(d) for d in shape)) for shape, dt in specs]  # noqa: E731
    table = [(ctypes.cast(fn, ctypes.c_void_p).value, [(s, i, f) for s, i, f in params]) for fn, params in kernels]
    return mod.Call(spec(in_specs), spec(out_specs), n_returned, table)
