#!/usr/bin/env bash
# GPU: what one host read per round buys, in the order STEPS names (default below):
#   tests          the sync-count and resident-tree tests on the device;
#   speed:SHAPE    `specdiff speed` (random weights, bf16, graph engine) with ddtree searched on
#                  the host and on the device (its tree left there);
#   exact:SHAPE    the same shape's AR and 64-node round in exact numerics;
#   launch         `scripts/gpu_launch.py`: each bundled graph's host launch against its replay;
#   timeline:SHAPE `scripts/gpu_timeline.py`: a round's parts on the device and the idle gaps
#                  between them (SHAPE bundled: the bundled pair), for TIMELINE_METHODS;
#   profile        caddtree's cost profile of the bundled pair on this device (then PROFILE);
#   bundled        the bundled pair's BUNDLED_METHODS (ar,ddtree,caddtree; caddtree with PROFILE)
#                  at BUNDLED_BUDGETS (64) with each tree search in SEARCHES (host device) on
#                  function completion (both held-out sets with BOTH_SETS=1) at T=0 and T=1
#                  (LIMIT prompts).
# Steps past DEADLINE (seconds from the start) are cut off. Writes $OUT/bench.tar after every step.
#   usage: LIMIT=24 DEADLINE=540 bash scripts/gpu_onesync.sh
set -uo pipefail
source scripts/bench_env.sh
left() { echo $(( ${DEADLINE:-100000} - (SECONDS - t0) )); }
pack() { tar -C "$R" -cf "$OUT/bench.tar" .; }
speed() {  # name, shape, extra flags
  timeout "$(left)" python3 -m specdiff speed --shape "$2" --device cuda --dtype bfloat16 --engine graph ${@:3} \
    --json > "$R/speed_$1.json"
  python3 -c "import json, sys; from specdiff.bench.speed import table; print(table(json.load(open(sys.argv[1]))))" \
    "$R/speed_$1.json" | tee "$R/speed_$1.md"
}
{
nvidia-smi --query-gpu=name,memory.total --format=csv
for step in ${STEPS:-tests speed:qwen3-8b exact:qwen3-8b bundled speed:qwen3-1.7b}; do
  echo "--- $step ($((SECONDS - t0)) s)"
  case "$step" in
    tests) timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_graph_engine.py \
             tests/test_device_search.py tests/test_kernels.py -k "once or resident or tree_inputs or searched" \
             2>&1 | tail -4 ;;
    speed:*) speed "${step#speed:}" "${step#speed:}" --budgets 16,64,256 --tree-search host,device ;;
    exact:*) speed "exact_${step#exact:}" "${step#exact:}" --budgets 64 --numerics exact ;;
    timeline:*)
      shape=${step#timeline:}; [ "$shape" = bundled ] && shape=--bundled || shape="--shape $shape"
      timeout "$(left)" python3 scripts/gpu_timeline.py $shape --methods "${TIMELINE_METHODS:-ar,dflash,ddtree@64}" \
        2>&1 | grep -v "it/s" | tee "$R/timeline_${step#timeline:}.txt" ;;
    launch) timeout "$(left)" python3 scripts/gpu_launch.py | tee "$R/launch.txt" ;;
    profile)
      timeout "$(left)" python3 -m specdiff profile --device cuda --dtype bfloat16 --engine graph \
        --out "$R/profile_here.json" && PROFILE=$R/profile_here.json ;;
    bundled)
      sets=${BOTH_SETS:+$P}
      for search in ${SEARCHES:-host device}; do
        timeout "$(left)" python3 -m specdiff bench --device cuda --dtype bfloat16 --engine graph \
          --tree-search $search ${sets:---prompts data/prompts/function_completion.jsonl} \
          --methods "${BUNDLED_METHODS:-ar,ddtree,caddtree}" --budgets "${BUNDLED_BUDGETS:-64}" --temperature 0,1 \
          --limit "$L" ${PROFILE:+--profile "$PROFILE"} --out "$R/bundled_$search" | grep -v "^|"
      done ;;
  esac
  pack
done
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep -v "it/s]" | grep -v MISMATCH | tee -a "$R/gpu_onesync.log"
pack
