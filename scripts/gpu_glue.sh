#!/usr/bin/env bash
# GPU: the glued decode GEMMs (`--kernels glued`, `kernels.decode_gemm`): the kernel tests on the
# GPU (tests/test_fused_forward.py runs on a CPU only, under Triton's interpreter), the sweep
# of their launch settings (scripts/gpu_decode_gemm.py; the speed runs take the best it found), and
# `specdiff speed` of each SHAPE with --kernels triton and glued, on the same GPU. Steps run in the
# order STEPS names; steps past DEADLINE (seconds from the start) are cut off. Writes
# $OUT/glue.tar after every step.
#   usage: STEPS="tests sweep speed:qwen3-8b speed:qwen3-1.7b" DEADLINE=540 bash scripts/gpu_glue.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
R=$PWD/out; mkdir -p "$R" "$OUT"
t0=$SECONDS
left() { echo $(( ${DEADLINE:-100000} - (SECONDS - t0) )); }
pack() { tar -C "$R" -cf "$OUT/glue.tar" .; }
speed() {  # name, kernels, shape; the swept settings where the sweep ran
  PYTHONPATH=$PWD/src timeout "$(left)" python3 -c "import json, os, sys
from specdiff.kernels import gemm
from specdiff.cli import main
if os.path.exists('$R/settings.json'):
    gemm.DECODE_GEMM_SETTINGS.update({tuple(k): tuple(s) for k, s in json.load(open('$R/settings.json'))})
sys.exit(main(sys.argv[1:]))" speed --shape "$3" --device cuda --dtype bfloat16 --kernels "$2" \
    --engine graph --budgets "${BUDGETS:-16,64}" --json > "$R/speed_$1.json" 2> "$R/speed_$1.err"
  PYTHONPATH=$PWD/src python3 -c "import json, sys; from specdiff.bench.speed import table
print(table(json.load(open(sys.argv[1]))))" "$R/speed_$1.json" | tee "$R/speed_$1.md"
  tail -2 "$R/speed_$1.err"
}
{
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
python3 -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
for step in ${STEPS:-tests sweep speed:qwen3-8b speed:qwen3-1.7b}; do
  echo "--- $step ($((SECONDS - t0)) s)"
  case "$step" in
    tests)
      PYTHONPATH=src timeout 200 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_kernels.py \
        2>&1 | grep -E "Error|error|assert|FAILED|passed|failed" | head -30
      PYTHONPATH=src timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_graph_engine.py \
        -k "once or resident or read_back or sized_from" 2>&1 | tail -3 ;;
    sweep) SETTINGS_OUT=$R/settings.json PYTHONPATH=src timeout "$(left)" python3 scripts/gpu_decode_gemm.py \
             ${SWEEP_SHAPES:-8b,1.7b} ;;
    speed:*)
      speed "${step#speed:}_glued" glued "${step#speed:}"
      speed "${step#speed:}_triton" triton "${step#speed:}" ;;
  esac
  pack
done
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | tee -a "$R/gpu_glue.log"
pack
