#!/usr/bin/env bash
# benchmarks/gpu_session.sh — everything issue 5's acceptance needs from a GPU, as ONE prepared call
# of the device tool (a session gets ~15 minutes of GPU time in all, start-up included).
#
# Here, once (copies the pycuda wheels from ../shared/gpu/wheels into .whl/, which git ignores:
# ../shared does not travel to the GPU machine, the repo and carried paths do):
#     bash benchmarks/gpu_session.sh --prepare
# Then, with the device tool:
#     run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=560)
# Every step has its own time limit and writes $OUT/<step>.txt (OUT defaults to ./gpu-session-out);
# $OUT/summary.txt has one line per step with its exit code and seconds. Steps:
#   device      explorer.backends.cuda.available() and device_info()
#   pytest_gpu  the gpu-marked tests: the whole differential suite on target="cuda", tensor cores, ...
#   memcheck    compute-sanitizer memcheck on the matmul, reduction and softmax kernels
#   gpu_bench   benchmarks/gpu.py --quick (copy bandwidth, SGEMM/HGEMM vs cuBLAS, softmax/layernorm vs torch)
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .whl && cp ../shared/gpu/wheels/*.whl .whl/ || { echo "no wheels in ../shared/gpu/wheels"; exit 1; }
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  ls -la .whl; exit 0
fi
OUT="${OUT:-gpu-session-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -z "${KE_SKIP_WHEELS:-}" ]; then   # KE_SKIP_WHEELS=1: a dry run of the steps on a machine without a GPU
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "the pycuda wheels did not install: run 'bash benchmarks/gpu_session.sh --prepare' here and carry .whl"; exit 1; }
fi
export PYTHONPATH="/tmp/site:$PWD"
ldconfig -p | grep -q libcuda.so.1 || export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"

step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
  tail -n 8 "$OUT/$name.txt"
}

step nvidia-smi 20 nvidia-smi
step device 60 python3 -c "from explorer.backends import cuda; ok, why = cuda.available(); print(ok, why); ok and print(cuda.device_info())"
GPU_TESTS="tests/test_backends_diff.py tests/test_cuda_backend.py tests/test_tensor_core.py tests/test_compare.py"
step pytest_gpu 200 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4 $GPU_TESTS
if command -v compute-sanitizer > /dev/null; then
  step memcheck 110 compute-sanitizer --tool memcheck --error-exitcode 3 \
    python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_backends_diff.py -k "matmul or softmax or sum or layernorm"
else
  echo "memcheck rc=skipped (no compute-sanitizer on PATH)" | tee -a "$OUT/summary.txt"
fi
step gpu_bench 160 python3 benchmarks/gpu.py --quick
echo "== summary"; cat "$OUT/summary.txt"
