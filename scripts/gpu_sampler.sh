#!/usr/bin/env bash
# The keyed sampler on the GPU: the filtered-token test over 10^6 positions at Qwen3's vocabulary
# (CUDA), the cost of a noise block against the earlier sampler, and the single-drafter methods'
# outputs against AR's at T=0 and T=1 on the bundled models in fp32 (graph engine).
#   usage: OUT=dir bash scripts/gpu_sampler.sh
#   (`bash scripts/device_tree.sh hide models/dllm models/vp` before the call, `restore` after)
set -uo pipefail
source scripts/bench_env.sh
{
echo "--- noise block cost ($((SECONDS - t0)) s)"
python3 scripts/sampler_cost.py --device cuda | tee "$R/sampler_cost.md"
echo "--- sampler tests, 10^6 positions ($((SECONDS - t0)) s)"
SPECDIFF_SAMPLER_POSITIONS=1000000 python3 -m pytest -p no:cacheprovider -p no:warnings tests/test_sampler.py \
  --durations=4 -o addopts="" 2>&1 | tail -12
tar -C "$R" -cf "$OUT/bench.tar" .
echo "--- fp32 T=0,1 exactness ($((SECONDS - t0)) s)"
sd bench --device cuda --dtype float32 --engine graph $P --methods ar,pld,dflash,ddtree \
  --budgets 16,64 --temperature 0,1 --limit "$L" --out "$R/fp32_sampling" | grep -v "^|"
grep -h "differ from ar" "$R"/fp32_sampling/report.md
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep -v "it/s]" | tee "$R/gpu_sampler.log"
tar -C "$R" -cf "$OUT/bench.tar" .
