#!/usr/bin/env bash
# On the GPU: cost profiles, then `specdiff bench` on the bundled models through the graph
# engine (bf16 and fp32: every method and budget, T=0/1, both prompt sets), the same methods
# through the eager static and plain Hugging Face paths, and a cross-engine exactness check.
# Everything lands in $OUT/bench.tar (results.json, report.md, plots per run; the profiles; logs).
#   usage: OUT=dir LIMIT=prompts-per-set bash scripts/gpu_bench.sh
set -uo pipefail
source scripts/bench_env.sh
{
python3 - <<'PY'
# exactness across engines: plain HF greedy AR vs the graph engine's ar and ddtree@64 (bf16 and fp32)
import json, torch
from specdiff.target.hf_causal import load_target
from specdiff.drafters.dflash import load_drafter
from specdiff.engine import build_decoder
from specdiff.config import DecodeConfig
for dt in ("float32", "bfloat16"):
    model, tok = load_target("models/target", "cuda", dt)
    drafter = load_drafter("models/dflash", "cuda", getattr(torch, dt))
    rows = [json.loads(l) for l in open("data/prompts/function_completion.jsonl")][:6]
    bad = 0
    for r in rows:
        ids = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        ref = build_decoder(model, DecodeConfig(method="ar", max_new_tokens=64, engine="hf", stop_at_eos=False)).generate(ids).token_ids
        for m, b in (("ar", 1), ("dflash", 1), ("ddtree", 64)):
            got = build_decoder(model, DecodeConfig(method=m, budget=b, max_new_tokens=64, engine="graph", stop_at_eos=False), drafter).generate(ids).token_ids
            bad += got != ref
    print(f"cross-engine check {dt}: {bad} of {len(rows) * 3} graph-engine outputs differ from eager HF AR")
PY
echo "--- profiles ($((SECONDS - t0)) s)"
for dt in bfloat16 float32; do
  sd profile --device cuda --dtype $dt --engine graph --contexts 128,512,1024 --reps 10
done
graph_bench() {  # every AR-drafter method and budget through the graph engine, T=0 and T=1
  echo "--- graph $1 ($((SECONDS - t0)) s)"
  sd bench --device cuda --dtype $1 --engine graph $P --methods ar,dflash,ddtree,caddtree \
    --budgets 16,32,64,128,256,512 --temperature 0,1 --limit "$L" --out "$R/gpu_graph_$1"
}
graph_bench bfloat16
for e in static hf; do
  echo "--- eager $e bfloat16 ($((SECONDS - t0)) s)"
  sd bench --device cuda --dtype bfloat16 --engine $e --prompts data/prompts/function_completion.jsonl \
    --methods ar,dflash,ddtree --budgets 16,64,256 --temperature 0 --limit 8 --warmup 1 --out "$R/gpu_eager_${e}_bfloat16"
done
graph_bench float32
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep -v "it/s]" | tee "$R/gpu_bench.log"
tar -C "$R" -cf "$OUT/bench.tar" .
for d in "$R"/gpu_*/; do echo "== $d"; cat "$d/report.md" | tail -n +4; done
