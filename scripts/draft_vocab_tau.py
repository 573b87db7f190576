"""What a drafter head over the first N token ids (`DecodeConfig.draft_vocab`) costs in acceptance:
tau of the bundled pair per N, and the share of AR's tokens below N, on the held-out prompt sets
(T=0, static engine; the outputs are AR's at every N, which the tests hold).

    usage: python scripts/draft_vocab_tau.py [--vocabs 0,4096,2048,1024] [--limit 16] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json

from specdiff.config import DecodeConfig
from specdiff.drafters.dflash import load_drafter
from specdiff.engine import build_decoder
from specdiff.models.bundled import REPO_MODELS, default_path
from specdiff.target.hf_causal import load_target
from specdiff.target.static_model import StaticTarget


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocabs", default="0,4096,2048,1024")
    ap.add_argument("--methods", default="dflash,ddtree@16,ddtree@64")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    model, tok = load_target(default_path("target"))
    drafter = load_drafter(default_path("dflash"))
    target = StaticTarget(model)
    vocabs = [int(v) for v in args.vocabs.split(",")]
    print("| prompt set | method | " + " | ".join(f"tau, first {v or 'all'} ids" for v in vocabs) + " |")
    print("|---|---|" + "---|" * len(vocabs))
    for name in ("function_completion", "file_continuation"):
        rows = (REPO_MODELS.parent / "data" / "prompts" / f"{name}.jsonl").read_text().splitlines()[: args.limit]
        prompts = [tok(json.loads(r)["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
        ar = build_decoder(target, DecodeConfig(method="ar", engine="static", max_new_tokens=args.new_tokens,
                                                stop_at_eos=False))
        emitted = [t for p in prompts for t in ar.generate(p).token_ids]
        for m in args.methods.split(","):
            method, _, budget = m.partition("@")
            taus = []
            for v in vocabs:
                cfg = DecodeConfig(method=method, budget=int(budget or 1), engine="static",
                                   max_new_tokens=args.new_tokens, stop_at_eos=False, draft_vocab=v)
                dec = build_decoder(target, cfg, drafter)
                runs = [dec.generate(p) for p in prompts]
                taus.append(sum(r.num_new_tokens for r in runs) / sum(r.rounds for r in runs))
            print(f"| {name} | {m} | " + " | ".join(f"{t:.2f}" for t in taus) + " |", flush=True)
        print(f"| {name} | AR's tokens below N | " + " | ".join(
            f"{sum(t < (v or model.config.vocab_size) for t in emitted) / len(emitted):.1%}" for v in vocabs) + " |",
            flush=True)


if __name__ == "__main__":
    main()
