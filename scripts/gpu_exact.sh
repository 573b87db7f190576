#!/usr/bin/env bash
# GPU: exact numerics on the bundled pair (bf16, graph engine, compiled Triton kernels). The kernel
# and numerics tests on the device, then per numerics in NUMERICS: the whole-round profile and the
# bench of the methods in METHODS at budgets 16-512 on both held-out sets, T=0 and T=1, LIMIT
# prompts each. Writes $OUT/bench.tar (out/: profiles, benches, the log) after every step.
#   usage: LIMIT=48 NUMERICS="exact" bash scripts/gpu_exact.sh
set -uo pipefail
source scripts/bench_env.sh
M=${METHODS:-ar,dflash,ddtree,caddtree,d2sd,d2sd-hybrid}
{
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
if [ -z "${SKIP_TESTS:-}" ]; then
  echo "--- tests ($((SECONDS - t0)) s)"
  python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_numerics.py -k "not bench" 2>&1 | tail -4
fi
for n in ${NUMERICS:-exact fast}; do
  echo "--- profile $n ($((SECONDS - t0)) s)"
  sd profile --device cuda --dtype bfloat16 --engine graph --numerics "$n" --contexts 128,512,1024 \
    --out "$R/profile_$n.json" | tail -2
  echo "--- bench $n ($((SECONDS - t0)) s)"
  sd bench --device cuda --dtype bfloat16 --engine graph --numerics "$n" $P --methods "$M" \
    --budgets 16,64,256,512 --temperature 0,1 --limit "$L" --profile "$R/profile_$n.json" --out "$R/bundled_$n" \
    | grep -v "^|"
done
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep -v "it/s]" | grep -v MISMATCH | tee -a "$R/gpu_exact.log"
tar -C "$R" -cf "$OUT/bench.tar" .
