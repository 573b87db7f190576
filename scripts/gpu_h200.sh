#!/usr/bin/env bash
# GPU (meant for an H200): the real-scale table with dependent launches on, and the streaming
# GEMM's settings tuned for the card it runs on, each step packing $OUT/gpu_h200.tar:
#   1. `specdiff speed --shape qwen3-8b --budgets 64,256`: the table the targets name;
#   2. the bare streaming GEMM swept per weight shape on this card at 1 and 16 rows, against
#      cuBLAS (scripts/gpu_decode_gemm.py, GLUE=0), its table written to out/stream_settings.txt;
#   3. the 8B and 1.7B speed with that table (`gemm.STREAM_SETTINGS`), and 1.7B without it;
#   4. the 8B speed with the drafter's head over the first 32,768 token ids (`--draft-vocab`);
#      the bundled pair's bench, function completion, T=0, 24 prompts: ar, ddtree@16 and @64;
#   5. the 8B forward kernel by kernel at 1 and 65 nodes.
# Needs .pack/models.tgz (scripts/README.md). Steps past DEADLINE (seconds, default 520) are cut off.
#   usage: DEADLINE=520 bash scripts/gpu_h200.sh
DEADLINE=${DEADLINE:-520}
source scripts/gpu_call.sh
G="--device cuda --dtype bfloat16 --engine graph"
timeout "$(left 80)" python3 -m specdiff speed --shape qwen3-8b $G --budgets 64,256 2>&1 | grep -v "it/s" \
  | tee out/speed_8b.txt
pk "speed 8b"
GLUE=0 SPLIT=0 ROWS=1,16 SETTINGS_OUT=out/stream_settings.txt timeout "$(left 200)" python3 scripts/gpu_decode_gemm.py 8b,1.7b \
  2>&1 | grep -v "it/s" | tee out/stream_sweep.txt
pk "stream sweep"
T="python3 scripts/ab.py specdiff.kernels.gemm.STREAM_SETTINGS=@out/stream_settings.txt --"
if [ -s out/stream_settings.txt ]; then
  timeout "$(left 60)" $T speed --shape qwen3-8b $G --budgets 64 2>&1 | grep -v "it/s" | tee out/speed_8b_tuned.txt
  pk "speed 8b tuned"
fi
timeout "$(left 40)" python3 -m specdiff speed --shape qwen3-1.7b $G --budgets 64 2>&1 | grep -v "it/s" \
  | tee out/speed_1.7b.txt
pk "speed 1.7b"
if [ -s out/stream_settings.txt ]; then
  timeout "$(left 40)" $T speed --shape qwen3-1.7b $G --budgets 64 2>&1 | grep -v "it/s" | tee out/speed_1.7b_tuned.txt
  pk "speed 1.7b tuned"
fi
timeout "$(left 60)" python3 -m specdiff speed --shape qwen3-8b $G --budgets 64 --draft-vocab 32768 2>&1 \
  | grep -v "it/s" | tee out/speed_8b_draft_vocab.txt
pk "speed 8b draft vocab"
timeout "$(left 60)" python3 -m specdiff bench $G --prompts data/prompts/function_completion.jsonl --temperature 0 \
  --limit 24 --methods ar,ddtree --budgets 16,64 --out out/bundled 2>&1 | grep -v "it/s" | tail -8 | tee out/bundled.txt
pk "bundled"
timeout "$(left 60)" python3 scripts/gpu_profile.py --shape qwen3-8b --nodes 1,65 2>&1 | grep -v "it/s" \
  | tee out/profile_8b.txt
pk "profile 8b"
