"""A tiny random Gemma 3 model written as GGUF with numpy and gguf-py only (no torch): the
fast tier's model. The tests that use it check plumbing (the cache, stops, limits,
batching, drafting, the HTTP shapes) against stated properties or against the library's
own fresh run of the same request, never numerics: those are checked against
transformers on models from hf_fixtures.py and on the real 270M file."""
from __future__ import annotations

from pathlib import Path

import gguf as ggufpy
import numpy as np
from gguf import GGMLQuantizationType as Q


def tiny_vocab(n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A small SentencePiece-style vocabulary: Gemma's special tokens at their usual
    places, 256 byte tokens, single characters and a few words."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tokens = list(specials) + [f"<0x{b:02X}>" for b in range(256)]
    types = [3] * len(specials) + [6] * 256
    words = ["▁", "\n"] + list("abcdefghijklmnopqrstuvwxyz.,!?") + \
        ["▁the", "▁a", "▁is", "▁of", "th", "he", "in", "er", "an", "▁to"]
    for w in words:
        if len(tokens) < n:
            tokens.append(w)
            types.append(1)
    while len(tokens) < n:
        tokens.append(f"<unused{len(tokens)}>")
        types.append(5)
    scores = -np.arange(n, dtype=np.float32)
    return tokens, np.array(types, dtype=np.int32), scores


def write_tiny_gguf(path: Path, vocab: int = 320, d: int = 64, d_ff: int = 128, layers: int = 4, heads: int = 4,
                    kv_heads: int = 2, head_dim: int = 16, window: int = 16, context: int = 4096,
                    seed: int = 0, eps: float = 1e-6, rope_base: float = 1e6, bos_id: int = 2) -> Path:
    """A gemma3 GGUF with random weights (matrices Q8_0, norms F32 near 1): sliding layers
    of `window` tokens, every second layer global. eps, rope_base and bos_id let tests
    write broken settings."""
    rng = np.random.default_rng(seed)
    w = ggufpy.GGUFWriter(str(path), "gemma3")
    w.add_name("tiny gemma3")
    w.add_context_length(context)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(d_ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_freq_base(rope_base)
    w.add_sliding_window(window)
    w.add_uint32("gemma3.attention.sliding_window_pattern", 2)
    tokens, types, scores = tiny_vocab(vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores.tolist())
    w.add_token_types(types.tolist())
    w.add_bos_token_id(bos_id)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_space_prefix(False)

    def matrix(name: str, n_out: int, n_in: int, row_scale: np.ndarray | None = None) -> None:
        m = rng.standard_normal((n_out, n_in)).astype(np.float32) / np.sqrt(n_in)
        if row_scale is not None:
            m *= row_scale[:, None]
        w.add_tensor(name, ggufpy.quants.quantize(m, Q.Q8_0), raw_dtype=Q.Q8_0)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    # why: small output rows for byte, control and unused tokens, so that the model mostly
    # writes the characters and words (readable text, as stop strings need)
    matrix("token_embd.weight", vocab, d, np.where(types == 1, 1.0, 0.05).astype(np.float32))
    norm("output_norm.weight", d)
    for il in range(layers):
        p = f"blk.{il}."
        for name, n_out, n_in in (("attn_q", heads * head_dim, d), ("attn_k", kv_heads * head_dim, d),
                                  ("attn_v", kv_heads * head_dim, d), ("attn_output", d, heads * head_dim),
                                  ("ffn_gate", d_ff, d), ("ffn_up", d_ff, d), ("ffn_down", d, d_ff)):
            matrix(p + name + ".weight", n_out, n_in)
        for name, n in (("attn_norm", d), ("attn_q_norm", head_dim), ("attn_k_norm", head_dim),
                        ("post_attention_norm", d), ("ffn_norm", d), ("post_ffw_norm", d)):
            norm(p + name + ".weight", n)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
