#!/usr/bin/env bash
# GPU: `specdiff speed` for the Qwen3-1.7B and Qwen3-8B shapes (random weights, bfloat16, graph
# engine): AR ms/token against the HBM bound, and the rounds of dflash and ddtree@16/64/256, once
# per kernel set in KERNELS (the fused Triton forward and the PyTorch ops, on the same GPU).
# Writes $OUT/speed_<shape>_<kernels>.json and .md after each run.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
for shape in ${SHAPES:-qwen3-1.7b qwen3-8b}; do
  for kernels in ${KERNELS:-triton torch}; do
    name="speed_${shape}_$kernels"
    python3 -m specdiff speed --shape "$shape" --device cuda --dtype bfloat16 --engine "${ENGINE:-graph}" \
      --kernels "$kernels" --budgets "${BUDGETS:-16,64,256}" --json > "$OUT/$name.json" 2> "$OUT/$name.err"
    python3 -c "import json, sys; from specdiff.bench.speed import table; print(table(json.load(open(sys.argv[1]))))" \
      "$OUT/$name.json" | tee "$OUT/$name.md"
    tail -3 "$OUT/$name.err"
  done
done
