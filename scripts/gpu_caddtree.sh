#!/usr/bin/env bash
# On the H200: the whole-round profile (the graph engine's default),
# the bench of every AR-drafter method and budget with caddtree's two horizons side by side
# (caddtree: the round's own ratio, the default; caddtree/decode: the decode horizon), the fp32 exactness check, the
# measured rounds against the profile, and both horizons against the best fixed budget.
#   usage: OUT=dir LIMIT=48 bash scripts/gpu_caddtree.sh
#   (`bash scripts/device_tree.sh hide models/dllm docs/benchmarks` before the call, `restore` after)
set -uo pipefail
source scripts/bench_env.sh
{
echo "--- profile ($((SECONDS - t0)) s)"
sd profile --device cuda --dtype bfloat16 --engine graph --contexts 128,512,1024 --out "$R/profile_bfloat16.json"
echo "--- bench ($((SECONDS - t0)) s)"
sd bench --device cuda --dtype bfloat16 --engine graph $P --methods ar,dflash,ddtree,caddtree \
  --budgets 16,32,64,128,256,512 --caddtree-horizon round,decode --temperature 0,1 --limit "$L" \
  --profile "$R/profile_bfloat16.json" --out "$R/gpu_graph_bfloat16" | grep -v "^|"
echo "--- fp32 check ($((SECONDS - t0)) s)"
sd bench --device cuda --dtype float32 --engine graph $P --methods ar,dflash,ddtree,caddtree --budgets 32 \
  --temperature 0,1 --limit 8 --profile "$R/profile_bfloat16.json" --out "$R/fp32_check" | grep -v "^|"
grep -h "differ from ar" "$R"/fp32_check/report.md
python3 -m specdiff round-costs "$R/gpu_graph_bfloat16" "$R/profile_bfloat16.json" > "$R/round_costs.md"
for m in caddtree caddtree/decode; do python3 -m specdiff versus "$R/gpu_graph_bfloat16" --method $m; done
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep -v "it/s]" | grep -v MISMATCH | tee "$R/gpu_caddtree.log"
tar -C "$R" -cf "$OUT/bench.tar" .
