#!/usr/bin/env bash
# GPU: a drafted round at the bundled size against the overlapped AR, and tree attention at the
# node counts the launch rule decides (each step packs $OUT/gpu_rounds.tar):
#   0. the GPU tests of the rounds that read once and of the overlapped loops (drafts queued
#      before the read included): AR's tokens, the sync counts;
#   1. `scripts/gpu_attention.py --nodes 65,257 --stages 3,4`: every launch setting against the rule's;
#   2. `scripts/gpu_timeline.py --bundled`: where a bundled round's time goes, AR overlapped;
#   3. the bundled pair's bench, function completion, T=0: ar, ddtree@16 and @64, overlapped (the
#      next draft queued before a round's read, the round handed out once the next is queued) and
#      with --no-overlap.
# Needs .pack/models.tgz (scripts/README.md). Steps past DEADLINE (seconds, default 400) are cut off.
#   usage: DEADLINE=400 bash scripts/gpu_rounds.sh
DEADLINE=${DEADLINE:-400}
source scripts/gpu_call.sh
timeout "$(left 90)" python3 -m pytest -q -p no:cacheprovider tests/test_graph_engine.py -k "once or overlapped" 2>&1 \
  | tail -5 | tee out/gputests.txt
pk tests
timeout "$(left 120)" python3 scripts/gpu_attention.py --nodes 65,257 --stages 3,4 2>&1 | grep "^n=" | tee out/attention.txt
pk attention
timeout "$(left 60)" python3 scripts/gpu_timeline.py --bundled --methods ar,ddtree@16,ddtree@64 2>&1 | grep -v "it/s" \
  | tee out/timeline_bundled.txt
pk timeline
G="--device cuda --dtype bfloat16 --engine graph --prompts data/prompts/function_completion.jsonl --temperature 0"
for overlap in overlap no-overlap; do
  timeout "$(left 90)" python3 -m specdiff bench $G --$overlap --limit 24 --methods ar,ddtree --budgets 16,64 \
    --out out/bundled_$overlap 2>&1 | grep -v "it/s" | tail -8 | tee out/bundled_$overlap.txt
  pk "bundled $overlap"
done
