#!/usr/bin/env bash
# GPU: where a small model's round can lose device work. The bundled pair's ddtree round is nearly
# all device time (docs/results.md: queuing its next forward before the read changed nothing), so
# these try fewer or better-chained kernels, each step packing $OUT/gpu_small.tar:
#   1. the bundled bench (function completion, T=0, 24 prompts: ar, ddtree@16, @64) as it runs;
#   2. the same with every GEMM of up to 16 rows the streaming Triton kernel
#      (`gemm.SKINNY_MIN_WEIGHT=0`: no cuBLAS call breaks the chain of dependent launches; at this
#      size that is the drafter's step, since the target's exact numerics stream every GEMM already);
#   3. the same as 1 with `--numerics fast` (cuBLAS GEMMs), and with `--numerics fast --kernels
#      glued` (norms, SiLU-multiply and residual adds inside the GEMMs of up to 16 rows: exact
#      numerics have no glued form);
#   4. tree attention at Qwen3-8B's heads: the Triton kernel against FlexAttention
#      (`scripts/gpu_attention.py --flex`).
# Needs .pack/models.tgz (scripts/README.md). Steps past DEADLINE (seconds, default 300) are cut off.
#   usage: DEADLINE=300 bash scripts/gpu_small.sh
DEADLINE=${DEADLINE:-300}
source scripts/gpu_call.sh
G="--device cuda --dtype bfloat16 --engine graph"
B="--prompts data/prompts/function_completion.jsonl --temperature 0 --limit 24 --methods ar,ddtree --budgets 16,64"
timeout "$(left 60)" python3 -m specdiff bench $G $B --out out/bundled 2>&1 | grep -v "it/s" | tail -7 | tee out/bundled.txt
pk "bundled"
timeout "$(left 60)" python3 scripts/ab.py specdiff.kernels.gemm.SKINNY_MIN_WEIGHT=0 -- bench $G $B --out out/bundled_streamed \
  2>&1 | grep -v "it/s" | tail -7 | tee out/bundled_streamed.txt
pk "bundled streamed"
for k in triton glued; do
  timeout "$(left 60)" python3 -m specdiff bench $G $B --numerics fast --kernels $k --out out/bundled_fast_$k 2>&1 \
    | grep -v "it/s" | tail -8 | tee out/bundled_fast_$k.txt
  pk "bundled fast $k"
done
timeout "$(left 120)" python3 scripts/gpu_attention.py --flex --nodes 1,16,65,257 2>&1 | grep -v "it/s" | tee out/flex.txt
pk "flex"
