#!/usr/bin/env bash
# GPU: the bundled pair inflated to the Qwen3-8B shape (bf16, built on the GPU), then the bench of
# ar, dflash and ddtree on held-out function completion (BOTH_SETS=1: and file continuation) at
# T=0 (TEMPS: a list) through the graph engine (KERNELS: its target forward's kernels): the
# small pair's acceptance at the large shape's cost. Writes $OUT/inflate.log and $OUT/bench8b/.
# D²SD is not benched here, so the DFlash drafter also stands in for the VP drafter it inflates.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m specdiff inflate --shape "${SHAPE:-qwen3-8b}" --out /tmp/inflated --vp-drafter models/dflash \
  --device cuda 2>&1 | tee "$OUT/inflate.log"
python3 -m specdiff bench --target /tmp/inflated/target --drafter /tmp/inflated/dflash --device cuda \
  --dtype bfloat16 --engine graph --kernels "${KERNELS:-auto}" --methods ar,dflash,ddtree --budgets "${BUDGETS:-16,64}" \
  --temperature "${TEMPS:-0}" --limit "${LIMIT:-8}" --prompts data/prompts/function_completion.jsonl \
  ${BOTH_SETS:+--prompts data/prompts/file_continuation.jsonl} --out "$OUT/bench8b" 2>&1 | tail -25
