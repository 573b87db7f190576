"""T=0: every method's output is token-identical to AR and to the target's own HF greedy generate."""

import pytest
import torch

from specdiff.config import DecodeConfig
from specdiff.decode import SpeculativeDecoder
from specdiff.engine import build_decoder
from specdiff.models.tiny import tiny_drafter
from specdiff.target import HFTarget, StaticTarget

from conftest import OracleProposer

NUM_PROMPTS = 10
NEW = 40


def prompts(vocab: int, n: int = NUM_PROMPTS, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(1, 24, (1,), generator=g))
        p = torch.randint(0, vocab - 1, (length,), generator=g).tolist()
        if i % 3 == 0:  # repetitive prompts make prompt lookup and long acceptance likely
            p = (p[:4] or [1]) * 5
        out.append(p)
    return out


def hf_greedy(model, prompt, new, eos=None):
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), do_sample=False,
            max_new_tokens=new, eos_token_id=eos, pad_token_id=0,
        )
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def references(target_model):
    vocab = target_model.config.vocab_size
    ps = prompts(vocab)
    return ps, [hf_greedy(target_model, p, NEW) for p in ps]


def run(decoder, ps):
    return [decoder.generate(p) for p in ps]


def test_ar_equals_hf_generate(target_model, references):
    ps, refs = references
    dec = build_decoder(HFTarget(target_model), DecodeConfig(method="ar", max_new_tokens=NEW))
    for r, ref in zip(run(dec, ps), refs):
        assert r.token_ids == ref
        assert r.rounds == NEW and r.tau == 1.0


@pytest.mark.parametrize(
    "method,budget,engine",
    [("pld", 1, "hf"), ("dflash", 1, "hf"), ("ddtree", 1, "hf"), ("ddtree", 4, "hf"), ("ddtree", 32, "hf"),
     ("ddtree", 128, "hf"), ("ar", 1, "static"), ("dflash", 1, "static"), ("ddtree", 32, "static"),
     ("ar", 1, "graph"), ("dflash", 1, "graph"), ("ddtree", 32, "graph"), ("ddtree", 128, "graph"),
     ("d2sd", 1, "hf"), ("d2sd-hybrid", 32, "hf"), ("d2sd", 1, "static"), ("d2sd-hybrid", 32, "static"),
     ("d2sd", 1, "graph"), ("d2sd-hybrid", 32, "graph"), ("ddtree-pld", 32, "hf"), ("ddtree-pld", 32, "graph")],
)
def test_random_drafter_is_exact(target_model, references, method, budget, engine):
    """A random drafter rarely agrees: almost every round rejects early (six prompts: 240 such
    rounds per method and engine)."""
    ps, refs = references
    ps, refs = ps[:6], refs[:6]
    drafter = tiny_drafter(target_model, block_size=16)
    vp_drafter = tiny_drafter(target_model, block_size=16, seed=2)  # D²SD's second drafter
    cfg = DecodeConfig(method=method, budget=budget, max_new_tokens=NEW, engine=engine)
    dec = build_decoder(target_model, cfg, drafter, vp_drafter=vp_drafter)
    for r, ref in zip(run(dec, ps), refs):
        assert r.token_ids == ref
        assert sum(r.accept_lengths) == NEW


@pytest.mark.parametrize(
    "tree,budget,noise,min_tau",
    [("chain", 0, 0.0, 5.0), ("chain", 0, 0.1, 2.5), ("ddtree", 1, 0.0, 1.8), ("ddtree", 4, 0.2, 1.6),
     ("ddtree", 32, 0.3, 1.6), ("ddtree", 128, 0.5, 1.6)],
)
def test_agreeing_drafter_is_exact(target_model, references, tree, budget, noise, min_tau):
    """A drafter that usually agrees: long accepted paths, some through non-first branches."""
    ps, refs = references
    proposer = OracleProposer(target_model, tree=tree, budget=budget, slots=7, noise=noise)
    dec = SpeculativeDecoder(HFTarget(target_model), proposer, DecodeConfig(method="ar", max_new_tokens=NEW))
    results = run(dec, ps)
    for r, ref in zip(results, refs):
        assert r.token_ids == ref
    mean_tau = sum(r.tau for r in results) / len(results)
    assert mean_tau > min_tau, "the oracle should make long paths accepted"


def test_eos_stops_like_hf(qwen3_model):
    ps = prompts(qwen3_model.config.vocab_size, n=6, seed=5)
    target = HFTarget(qwen3_model)
    drafter = tiny_drafter(qwen3_model, block_size=16)
    for p in ps:
        free = hf_greedy(qwen3_model, p, NEW)
        eos = free[len(free) // 2]  # a token that does occur
        ref = hf_greedy(qwen3_model, p, NEW, eos=eos)
        assert ref[-1] == eos and len(ref) < NEW
        for method in ("ar", "pld", "dflash", "ddtree"):
            dec = build_decoder(target, DecodeConfig(method=method, budget=16, max_new_tokens=NEW), drafter, eos_ids=[eos])
            r = dec.generate(p)
            assert r.token_ids == ref and r.stop_reason == "eos"
        oracle = SpeculativeDecoder(target, OracleProposer(qwen3_model, "chain"), DecodeConfig(max_new_tokens=NEW), [eos])
        assert oracle.generate(p).token_ids == ref


def test_trained_drafter_agrees_and_is_exact():
    """The bundled trained DFlash drafter agrees with the bundled target often: long accepted
    paths through real drafter proposals, still token-identical to HF greedy generate."""
    import json

    from specdiff.drafters.dflash import load_drafter
    from specdiff.models.bundled import REPO_MODELS, default_path
    from specdiff.target.hf_causal import load_target

    model, tok = load_target(default_path("target"))
    drafter = load_drafter(default_path("dflash"))
    rows = (REPO_MODELS.parent / "data" / "prompts" / "function_completion.jsonl").read_text().splitlines()[:3]
    target, static = HFTarget(model), StaticTarget(model)
    taus = []
    for row in rows:
        ids = tok(json.loads(row)["prompt"], add_special_tokens=False)["input_ids"]
        ref = hf_greedy(model, ids, 48)
        for method, budget in (("dflash", 1), ("ddtree", 4), ("ddtree", 32), ("ddtree", 128)):
            cfg = DecodeConfig(method=method, budget=budget, max_new_tokens=48, stop_at_eos=False)
            if budget in (1, 128):  # the HF engine's middle budgets: test_random_drafter_is_exact
                r = build_decoder(target, cfg, drafter).generate(ids)
                assert r.token_ids == ref, f"{method}@{budget}"
            r = build_decoder(static, cfg, drafter).generate(ids)
            assert r.token_ids == ref, f"{method}@{budget}"
            taus.append((method, budget, r.tau))
    assert sum(t for m, b, t in taus if m == "dflash") / len(rows) > 2.0
    assert sum(t for m, b, t in taus if b == 128) / len(rows) > 2.5


@pytest.mark.parametrize("engine", ["static", "graph"])
def test_a_drafter_over_the_first_ids_drafts_only_them_and_changes_no_token(engine):
    """`DecodeConfig.draft_vocab`: the bundled drafter's head over the target's first 2,048 of
    8,192 ids drafts no token past them, its drafts are still accepted (tau well above 1), and the
    output is AR's (T=0, and T=1 with the same seed); an id count past the vocabulary is refused."""
    import json

    from specdiff.config import SamplingConfig
    from specdiff.drafters.dflash import load_drafter
    from specdiff.errors import SpecdiffError
    from specdiff.models.bundled import REPO_MODELS, default_path
    from specdiff.target.hf_causal import load_target

    model, tok = load_target(default_path("target"))
    drafter = load_drafter(default_path("dflash"))
    row = (REPO_MODELS.parent / "data" / "prompts" / "function_completion.jsonl").read_text().splitlines()[2]
    ids = tok(json.loads(row)["prompt"], add_special_tokens=False)["input_ids"]
    for temperature in (0.0, 1.0):
        sampling = SamplingConfig(temperature=temperature, seed=4)
        ar = build_decoder(model, DecodeConfig(method="ar", engine=engine, max_new_tokens=40, stop_at_eos=False,
                                               sampling=sampling)).generate(ids)
        for method, budget in (("dflash", 1), ("ddtree", 16)):
            cfg = DecodeConfig(method=method, budget=budget, engine=engine, max_new_tokens=40, stop_at_eos=False,
                               sampling=sampling, draft_vocab=2048)
            dec = build_decoder(model, cfg, drafter)
            drafted = []
            propose = dec.proposer.propose
            dec.proposer.propose = lambda state: (drafted.append(t := propose(state)), t)[1]
            r = dec.generate(ids)
            assert r.token_ids == ar.token_ids, (method, temperature)
            assert max(max(t.host().tokens[1:].tolist(), default=0) for t in drafted) < 2048
            if temperature == 0:
                assert r.tau > 2.0, (method, r.tau)
    with pytest.raises(SpecdiffError, match="exceeds the target's vocabulary"):
        build_decoder(model, DecodeConfig(method="dflash", engine=engine, draft_vocab=8193), drafter)


@pytest.mark.parametrize("engine", ["hf", "static", "graph"])
def test_overlapped_ar_is_hf_greedy_and_ends_at_the_same_eos(qwen3_model, engine):
    """AR launches each forward on the last draw before reading it (`DecodeConfig.overlap`, the
    default): HF's greedy tokens, one round per token; an end-of-text read after its successor
    was launched still ends the output at that token, and the next decode starts clean."""
    for p in prompts(qwen3_model.config.vocab_size, n=4, seed=7):
        free = hf_greedy(qwen3_model, p, NEW)
        eos = free[len(free) // 2]
        ref = hf_greedy(qwen3_model, p, NEW, eos=eos)
        dec = build_decoder(qwen3_model, DecodeConfig(method="ar", max_new_tokens=NEW, engine=engine), eos_ids=[eos])
        assert dec._overlaps
        chunks = list(dec.stream(p))
        assert [c.tokens for c in chunks] == [[t] for t in ref]
        assert [c.stop_reason for c in chunks] == [None] * (len(ref) - 1) + ["eos"]
        plain = build_decoder(qwen3_model, DecodeConfig(method="ar", max_new_tokens=NEW, engine=engine))
        r = plain.generate(p)
        assert r.token_ids == free and r.rounds == NEW and r.stop_reason == "length"
        assert dec.generate(p).token_ids == ref


@pytest.mark.parametrize("overlap", [True, False])
def test_a_drafted_round_is_handed_out_once_the_next_is_queued(qwen3_model, overlap):
    """With `DecodeConfig.overlap` a drafted round's tokens come out after the next round's
    draft and forward are queued (none past the last round), one round at a time without it;
    HF's greedy tokens either way, and a stream closed early leaves the next decode clean."""
    drafter = tiny_drafter(qwen3_model, block_size=16)
    p = prompts(qwen3_model.config.vocab_size, n=1, seed=3)[0]
    ref = hf_greedy(qwen3_model, p, NEW)
    cfg = DecodeConfig(method="ddtree", budget=8, max_new_tokens=NEW, engine="static", overlap=overlap)
    dec = build_decoder(qwen3_model, cfg, drafter)
    drafts = []  # one draft per round
    propose = dec.proposer.propose
    dec.proposer.propose = lambda state: drafts.append(state.start) or propose(state)
    seen = []
    for chunk in dec.stream(p):
        seen.append((chunk.round, len(drafts), chunk.stop_reason))
    ahead = 2 if overlap else 1
    assert [n for _, n, stop in seen if stop is None] == [r + ahead for r, _, stop in seen if stop is None]
    assert seen[-1][1] == seen[-1][0] + 1  # the last round queues nothing after it
    assert dec.generate(p).token_ids == ref
    stream = dec.stream(p)
    next(stream)
    stream.close()  # a client that leaves after one round: the next round was already queued
    assert dec.generate(p).token_ids == ref
