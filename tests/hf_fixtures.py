"""Tiny random `transformers` Gemma 3 models written out as GGUF with llama.cpp's names
(SPEC 3/4), the independent reference for the numpy model.

Every weight is stored in a chosen ggml type; afterwards the transformers model's
parameter is set to gguf-py's dequantization of exactly those bytes, so both sides
compute with the same numbers. gguf-py quantizes F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and
Q8_0; for the K-quants (which it can only dequantize) random blocks are drawn and scaled
to the magnitude of the weights they replace.
"""
from __future__ import annotations

from pathlib import Path

import gguf as ggufpy
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from tiny import tiny_vocab

# byte offsets of the fp16 scale fields in blocks gguf-py cannot quantize
_K_FP16 = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def text_config(vocab: int = 300, d: int = 64, d_ff: int = 128, layers: int = 7, heads: int = 4,
                kv_heads: int = 2, head_dim: int = 32, window: int = 16, pattern: int = 6,
                rope_base: float = 1e6, rope_base_local: float = 10000.0, linear_scale: float | None = None,
                query_scalar: float | None = None, max_pos: int = 4096) -> Gemma3TextConfig:
    full = {"rope_type": "default", "rope_theta": rope_base}
    if linear_scale:
        full = {"rope_type": "linear", "factor": linear_scale, "rope_theta": rope_base}
    layer_types = ["sliding_attention" if (il % pattern < pattern - 1) else "full_attention"
                   for il in range(layers)]
    cfg = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=d, intermediate_size=d_ff, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        sliding_window=window, layer_types=layer_types, max_position_embeddings=max_pos,
        query_pre_attn_scalar=query_scalar if query_scalar is not None else head_dim,
        rope_parameters={"full_attention": full,
                         "sliding_attention": {"rope_type": "default", "rope_theta": rope_base_local}},
    )
    cfg._attn_implementation = "eager"
    return cfg


def build_text_model(cfg: Gemma3TextConfig, seed: int = 0) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg).eval().float()
    # random init leaves norms at 0 (i.e. 1 + 0): perturb them so the +1 convention matters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    return model


def _blocks_like(w: np.ndarray, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks for a [rows, cols] weight, scaled to w's magnitude."""
    block, size = ggufpy.GGML_QUANT_SIZES[qtype]
    rows, cols = w.shape
    raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    for at in _K_FP16[qtype]:
        raw[:, at:at + 2] = np.full(len(raw), 1e-3, np.float16).view(np.uint8).reshape(-1, 2)
    vals = ggufpy.quants.dequantize(raw, qtype)
    scale = np.float16(w.std() / max(vals.std(), 1e-12) * 1e-3)
    for at in _K_FP16[qtype]:
        raw[:, at:at + 2] = np.full(len(raw), scale, np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def encode_weight(w: np.ndarray, qtype: Q, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(what the GGUF stores, the float32 values it stands for)."""
    if qtype == Q.F32:
        return w.astype(np.float32), w.astype(np.float32)
    if qtype == Q.F16:
        h = w.astype(np.float16)
        return h, h.astype(np.float32)
    if qtype in _K_FP16:
        raw = _blocks_like(w, qtype, rng)
    else:
        raw = ggufpy.quants.quantize(w.astype(np.float32), qtype)
    return raw, ggufpy.quants.dequantize(raw, qtype).reshape(w.shape).astype(np.float32)


TEXT_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str | None:
    n = hf_name
    for prefix in ("model.language_model.", "language_model.model.", "model."):
        if n.startswith(prefix):
            n = n[len(prefix):]
            break
    if n == "embed_tokens.weight":
        return "token_embd.weight"
    if n == "norm.weight":
        return "output_norm.weight"
    if n.startswith("layers."):
        _, il, rest = n.split(".", 2)
        base = rest.rsplit(".", 1)[0]
        return f"blk.{il}.{TEXT_NAMES[base]}.weight"
    return None                                   # lm_head (tied)


def write_text_gguf(model: Gemma3ForCausalLM, path: Path, types=None, seed: int = 0,
                    pattern: int | list[bool] = 6, extra_kv: dict | None = None) -> Path:
    """Write `model` as a gemma3 GGUF. `types(gguf_name, shape) -> GGMLQuantizationType`
    picks each weight's storage (norms stay F32); the model's parameters are replaced by
    what the file holds."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    w = ggufpy.GGUFWriter(str(path), "gemma3")
    w.add_name("tiny gemma3")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rp = cfg.rope_parameters
    w.add_rope_freq_base(rp["full_attention"]["rope_theta"])
    w.add_float32("gemma3.rope.freq_base_swa", rp["sliding_attention"]["rope_theta"])
    if rp["full_attention"].get("rope_type") == "linear":
        w.add_string("gemma3.rope.scaling.type", "linear")
        w.add_float32("gemma3.rope.scaling.factor", rp["full_attention"]["factor"])
    w.add_sliding_window(cfg.sliding_window)
    if isinstance(pattern, list):
        w.add_array("gemma3.attention.sliding_window_pattern", pattern)
    else:
        w.add_uint32("gemma3.attention.sliding_window_pattern", pattern)
    tokens, ttypes, scores = tiny_vocab(cfg.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores.tolist())
    w.add_token_types(ttypes.tolist())
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_space_prefix(False)
    for k, v in (extra_kv or {}).items():
        w.add_key_value(k, v[0], v[1])
    state = model.state_dict()
    with torch.no_grad():
        for hf_name, tensor in state.items():
            name = gguf_name(hf_name)
            if name is None:
                continue
            arr = tensor.detach().float().numpy()
            if "norm" in name:
                # why: llama.cpp's converter stores Gemma's norm weights as 1 + w
                w.add_tensor(name, (arr + 1.0).astype(np.float32))
                continue
            qtype = types(name, arr.shape) if types else Q.F32
            stored, values = encode_weight(arr, qtype, rng)
            if qtype in (Q.F32, Q.F16):
                w.add_tensor(name, stored)
            else:
                w.add_tensor(name, stored, raw_dtype=qtype)
            model.get_parameter(hf_name).copy_(torch.from_numpy(values.reshape(arr.shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_logits(model: Gemma3ForCausalLM, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()
