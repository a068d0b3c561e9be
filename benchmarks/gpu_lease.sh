#!/usr/bin/env bash
# A GPU lease, in the repo root with gpu_wheels/ carried (README: "On a GPU host"): the carried
# wheels into /tmp/site (transformers only if the host's differs), versions and the device, then
# the suite in what is left of LEASE_S, into $OUT. Arguments go to the suite.
T0=$SECONDS
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu_suite}
SITE=${SITE:-/tmp/site}
W=gpu_wheels
mkdir -p "$OUT" "$SITE"
exec > >(tee -a "$OUT/lease.log") 2>&1
whl=$(ls $W/pydantic-2*.whl $W/pydantic_core-*.whl $W/annotated_types-*.whl $W/typing_inspection-*.whl $W/typing_extensions-*.whl 2>/dev/null)
if [ -z "$whl" ]; then
  echo "no wheels in $W/: the host's pydantic"
elif $PY -m pip --version >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" $whl || echo "not installed: the host's pydantic"
else
  for w in $whl; do $PY -m zipfile -e "$w" "$SITE"; done
fi
tf=$($PY -c 'import transformers as t; print(t.__version__)' 2>/dev/null)
if [ "$tf" != 5.17.0 ] && [ -f $W/transformers-5.17.0-py3-none-any.whl ]; then
  echo "transformers ${tf:-missing}: installing 5.17.0"
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" $W/transformers-5.17.0-py3-none-any.whl
fi
export PYTHONPATH=$SITE:. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: none"
$PY -c '
import sys, torch, transformers, pydantic, importlib.metadata as m
def v(n):
    try: return m.version(n)
    except m.PackageNotFoundError: return None
print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__,
      "pydantic", pydantic.__version__, "peft", v("peft"), "triton", v("triton"),
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")
'
LEFT=$(( ${LEASE_S:-570} - (SECONDS - T0) ))
echo "suite budget: $LEFT s"
$PY benchmarks/gpu_suite.py --out-dir "$OUT" --budget-s "$LEFT" "$@"
