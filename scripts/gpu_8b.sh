#!/usr/bin/env bash
# GPU: the bundled pair (target, DFlash and VP drafters) inflated to the Qwen3-8B shape in bf16,
# then on the graph engine with the fused kernels, in the order STEPS names (default "exact all"):
#   exact  exact numerics against fast on function completion (EXACT_METHODS at EXACT_BUDGETS,
#          at EXACT_TEMPS, default T=0 and T=1);
#   all    the bench of ALL_METHODS (ddtree, ddtree-pld and d2sd-hybrid at BUDGETS, caddtree with the
#          profile)
#          on both held-out sets at T=0 and T=1, the measured rounds against the profile and
#          caddtree against the best fixed budget.
# The profile: PROFILE (a saved one of this shape and card), else measured first (at the
# PROFILE_CONTEXTS, default 256,1024; with the VP drafter's re-draft priced). Steps past
# DEADLINE (seconds from the start) are cut off. Writes $OUT/bench.tar after every step.
#   usage: LIMIT=8 DEADLINE=560 bash scripts/gpu_8b.sh
set -uo pipefail
source scripts/bench_env.sh
I=/tmp/inflated
G="--target $I/target --drafter $I/dflash --vp-drafter $I/vp --device cuda --dtype bfloat16 --engine graph"
left() { echo $(( ${DEADLINE:-100000} - (SECONDS - t0) )); }
PROF=${PROFILE:-$R/profile_8b.json}
{
nvidia-smi --query-gpu=name,memory.total --format=csv
echo "--- inflate ($((SECONDS - t0)) s)"
python3 -m specdiff inflate --shape qwen3-8b --out $I --device cuda | tail -1
if [ -z "${PROFILE:-}" ]; then
  echo "--- profile ($((SECONDS - t0)) s)"
  timeout "$(left)" python3 -m specdiff profile $G --contexts ${PROFILE_CONTEXTS:-256,1024} --out "$PROF" | tail -3
fi
for step in ${STEPS:-exact all}; do
  if [ "$step" = exact ]; then
    for n in exact fast; do
      echo "--- bench $n ($((SECONDS - t0)) s)"
      timeout "$(left)" python3 -m specdiff bench $G --numerics $n --prompts data/prompts/function_completion.jsonl \
        --methods "${EXACT_METHODS:-ar,dflash,ddtree,d2sd}" --budgets "${EXACT_BUDGETS:-64,256}" --temperature "${EXACT_TEMPS:-0,1}" \
        --limit "$L" --profile "$PROF" --out "$R/bench8b_$n" | grep -v "^|"
      tar -C "$R" -cf "$OUT/bench.tar" .
    done
  else
    echo "--- bench all ($((SECONDS - t0)) s)"
    timeout "$(left)" python3 -m specdiff bench $G $P \
      --methods "${ALL_METHODS:-ar,dflash,ddtree,ddtree-pld,caddtree,d2sd,d2sd-hybrid}" \
      --budgets ${BUDGETS:-16,64,256,512} --temperature 0,1 --limit "$L" --profile "$PROF" \
      --out "$R/bench8b_all" | grep -v "^|"
    python3 -m specdiff round-costs "$R/bench8b_all" "$PROF" > "$R/round_costs_8b.md"
    python3 -m specdiff versus "$R/bench8b_all" --method caddtree
    tar -C "$R" -cf "$OUT/bench.tar" .
  fi
done
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep -v "it/s]" | grep -v MISMATCH | tee -a "$R/gpu_8b.log"
tar -C "$R" -cf "$OUT/bench.tar" .
