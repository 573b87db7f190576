"""Tiny local stand-ins for LLaDA, Dream and SDAR folders, for the adapter tests.

Each `write_*` writes a Hugging Face remote-code folder: config.json with the real model's
model_type, architectures and auto_map, a configuration_*.py and modeling_*.py of our own (written
for these tests, not copied) that keep the real models' calling conventions, random weights and a
word-level tokenizer. Loading one therefore goes through `trust_remote_code` like the real thing.
The conventions kept, per model:
- LLaDA: `LLaDAModelLM(input_ids, attention_bias=...)`; each block's RotaryEmbedding.forward(q, k)
  rotates by row index and `_scaled_dot_product_attention` ignores any mask (as the HF code does);
  rotary tables from `get_rotary_embedding(seq_len, device)`, rotation by `apply_rotary_pos_emb`.
- Dream: `DreamModel(input_ids, attention_mask 4-D bool, position_ids, past_key_values)` returning
  raw logits whose row i is read as the prediction for token i + 1; appends to a passed Cache.
- SDAR: `SDARForCausalLM(input_ids, attention_mask, position_ids, store_kv=...)`, the mask taken
  as `attention_mask.bool()`, q/k RMS norms; block-causal by training, not by code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HEADER = '''import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_tables(positions, dim, theta):
    """positions [B, N] -> cos, sin [B, 1, N, dim] in float32."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float) / dim))
    angles = positions.float()[..., None] * inv
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def attend(q, k, v, mask):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)


class TinyPreTrained(PreTrainedModel):
    base_model_prefix = "model"

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
'''

CONFIG = '''from transformers import PretrainedConfig


class {name}(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, init_std=0.3, **kwargs):
        self.init_std = init_std
        super().__init__(**kwargs)
'''

LLADA = HEADER + '''from .configuration_llada import LLaDAConfig


class RotaryEmbedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.dim = config.d_model // config.n_heads

    def get_rotary_embedding(self, seq_len, device):
        cos, sin = rope_tables(torch.arange(seq_len, device=device)[None], self.dim, self.config.rope_theta)
        return sin, cos  # [1, 1, seq_len, dim]

    def apply_rotary_pos_emb(self, pos_sin, pos_cos, t):
        return (t * pos_cos + rotate_half(t) * pos_sin).to(t.dtype)

    def forward(self, q, k):  # by row index: no positions
        q_, k_ = (q.float(), k.float()) if self.config.rope_full_precision else (q, k)
        sin, cos = self.get_rotary_embedding(k_.shape[-2], q.device)
        q_ = self.apply_rotary_pos_emb(sin.type_as(q_), cos.type_as(q_), q_)
        k_ = self.apply_rotary_pos_emb(sin.type_as(k_), cos.type_as(k_), k_)
        return q_.type_as(q), k_.type_as(k)


class LLaDALlamaBlock(nn.Module):
    def __init__(self, layer_id, config):
        super().__init__()
        self.layer_id, self.config = layer_id, config
        d, hd = config.d_model, config.d_model // config.n_heads
        self.attn_norm, self.ff_norm = RMSNorm(d, config.rms_norm_eps), RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=False)
        self.rotary_emb = RotaryEmbedding(config)

    def _scaled_dot_product_attention(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        return attend(q, k, v, None)  # as LLaDA's HF code: no mask reaches SDPA

    def attention(self, q, k, v, attention_bias=None):
        B, T, C = q.shape
        hd = C // self.config.n_heads
        q = q.view(B, T, -1, hd).transpose(1, 2)
        k = k.view(B, T, -1, hd).transpose(1, 2)
        v = v.view(B, T, -1, hd).transpose(1, 2)
        q, k = self.rotary_emb(q, k)
        att = self._scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        return self.attn_out(att.transpose(1, 2).reshape(B, T, C))

    def forward(self, x, attention_bias=None, layer_past=None, use_cache=False):
        h = self.attn_norm(x)
        x = x + self.attention(self.q_proj(h), self.k_proj(h), self.v_proj(h), attention_bias)
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h)), None


class LLaDAModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.d_model),
            blocks=nn.ModuleList(LLaDALlamaBlock(i, config) for i in range(config.n_layers)),
            ln_f=RMSNorm(config.d_model, config.rms_norm_eps),
            ff_out=nn.Linear(config.d_model, config.vocab_size, bias=False),
        ))

    def forward(self, input_ids, attention_bias=None, past_key_values=None, use_cache=False):
        assert past_key_values is None and not use_cache, "no KV cache for MDM"
        x = self.transformer.wte(input_ids)
        for block in self.transformer.blocks:
            x, _ = block(x, attention_bias=attention_bias)
        return self.transformer.ff_out(self.transformer.ln_f(x))


class LLaDAModelLM(TinyPreTrained):
    config_class = LLaDAConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def get_output_embeddings(self):
        return self.model.transformer.ff_out

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, cache_position=None):
        logits = self.model(input_ids, attention_bias=attention_bias, past_key_values=past_key_values,
                            use_cache=bool(use_cache))
        return CausalLMOutputWithPast(logits=logits)
'''

# Dream and SDAR: Qwen-style decoders; they differ in q/k norms, biases, mask handling, output
QWEN_STYLE = HEADER + '''

class Attention(nn.Module):
    qk_norm = False
    qkv_bias = False

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.hd = config.hidden_size // self.heads
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.heads * self.hd, bias=self.qkv_bias)
        self.k_proj = nn.Linear(d, self.kv_heads * self.hd, bias=self.qkv_bias)
        self.v_proj = nn.Linear(d, self.kv_heads * self.hd, bias=self.qkv_bias)
        self.o_proj = nn.Linear(self.heads * self.hd, d, bias=False)
        if self.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(self.hd, config.rms_norm_eps), RMSNorm(self.hd, config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_value=None, **kwargs):
        B, N, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, N, -1, self.hd)
        k = self.k_proj(hidden_states).view(B, N, -1, self.hd)
        v = self.v_proj(hidden_states).view(B, N, -1, self.hd).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        cos, sin = position_embeddings
        q = (q * cos + rotate_half(q) * sin).to(v.dtype)
        k = (k * cos + rotate_half(k) * sin).to(v.dtype)
        if past_key_value is not None:
            k, v = past_key_value.update(k, v, self.layer_idx)
        out = attend(q, k, v, self.mask(attention_mask))
        return self.o_proj(out.transpose(1, 2).reshape(B, N, -1))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = ATTENTION(config, layer_idx)
        d, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(d, eps), RMSNorm(d, eps)
        self.gate_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, d, bias=False)

    def forward(self, x, position_embeddings, attention_mask=None, past_key_value=None):
        x = x + self.self_attn(self.input_layernorm(x), position_embeddings, attention_mask, past_key_value)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Decoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None):
        x = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=x.device)[None]
        hd = self.config.hidden_size // self.config.num_attention_heads
        position_embeddings = rope_tables(position_ids, hd, self.config.rope_theta)
        for layer in self.layers:
            x = layer(x, position_embeddings, attention_mask, past_key_values)
        return self.norm(x)


class LMBase(TinyPreTrained):
    def __init__(self, config):
        super().__init__(config)
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head
'''

DREAM = QWEN_STYLE.replace("ATTENTION(", "DreamAttention(") + '''from .configuration_dream import DreamConfig


class DreamAttention(Attention):
    qkv_bias = True

    def mask(self, attention_mask):
        return attention_mask if isinstance(attention_mask, torch.Tensor) else None  # "full" -> None


class DreamModel(LMBase):
    config_class = DreamConfig

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, cache_position=None, num_logits_to_keep=0):
        hidden = self.model(input_ids, attention_mask, position_ids, past_key_values if use_cache else None)
        return MaskedLMOutput(logits=self.lm_head(hidden))  # row i: the prediction for token i + 1
'''

SDAR = QWEN_STYLE.replace("ATTENTION(", "SDARAttention(") + '''from .configuration_sdar import SDARConfig


class SDARAttention(Attention):
    qk_norm = True

    def mask(self, attention_mask):
        return attention_mask.bool() if attention_mask is not None else None


class SDARForCausalLM(LMBase):
    config_class = SDARConfig

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, store_kv=None, output_attentions=None,
                output_hidden_states=None, cache_position=None, **kwargs):
        hidden = self.model(input_ids, attention_mask, position_ids, past_key_values if store_kv else None)
        return CausalLMOutputWithPast(logits=self.lm_head(hidden))
'''

MODELS = {  # kind -> (model_type, module stem, config class, model class, Auto name, modeling code)
    "llada": ("llada", "llada", "LLaDAConfig", "LLaDAModelLM", "AutoModel", LLADA),
    "dream": ("Dream", "dream", "DreamConfig", "DreamModel", "AutoModel", DREAM),
    "sdar": ("sdar", "sdar", "SDARConfig", "SDARForCausalLM", "AutoModelForCausalLM", SDAR),
}


def _size(kind: str, vocab: int) -> dict:
    if kind == "llada":
        return dict(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, vocab_size=vocab,
                    embedding_size=vocab, max_sequence_length=256, rope_theta=10000.0, rope_full_precision=True,
                    rms_norm_eps=1e-5, weight_tying=False, block_type="llama")
    return dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                intermediate_size=64, vocab_size=vocab, max_position_embeddings=256, rope_theta=10000.0,
                rms_norm_eps=1e-6, tie_word_embeddings=False)


def write_tokenizer(folder: Path, vocab: int, mask_id: int, mask_token: str, config: bool = False) -> None:
    """A word-level tokenizer: "t0".."t{V-1}", with `mask_token` at mask_id; tokenizer_config.json
    (naming the mask token, for AutoTokenizer) only if `config`."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    words = {f"t{i}": i for i in range(vocab)}
    words[mask_token] = mask_id
    del words[f"t{mask_id}"]
    tok = Tokenizer(WordLevel(words, unk_token=mask_token))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    if config:
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "mask_token": mask_token}))


def write_fixture(kind: str, folder: Path, mask_id: int | None, vocab: int = 64, seed: int = 0,
                  init_std: float = 0.3, tokenizer_mask: bool = False) -> Path:
    """A tiny random remote-code folder of `kind`. mask_id None leaves mask_token_id out of config.json;
    tokenizer_mask writes a tokenizer_config.json naming "<|MASK|>" (at mask_id, or vocab - 1)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    model_type, stem, config_cls, model_cls, auto, code = MODELS[kind]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"configuration_{stem}.py").write_text(CONFIG.format(name=config_cls, model_type=model_type))
    (folder / f"modeling_{stem}.py").write_text(code)
    config = dict(model_type=model_type, architectures=[model_cls], init_std=init_std,
                  auto_map={"AutoConfig": f"configuration_{stem}.{config_cls}", auto: f"modeling_{stem}.{model_cls}"},
                  **_size(kind, vocab))
    if mask_id is not None:
        config["mask_token_id"] = mask_id
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    tok_mask = mask_id if mask_id is not None else vocab - 1
    write_tokenizer(folder, vocab, tok_mask, "<|MASK|>", config=tokenizer_mask)
    torch.manual_seed(seed)
    cfg = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    loader = AutoModelForCausalLM if auto == "AutoModelForCausalLM" else AutoModel
    model = loader.from_config(cfg, trust_remote_code=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder
