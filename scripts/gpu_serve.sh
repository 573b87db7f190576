#!/usr/bin/env bash
# GPU: `specdiff serve` on the bundled pair (bf16, graph engine), ar on one port and ddtree@64 on
# another, then `specdiff bench-serve` against both at a light and a heavy arrival rate, then
# `specdiff demo` (the GPU path). Needs fastapi, uvicorn and sse-starlette (carry them as wheels).
# Writes $OUT/bench.tar (out/serve_*/, out/demo.txt, the log) after every step.
set -uo pipefail
source scripts/bench_env.sh
S="--device cuda --dtype bfloat16 --engine graph --max-new-tokens 64 --queue 64"
{
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m specdiff serve $S --method ar --port 8811 > "$R/serve_ar.log" 2>&1 &
pids=$!
python3 -m specdiff serve $S --method ddtree --budget 64 --port 8812 > "$R/serve_ddtree.log" 2>&1 &
pids="$pids $!"
for port in 8811 8812; do  # each server captures its graphs before it listens
  for _ in $(seq 240); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
    kill -0 $pids 2> /dev/null || { tail -n 3 "$R"/serve_*.log; break; }
    sleep 0.5
  done
  echo "port $port up after $((SECONDS - t0)) s: $(curl -s "http://127.0.0.1:$port/health")"
done
for load in "${LIGHT:-2 20}" "${HEAVY:-25 150}"; do
  set -- $load
  echo "--- bench-serve rate $1, $2 requests ($((SECONDS - t0)) s)"
  sd bench-serve --url http://127.0.0.1:8811 --url http://127.0.0.1:8812 --rate "$1" --requests "$2" \
    --max-tokens 64 --prompts data/prompts/function_completion.jsonl --out "$R/serve_rate$1"
done
curl -s http://127.0.0.1:8812/metrics | grep "^specdiff_" | grep -v _bucket
kill -TERM $pids; wait $pids; echo "servers exited: $?"
echo "--- demo ($((SECONDS - t0)) s)"
[ -z "${SKIP_DEMO:-}" ] && python3 -m specdiff demo 2>&1 | tee "$R/demo.txt"
tar -C "$R" -cf "$OUT/bench.tar" .
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep -v "it/s]" | tee -a "$R/gpu_serve.log"
tar -C "$R" -cf "$OUT/bench.tar" .
