"""Never silently wrong, over every causal-LM architecture transformers has: per model type, a tiny
random model's own greedy tokens (`generate`, do_sample=False) against specdiff's AR decode on the
hf, static and graph engines and prompt lookup (pld) on the hf engine.

Each cell is one of: exact (the same tokens, on a first and on a second decode with the same
decoder), refused (a one-line SpecdiffError), DIFFERENT (other tokens, no error), CRASH (any
other exception: its type and last frame), BAD-REFUSAL (a SpecdiffError of several lines, or a
static/graph one that does not point to --engine hf where the hf engine runs the model), TIMEOUT
(the architecture's time ran out here). A row is skipped where transformers itself cannot build or
run the tiny model (remote code, a missing package, vision/audio inputs): not specdiff's problem,
its reason is recorded.

    python scripts/arch_sweep.py [--only llama,gpt2] [--out FILE.md] [--json FILE] [--timeout 60] [--jobs 2]
                                 [--attn eager|sdpa]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import traceback

N_NEW = 12
PROMPT = [5, 17, 42, 8, 77, 3, 61, 29, 5, 17, 42]  # a repeated n-gram: prompt lookup has something to draft
CELLS = ("hf", "static", "graph", "pld")
CLASSES = ("exact", "refused", "DIFFERENT", "CRASH", "BAD-REFUSAL", "TIMEOUT")

# The size fields to shrink: the standard name, its per-family aliases, and the tiny value. Every
# alias the config has (directly or through its attribute_map) is set.
SIZES = [
    (("vocab_size", "n_token", "padded_vocab_size", "unpadded_vocab_size"), 128),
    (("hidden_size", "n_embd", "d_model", "hidden_dim", "dim", "embed_dim", "n_embed", "model_dim"), 64),
    (("num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_decoder_layers", "decoder_layers",
      "num_blocks"), 2),
    (("num_attention_heads", "n_head", "n_heads", "num_heads", "decoder_attention_heads", "swa_num_attention_heads",
      "num_decoder_attention_heads"), 4),
    (("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num", "n_head_kv",
      "num_kv_groups", "swa_num_key_value_heads"), 2),
    (("head_dim", "kv_channels", "attention_head_dim", "attention_head_size", "swa_head_dim"), 16),
    (("index_n_heads", "index_num_heads"), 2), (("index_head_dim",), 16),
    (("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "d_ff", "inner_dim", "decoder_ffn_dim",
      "ffn_hidden_dim", "intermediate_dim", "mlp_dim"), 128),
    (("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "context_length", "n_ctx",
      "max_sequence_length", "max_seq_length"), 256),
    # mixture of experts
    (("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts"), 4),
    (("num_experts_per_tok", "moe_topk", "moe_k", "num_experts_per_token", "top_k_experts"), 2),
    (("moe_intermediate_size", "expert_intermediate_size", "moe_ffn_hidden_size", "shared_expert_intermediate_size",
      "moe_shared_expert_intermediate_size"), 32),
    (("embedding_dim",), 64),
    (("n_shared_experts", "num_shared_experts", "moe_num_shared_experts"), 1),
    (("n_group",), 1), (("topk_group",), 1),
    # latent attention
    (("kv_lora_rank",), 16), (("q_lora_rank",), 32), (("qk_rope_head_dim",), 8), (("qk_nope_head_dim",), 8),
    (("v_head_dim",), 16), (("qk_head_dim",), 16),
    # state-space / linear-attention layers
    (("state_size", "mamba_d_state", "ssm_state_size"), 8),
    (("mamba_n_heads", "linear_num_value_heads", "ssm_num_heads"), 4),
    (("linear_value_head_dim", "linear_key_head_dim"), 16),
    (("mamba_d_head",), 32),  # 4 heads of 32: expand (2) x hidden (64)
    (("linear_num_key_heads",), 2),
    (("time_step_rank",), 8), (("mamba_n_groups", "n_groups"), 1),
    (("sliding_window", "attention_window_size", "window_size", "sliding_window_size", "rel_extent"), 64),
    (("rotary_dim", "rotary_emb_base_dim"), 8),
    (("vocab_size_per_layer_input",), 128), (("hidden_size_per_layer_input",), 16), (("laurel_rank",), 8),
    (("num_labels",), 2),
    (("initializer_range",), 0.08),
]
# token ids the tiny vocabulary must hold, or the model has no use for
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "sep_token_id",
             "cls_token_id", "mask_token_id", "unk_token_id")
MULTIMODAL = ("vision_config", "audio_config", "vq_config", "speech_config", "image_config", "depth_decoder_config",
              "audio_encoder_config", "text_encoder", "vision_model", "encoder_config")


def config_names(cls, cfg) -> set[str]:
    import inspect

    names = set(vars(cfg))
    try:
        names |= set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        pass
    return names


def shrink_kwargs(model_type: str, cfg, layers: int | None, token_ids: str = "none") -> dict:
    """The config kwargs that make `cfg`'s family tiny (fields it does not have are left out);
    `layers`: the layer count (None: the family's default); `token_ids`: "none" drops the special
    token ids, "small" puts them inside the tiny vocabulary (for families that need them set)."""
    names = config_names(type(cfg), cfg)
    amap = getattr(cfg, "attribute_map", {}) or {}
    kw = {}
    try:
        default_layers = int(getattr(cfg, "num_hidden_layers"))
        mha = getattr(cfg, "num_key_value_heads", None) == getattr(cfg, "num_attention_heads", 0)
    except Exception:
        default_layers, mha = None, False
    for aliases, value in SIZES:
        if aliases[0] == "num_hidden_layers":
            if layers is None:
                continue
            value = layers
        for name in aliases:
            real = amap.get(name, name)
            if real not in names:
                continue
            try:
                current = getattr(cfg, real, None)
            except Exception:  # per-layer fields that only their layer configs answer
                continue
            if isinstance(current, (list, dict)):
                continue
            if aliases[0] == "num_key_value_heads" and current == 1:
                continue  # multi-query by design: keep one kv head
            if aliases[0] == "num_key_value_heads" and mha:
                value = 4  # as many kv heads as query heads (latent attention relies on it)
            kw[real] = value
    if layers is not None and default_layers:
        for name in sorted(names):  # per-layer lists: the first `layers` entries (sizes shrunk)
            try:
                current = getattr(cfg, name, None)
            except Exception:
                continue
            if name in kw or not isinstance(current, list) or len(current) != default_layers:
                continue
            head = current[:layers]
            kw[name] = [128 if isinstance(v, int) and not isinstance(v, bool) and v > 256 else v for v in head]
    if "qk_rope_head_dim" in kw and "head_dim" in names:
        kw["head_dim"] = kw["qk_rope_head_dim"]  # latent attention: RoPE runs over the rope part
    for i, name in enumerate(TOKEN_IDS):
        if name in names:
            kw[name] = None if token_ids == "none" and name != "decoder_start_token_id" else i % 4
    if "tie_word_embeddings" in names:
        kw["tie_word_embeddings"] = False
    if "is_decoder" in names:
        kw["is_decoder"] = True  # encoder families run as causal LMs only as decoders
    for name, value in FIXUPS.get(model_type, {}).items():
        if value is DROP:
            kw.pop(name, None)
        else:
            kw[name] = value
    return kw


DROP = object()
ATTN = "eager"  # the attention implementation the models are built with (--attn)
# What the generic shrink gets wrong for a family (checked by its own config validation)
FIXUPS: dict[str, dict] = {
    "mamba2": {"head_dim": 32},  # its head_dim is the SSM head's: heads x head_dim = expand x hidden
    "zaya": {"num_experts_per_tok": 1},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    "kolibri1_1": {"index_num_heads": 1},
}


def build(model_type: str):
    """A tiny random model of `model_type` (eval, float32) whose own greedy decode runs ->
    (model, its greedy tokens, note), or raise Skip."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        base = AutoConfig.for_model(model_type)
    except Exception as e:
        raise Skip(f"config: {type(e).__name__}: {line(e)}")
    subs = getattr(base, "sub_configs", {}) or {}
    multi = [n for n in MULTIMODAL if (n in subs or hasattr(base, n)) and getattr(base, n, None) is not None]
    if multi:
        raise Skip(f"has a {multi[0]} (vision/audio/sub-model inputs; its text model is swept on its own where "
                   "transformers maps one)")
    errors = []
    for layers in (2, 4, 8, None):  # hybrids whose first layers are all linear attention need more
        for token_ids in ("none", "small"):
            kw = shrink_kwargs(model_type, base, layers, token_ids)
            if "text_config" in subs and getattr(base, "text_config", None) is not None:
                text = base.text_config
                kw["text_config"] = {**text.to_dict(), **shrink_kwargs(model_type, text, layers, token_ids)}
            try:
                cfg = AutoConfig.for_model(model_type, **kw)
                torch.manual_seed(0)
                try:
                    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=ATTN)
                except (ValueError, NotImplementedError):
                    torch.manual_seed(0)
                    model = AutoModelForCausalLM.from_config(cfg)
                model = model.float().eval()
                params = sum(p.numel() for p in model.parameters())
                if params > 60_000_000:
                    raise Skip(f"cannot be built tiny ({params / 1e6:.0f}M parameters)")
                gc = getattr(model, "generation_config", None)
                if gc is not None:
                    for name in ("eos_token_id", "pad_token_id", "bos_token_id", "forced_eos_token_id",
                                 "forced_bos_token_id", "suppress_tokens", "begin_suppress_tokens"):
                        if hasattr(gc, name):
                            setattr(gc, name, None)
                if hasattr(model, "set_default_language") and getattr(cfg, "languages", None):
                    model.set_default_language(cfg.languages[0])  # X-MOD: adapters per language
            except Skip:
                raise
            except ImportError as e:
                raise Skip(f"needs a package: {line(e)}")
            except Exception as e:
                errors.append(f"build: {type(e).__name__}: {line(e)}")
                continue
            try:
                expected = hf_greedy(model)
            except ImportError as e:
                raise Skip(f"needs a package: {line(e)}")
            except Exception as e:
                errors.append(f"transformers' generate fails: {type(e).__name__}: {line(e)}")
                continue
            if len(expected) != N_NEW:
                errors.append(f"transformers' generate gave {len(expected)} tokens, not {N_NEW}")
                continue
            note = f"{params / 1e3:.0f}k params, {getattr(cfg, 'num_hidden_layers', '?')} layers"
            return model, expected, note + (", token ids set" if token_ids == "small" else "")
    raise Skip(f"transformers cannot build or run it tiny ({errors[-1]})")


class Skip(Exception):
    pass


def line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(x.strip() for x in str(e).strip().splitlines() if x.strip() and "Traceback" not in x)
    return text[:limit].replace("|", "/")


def hf_greedy(model) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False,
                             num_beams=1, eos_token_id=None, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


def last_frame(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    ours = [f for f in frames if f"{os.sep}specdiff{os.sep}" in f.filename]
    where = f"{short(last.filename)}:{last.lineno} {last.name}"
    if ours and ours[-1] is not last:
        where += f" (from {short(ours[-1].filename)}:{ours[-1].lineno} {ours[-1].name})"
    return where


def short(path: str) -> str:
    for root in ("site-packages" + os.sep, "src" + os.sep):
        if root in path:
            return path.split(root, 1)[1]
    return os.path.basename(path)


def cell(model, name: str, expected: list[int], hf_refused: bool = False) -> dict:
    import torch

    from specdiff.config import DecodeConfig
    from specdiff.engine import build_decoder
    from specdiff.errors import SpecdiffError

    engine, method = ("hf", "pld") if name == "pld" else (name, "ar")
    cfg = DecodeConfig(method=method, engine=engine, max_new_tokens=N_NEW, stop_at_eos=False)
    try:
        with torch.inference_mode():
            decoder = build_decoder(model, cfg)
            got = decoder.generate(PROMPT).token_ids
            if list(got) == list(expected):  # a second decode reuses the caches: nothing may carry over
                again = decoder.generate(PROMPT).token_ids
                if list(again) != list(got):
                    return {"class": "DIFFERENT", "detail": f"the second decode differs: {list(again)} vs {expected}"}
    except SpecdiffError as e:
        msg = str(e)
        # a static/graph refusal points to the hf engine, unless that one refuses the model too
        if "\n" in msg or (engine != "hf" and not hf_refused and "--engine hf" not in msg):
            return {"class": "BAD-REFUSAL", "detail": msg.replace("\n", " / ")[:200]}
        return {"class": "refused", "detail": msg[:200]}
    except Exception as e:
        return {"class": "CRASH", "detail": f"{type(e).__name__}: {line(e)} at {last_frame(e)}"}
    if list(got) != list(expected):
        first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        return {"class": "DIFFERENT", "detail": f"first differs at token {first}: {list(got)} vs {expected}"}
    return {"class": "exact", "detail": ""}


def run_arch(model_type: str) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:
        pass
    row = {"arch": model_type, "skip": None, "note": "", "cells": {}}
    try:
        model, expected, row["note"] = build(model_type)
    except Skip as e:
        row["skip"] = str(e)
        return row
    for name in CELLS:
        row["cells"][name] = cell(model, name, expected, row["cells"].get("hf", {}).get("class") == "refused")
    return row


def _child(model_type: str, conn) -> None:
    try:
        sys.stdout = sys.stderr = open(os.devnull, "w")
        row = run_arch(model_type)
    except BaseException as e:  # the sweep's own failure: reported as a skip with its cause
        row = {"arch": model_type, "skip": f"sweep error: {type(e).__name__}: {line(e)}", "note": "", "cells": {}}
    conn.send(row)
    conn.close()


def sweep(types: list[str], timeout: float, jobs: int, log=sys.stderr) -> list[dict]:
    import torch
    import transformers

    del torch, transformers  # imported once before forking: each child starts warm

    ctx = mp.get_context("fork")
    pending, running, rows = list(types), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            t = pending.pop(0)
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(t, child), daemon=True)
            p.start()
            child.close()
            running[t] = (p, parent, time.monotonic())
        time.sleep(0.05)
        for t, (p, conn, t0) in list(running.items()):
            row = None
            if conn.poll():
                try:
                    row = conn.recv()
                except EOFError:
                    row = {"arch": t, "skip": f"sweep worker died (exit {p.exitcode})", "note": "", "cells": {}}
            elif not p.is_alive():
                row = {"arch": t, "skip": None, "note": f"worker died (exit {p.exitcode})",
                       "cells": {c: {"class": "CRASH", "detail": f"process died, exit {p.exitcode}"} for c in CELLS}}
            elif time.monotonic() - t0 > timeout:
                p.kill()
                row = {"arch": t, "skip": None, "note": f"over {timeout:.0f} s",
                       "cells": {c: {"class": "TIMEOUT", "detail": ""} for c in CELLS}}
            if row is None:
                continue
            p.join(5)
            conn.close()
            del running[t]
            row["seconds"] = round(time.monotonic() - t0, 1)
            rows[t] = row
            print(f"{t:28s} {summary(row)}", file=log, flush=True)
    return [rows[t] for t in types]


def summary(row: dict) -> str:
    if row["skip"]:
        return f"skipped: {row['skip']}"
    return " ".join(f"{c}={row['cells'][c]['class']}" for c in CELLS)


def counts(rows: list[dict]) -> dict:
    out = {"skipped": sum(1 for r in rows if r["skip"])}
    for c in CLASSES:
        out[c] = sum(1 for r in rows if not r["skip"] for x in r["cells"].values() if x["class"] == c)
    return out


def markdown(rows: list[dict], header: str = "") -> str:
    import transformers

    n = counts(rows)
    ran = [r for r in rows if not r["skip"]]
    lines = [header] if header else []
    lines += [f"transformers {transformers.__version__}; {len(rows)} model types, {len(ran)} run, "
              f"{n['skipped']} skipped; {len(ran) * len(CELLS)} cells.", "",
              "| class | cells |", "|---|---|"]
    lines += [f"| {c} | {n[c]} |" for c in CLASSES]
    lines += ["", "| arch | hf | static | graph | pld (hf) | notes |", "|---|---|---|---|---|---|"]
    for r in ran:
        details = "; ".join(f"{c}: {r['cells'][c]['detail']}" for c in CELLS
                            if r["cells"][c]["class"] not in ("exact",) and r["cells"][c]["detail"])
        details = details.replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['arch']} | " + " | ".join(r["cells"][c]["class"] for c in CELLS) + f" | {details} |")
    lines += ["", "Skipped (transformers itself cannot build or run the tiny model):", "",
              "| arch | why |", "|---|---|"]
    lines += [f"| {r['arch']} | {r['skip'].replace('|', '/')} |" for r in rows if r["skip"]]
    return "\n".join(lines) + "\n"


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, not the usage block
        print(f"arch_sweep: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model types (default: every causal-LM model type)")
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--json", help="write the rows as JSON here")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per model type")
    parser.add_argument("--jobs", type=int, default=2, help="model types run at once")
    parser.add_argument("--attn", choices=("eager", "sdpa"), default="eager",
                        help="attention implementation (specdiff loads targets with sdpa)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    known = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    types = known
    if args.only:
        types = [t.strip() for t in args.only.split(",") if t.strip()]
        unknown = [t for t in types if t not in known]
        if unknown or not types:
            print(f"arch_sweep: not a causal-LM model type: {', '.join(unknown) or '(none given)'}", file=sys.stderr)
            return 2
    if args.timeout <= 0 or args.jobs < 1:
        print("arch_sweep: --timeout must be > 0 and --jobs >= 1", file=sys.stderr)
        return 2
    global ATTN
    ATTN = args.attn  # read by the forked workers
    rows = sweep(types, args.timeout, args.jobs)
    n = counts(rows)
    print(" ".join(f"{k}={v}" for k, v in n.items()))
    if args.out:
        with open(args.out, "w") as f:
            f.write(markdown(rows, f"`python scripts/arch_sweep.py --attn {args.attn}`"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
