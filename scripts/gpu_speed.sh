#!/usr/bin/env bash
# GPU: `specdiff speed` for the Qwen3-1.7B and Qwen3-8B shapes (random weights, bfloat16, graph
# engine): AR ms/token against the HBM bound, and the rounds of dflash and ddtree@16/64/256.
# Writes $OUT/speed_<shape>.json and .md after each shape.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
for shape in ${SHAPES:-qwen3-1.7b qwen3-8b}; do
  python3 -m specdiff speed --shape "$shape" --device cuda --dtype bfloat16 --engine "${ENGINE:-graph}" --budgets "${BUDGETS:-16,64,256}" --json \
    > "$OUT/speed_$shape.json" 2> "$OUT/speed_$shape.err"
  python3 -c "import json, sys; from specdiff.bench.speed import table; print(table(json.load(open(sys.argv[1]))))" \
    "$OUT/speed_$shape.json" | tee "$OUT/speed_$shape.md"
done
