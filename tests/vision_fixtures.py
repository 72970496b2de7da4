"""Tiny random `transformers` Gemma 3 vision-language models written as a text GGUF plus
an mmproj GGUF with llama.cpp's names and layouts (SPEC 4), the reference for
runner/vision.py and the image paths of the engine.

As in hf_fixtures, every weight is stored in a chosen ggml type and the transformers
parameter is then set to exactly what the file holds, so both sides compute with the
same numbers. Random init is replaced where transformers' own init would hide a bug:
the projection (zero-initialized), LayerNorms (1 and 0), biases (0) and RMSNorm weights
(0, i.e. 1 + 0) all get random values.
"""
from __future__ import annotations

import math
from pathlib import Path

import gguf as ggufpy
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

from hf_fixtures import encode_weight, text_config, write_text_gguf

BOI, EOI, SOFT = 7, 8, 9            # <start_of_image>, <end_of_image>, <image_soft_token> in tiny_vocab

# the official Gemma 3 chat template (google/gemma-3-4b-it): an image part is written as
# <start_of_image>, which transformers' processor then expands
HF_TEMPLATE = (Path(__file__).parent / "data" / "gemma3_chat_template.jinja").read_text()


def vision_config(d: int = 64, d_ff: int = 96, layers: int = 3, heads: int = 4, image_size: int = 128,
                  patch_size: int = 4, eps: float = 1e-6) -> SiglipVisionConfig:
    cfg = SiglipVisionConfig(hidden_size=d, intermediate_size=d_ff, num_hidden_layers=layers,
                             num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                             layer_norm_eps=eps, hidden_act="gelu_pytorch_tanh", vision_use_head=False)
    cfg._attn_implementation = "eager"
    return cfg


def build_mm_model(vcfg: SiglipVisionConfig | None = None, tcfg=None, tokens: int = 256,
                   seed: int = 0) -> Gemma3ForConditionalGeneration:
    """A random Gemma3ForConditionalGeneration: by default a 3-layer SigLIP of width 64 on
    128 px images (32x32 patches of 4 px, average-pooled 2x2 to 256 tokens) and the
    7-layer GQA text model of hf_fixtures (one global layer, sliding window 16, which
    the 256 image tokens overflow)."""
    vcfg = vcfg or vision_config()
    tcfg = tcfg or text_config(vocab=300, d=64, d_ff=128, layers=7, heads=4, kv_heads=2, head_dim=32, window=16)
    cfg = Gemma3Config(text_config=tcfg, vision_config=vcfg, mm_tokens_per_image=tokens,
                       boi_token_index=BOI, eoi_token_index=EOI, image_token_index=SOFT)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(cfg).eval().float()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.language_model.") and "norm" in name:
                p.normal_(0.0, 0.3, generator=g)                 # Gemma RMSNorm: 1 + w
            elif name.startswith("model.language_model."):
                continue                                         # as hf_fixtures builds it
            elif "mm_soft_emb_norm" in name:
                p.normal_(0.0, 0.3, generator=g)
            elif "layer_norm" in name or "layernorm" in name:
                if name.endswith("weight"):
                    p.normal_(1.0, 0.2, generator=g)
                else:
                    p.normal_(0.0, 0.2, generator=g)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2, generator=g)
            elif "position_embedding" in name:
                p.normal_(0.0, 0.5, generator=g)
            else:                                                # matrices: unit-variance outputs
                # Linear and Conv2d weights are [out, in...]; the projection is [in, out]
                fan_in = p.shape[0] if "mm_input_projection" in name else int(np.prod(p.shape[1:]))
                p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=g)
    return model


VISION_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_out", "layer_norm1": "ln1", "layer_norm2": "ln2",
    "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down",
}


def mmproj_name(hf_name: str, swap_ffn: bool = False) -> str | None:
    """llama.cpp's name for a vision/projector parameter (None: not part of the mmproj)."""
    n = hf_name
    for prefix in ("model.vision_tower.vision_model.", "model.vision_tower.", "vision_tower.vision_model."):
        if n.startswith(prefix):
            n = n[len(prefix):]
            break
    else:
        if n == "model.multi_modal_projector.mm_input_projection_weight":
            return "mm.input_projection.weight"
        if n == "model.multi_modal_projector.mm_soft_emb_norm.weight":
            return "mm.soft_emb_norm.weight"
        return None
    if n.startswith("embeddings.patch_embedding."):
        return "v.patch_embd." + n.rsplit(".", 1)[1]
    if n == "embeddings.position_embedding.weight":
        return "v.position_embd.weight"
    if n.startswith("post_layernorm."):
        return "v.post_ln." + n.rsplit(".", 1)[1]
    if n.startswith("encoder.layers."):
        _, _, il, rest = n.split(".", 3)
        base, kind = rest.rsplit(".", 1)
        short = VISION_NAMES[base]
        if swap_ffn and short in ("ffn_up", "ffn_down"):
            short = "ffn_down" if short == "ffn_up" else "ffn_up"     # older converters
        return f"v.blk.{il}.{short}.{kind}"
    raise KeyError(hf_name)


def write_mmproj_gguf(model: Gemma3ForConditionalGeneration, path: Path, types=None, seed: int = 0,
                      swap_ffn: bool = False, scale_factor: int | None = None, extra_kv: dict | None = None,
                      skip: tuple[str, ...] = ()) -> Path:
    """Write the vision tower and projector as a llama.cpp mmproj GGUF. `types(name, shape)`
    picks the ggml type of each matrix (1-D tensors stay F32); the model's parameters are
    replaced by what the file holds. `swap_ffn` writes fc1 as ffn_down and fc2 as ffn_up
    (older converters). The pooling kernel goes to clip.vision.projector.scale_factor
    when it is not llama.cpp's default of 4 (or always, given `scale_factor`)."""
    cfg, v = model.config, model.config.vision_config
    rng = np.random.default_rng(seed)
    w = ggufpy.GGUFWriter(str(path), "clip")
    w.add_string("clip.projector_type", "gemma3")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", v.image_size)
    w.add_uint32("clip.vision.patch_size", v.patch_size)
    w.add_uint32("clip.vision.embedding_length", v.hidden_size)
    w.add_uint32("clip.vision.feed_forward_length", v.intermediate_size)
    w.add_uint32("clip.vision.block_count", v.num_hidden_layers)
    w.add_uint32("clip.vision.attention.head_count", v.num_attention_heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", v.layer_norm_eps)
    w.add_uint32("clip.vision.projection_dim", cfg.text_config.hidden_size)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    kernel = (v.image_size // v.patch_size) // int(cfg.mm_tokens_per_image ** 0.5)
    if scale_factor is not None or kernel != 4:
        scale_factor = kernel if scale_factor is None else scale_factor
        w.add_uint32("clip.vision.projector.scale_factor", scale_factor)
    for k, val in (extra_kv or {}).items():
        w.add_key_value(k, val[0], val[1])
    with torch.no_grad():
        for hf_name, tensor in model.state_dict().items():
            name = mmproj_name(hf_name, swap_ffn)
            if name is None or name in skip:
                continue
            arr = tensor.detach().float().numpy()
            if name == "mm.soft_emb_norm.weight":
                # why: llama.cpp's converter stores Gemma's RMSNorm weight as 1 + w
                w.add_tensor(name, (arr + 1.0).astype(np.float32))
                continue
            qtype = types(name, arr.shape) if (types and arr.ndim >= 2) else Q.F32
            if qtype not in (Q.F32, Q.F16) and arr.shape[-1] % ggufpy.GGML_QUANT_SIZES[qtype][0]:
                qtype = Q.F32                                  # rows not a whole number of blocks
            flat = arr.reshape(-1, arr.shape[-1])
            stored, values = encode_weight(flat, qtype, rng)
            if qtype in (Q.F32, Q.F16):
                w.add_tensor(name, stored.reshape(arr.shape))
            else:
                w.add_tensor(name, stored, raw_dtype=qtype)
            model.get_parameter(hf_name).copy_(torch.from_numpy(values.reshape(arr.shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_mm_model(model: Gemma3ForConditionalGeneration, directory: Path, text_types=None,
                   vision_types=None, **mmproj) -> tuple[Path, Path]:
    """(text GGUF, mmproj GGUF) for `model`, its parameters replaced by the files' values."""
    text = write_text_gguf(model.model.language_model, directory / "text.gguf", types=text_types)
    proj = write_mmproj_gguf(model, directory / "mmproj.gguf", types=vision_types, **mmproj)
    return text, proj


def sample_image(size: tuple[int, int] = (173, 131), seed: int = 0, mode: str = "RGB"):
    """A deterministic PIL image with structure at several scales (gradients, blocks,
    noise), so that resizing and pooling bugs show."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    r = (255 * xx / max(w - 1, 1))
    g = (255 * yy / max(h - 1, 1))
    b = 127 + 127 * np.sin(xx / 7.0) * np.cos(yy / 5.0)
    img = np.stack([r, g, b], -1) + rng.normal(0, 25, (h, w, 3))
    img[h // 4:h // 2, w // 3:w // 2] = [250, 20, 30]
    arr = np.clip(img, 0, 255).astype(np.uint8)
    if mode == "RGBA":
        alpha = np.clip(255 * xx / max(w - 1, 1), 0, 255).astype(np.uint8)[..., None]
        return Image.fromarray(np.concatenate([arr, alpha], -1), "RGBA")
    return Image.fromarray(arr, "RGB")


def hf_image_features(model: Gemma3ForConditionalGeneration, pixel_values) -> np.ndarray:
    with torch.no_grad():
        out = model.get_image_features(torch.as_tensor(pixel_values), return_dict=True)
        return out.pooler_output[0].float().numpy()


def hf_mm_logits(model: Gemma3ForConditionalGeneration, input_ids, pixel_values, token_type_ids) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(input_ids).reshape(1, -1),
                    pixel_values=torch.as_tensor(pixel_values),
                    token_type_ids=torch.as_tensor(token_type_ids).reshape(1, -1))
        return out.logits[0].float().numpy()
