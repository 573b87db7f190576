#!/usr/bin/env bash
# GPU: what AR's overlap and the tree rows' changes buy, shortest first (each step packs $OUT/gpu_overlap.tar):
#   1. `specdiff speed --shape qwen3-8b --budgets 64`: ar overlapped and one step at a time,
#      dflash, ddtree@64 in its own bucket (the attention launch rule at 65 nodes);
#   2. the bundled pair's bench, function completion, T=0: ar (overlapped) against ddtree@64, every
#      output checked against ar's (needs .pack/models.tgz: scripts/README.md);
#   3. `specdiff speed` of the bundled target: ar both ways at 19M;
#   4. the GPU test of the overlapped loop against the step-by-step one;
#   5. `scripts/gpu_profile.py --shape qwen3-8b --nodes 1,65`: the 65-row forward kernel by kernel.
# Steps past DEADLINE (seconds from the start, default 200) are cut off.
#   usage: DEADLINE=200 bash scripts/gpu_overlap.sh
DEADLINE=${DEADLINE:-200}
source scripts/gpu_call.sh
G="--device cuda --dtype bfloat16 --engine graph"
timeout "$(left 110)" python3 -m specdiff speed --shape qwen3-8b $G --budgets 64 2>&1 | grep -v "it/s" | tee out/speed_qwen3-8b.txt
pk "speed 8b"
timeout "$(left 70)" python3 -m specdiff bench $G --prompts data/prompts/function_completion.jsonl --temperature 0 \
  --limit 16 --methods ar,ddtree --budgets 64 --out out/bundled_overlap 2>&1 | grep -v "it/s" | tail -10 | tee out/bundled_overlap.txt
pk "bundled bench"
timeout "$(left 40)" python3 -m specdiff speed --target models/target $G --budgets 16 --drafter-layers 1 2>&1 | grep -v "it/s" | tee out/speed_bundled.txt
pk "speed bundled"
timeout "$(left 60)" python3 -m pytest -q -p no:cacheprovider tests/test_graph_engine.py -k overlapped 2>&1 | tail -5 | tee out/gputests.txt
pk "tests"
timeout "$(left 90)" python3 scripts/gpu_profile.py --shape qwen3-8b --nodes 1,65 2>&1 | grep -v "it/s" | tee out/profile_8b_65.txt
pk "profile 65 rows"
