#!/usr/bin/env bash
# GPU: dependent launches (kernels.common.PDL) against plain ones, and the drafts queued before a
# round's read, shortest and most telling first (each step packs $OUT/gpu_pdl.tar):
#   0. the GPU test that holds a captured chain of the forward's kernels, launched dependently, to
#      the plain launches' bits (and the device path's kernel); where it fails, every later step
#      runs with PDL off;
#   1. `specdiff speed --shape qwen3-8b --budgets 64` with PDL on and off: ar, dflash, ddtree@64;
#   2. the bundled pair's bench, function completion, T=0: ar, ddtree@16 and @64 (the next draft
#      queued before each read; every output checked against AR's);
#   3. the GPU tests of the one-read and overlapped rounds (drafts queued before the read);
#   4. the 1.7B shape with PDL on and off, and on with its narrow GEMMs streamed
#      (`SKINNY_MIN_WEIGHT=0`); the 8B GEMMs prefetching 4 weight tiles before their wait;
#   5. the bundled bench with --no-overlap, and the bundled round's timeline.
# Needs .pack/models.tgz (scripts/README.md). Steps past DEADLINE (seconds, default 420) are cut off.
#   usage: DEADLINE=420 bash scripts/gpu_pdl.sh
DEADLINE=${DEADLINE:-420}
source scripts/gpu_call.sh
S="python3 scripts/ab.py specdiff.kernels.common.PDL=True --"
timeout "$(left 45)" python3 -m pytest -q -s -p no:cacheprovider tests/test_kernels.py -rfE -k "dependently or accepted_path" 2>&1 \
  | grep -v "it/s" | tail -12 | tee out/gputests_pdl.txt
grep -qE "FAILED.*\[0\]|[0-9]+ error" out/gputests_pdl.txt && S="python3 scripts/ab.py specdiff.kernels.common.PDL=False --"
echo "runner: $S" | tee -a out/gputests_pdl.txt  # PDL on unless its test failed
pk "pdl test"
G="--device cuda --dtype bfloat16 --engine graph"
timeout "$(left 60)" $S speed --shape qwen3-8b $G --budgets 64 2>&1 | grep -v "it/s" | tee out/speed_8b_pdl.txt
pk "speed 8b pdl"
timeout "$(left 55)" python3 scripts/ab.py specdiff.kernels.common.PDL=False -- speed --shape qwen3-8b $G --budgets 64 2>&1 \
  | grep -v "it/s" | tee out/speed_8b_nopdl.txt
pk "speed 8b no pdl"
F="--prompts data/prompts/function_completion.jsonl --temperature 0"
timeout "$(left 60)" $S bench $G $F --limit 16 --methods ar,ddtree --budgets 16,64 --out out/bundled_overlap 2>&1 \
  | grep -v "it/s" | tail -8 | tee out/bundled_overlap.txt
pk "bundled overlap"
timeout "$(left 60)" python3 -m pytest -q -p no:cacheprovider tests/test_graph_engine.py tests/test_lossless_greedy.py \
  -k "once or overlapped or queued" 2>&1 | grep -v "it/s" | tail -8 | tee out/gputests.txt
pk tests
for pdl in True False; do
  timeout "$(left 40)" python3 scripts/ab.py specdiff.kernels.common.PDL=$pdl -- speed --shape qwen3-1.7b $G --budgets 64 2>&1 \
    | grep -v "it/s" | tee out/speed_1.7b_pdl_$pdl.txt
  pk "speed 1.7b pdl $pdl"
done
timeout "$(left 40)" ${S% --} specdiff.kernels.gemm.SKINNY_MIN_WEIGHT=0 -- speed --shape qwen3-1.7b $G --budgets 64 2>&1 \
  | grep -v "it/s" | tee out/speed_1.7b_streamed.txt
pk "speed 1.7b streamed"
if ! grep -qE "FAILED.*\[[02]\]|[0-9]+ error" out/gputests_pdl.txt; then
  timeout "$(left 55)" ${S% --} specdiff.kernels.gemm.PREFETCH_TILES=4 -- speed --shape qwen3-8b $G --budgets 64 2>&1 \
    | grep -v "it/s" | tee out/speed_8b_prefetch4.txt
  pk "speed 8b prefetch 4"
fi
timeout "$(left 60)" $S bench $G $F --no-overlap --limit 16 --methods ar,ddtree --budgets 16,64 --out out/bundled_no-overlap 2>&1 \
  | grep -v "it/s" | tail -8 | tee out/bundled_no-overlap.txt
pk "bundled no-overlap"
timeout "$(left 60)" python3 scripts/gpu_timeline.py --bundled --methods ar,ddtree@16,ddtree@64 2>&1 | grep -v "it/s" \
  | tee out/timeline_bundled.txt
pk timeline
