#!/usr/bin/env bash
# On the GPU, per dtype: the
# graph-engine cost profile and the bench of every AR-drafter method and budget (T=0/1, both
# prompt sets); D²SD beside dflash and ddtree@64 after the first dtype. bf16 first (what users
# run), then fp32 (token-for-token comparable with AR). Packed into $OUT/bench.tar after each step.
#   usage: OUT=dir LIMIT=prompts-per-set [DTYPES="bfloat16 float32"] [D2SD=0] bash scripts/gpu_matrix.sh
#   (the bundled models exceed what the device tool sends: `bash scripts/device_tree.sh hide models/dllm`
#   before the call, `bash scripts/device_tree.sh restore` after)
set -uo pipefail
source scripts/bench_env.sh
{
first=${D2SD:-1}  # D2SD=0: no D²SD step
for dt in ${DTYPES:-bfloat16 float32}; do
  echo "--- profile $dt ($((SECONDS - t0)) s)"
  sd profile --device cuda --dtype $dt --engine graph --contexts 128,512,1024 --out "$R/profile_$dt.json"
  echo "--- graph $dt, all budgets ($((SECONDS - t0)) s)"
  sd bench --device cuda --dtype $dt --engine graph $P --methods ar,dflash,ddtree,caddtree \
    --budgets 16,32,64,128,256,512 --temperature 0,1 --limit "$L" --profile "$R/profile_$dt.json" \
    --out "$R/gpu_graph_$dt"
  echo "--- measured rounds against the profile, $dt"  # where the profile misprices a bucket
  python3 -m specdiff round-costs "$R/gpu_graph_$dt" "$R/profile_$dt.json" | grep -E "caddtree|ddtree@(16|32|64) "
  if [ $first = 1 ]; then
    echo "--- graph $dt, d2sd ($((SECONDS - t0)) s)"
    sd bench --device cuda --dtype $dt --engine graph $P --methods ar,dflash,ddtree,d2sd,d2sd-hybrid \
      --budgets 64 --temperature 0,1 --limit "$L" --profile "$R/profile_$dt.json" --out "$R/gpu_d2sd_$dt"
    first=0
  fi
done
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep -v "it/s]" | grep -v MISMATCH | tee "$R/gpu_matrix.log"
tar -C "$R" -cf "$OUT/bench.tar" .
