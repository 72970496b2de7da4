"""Images: the SigLIP tower and Gemma 3 projector against transformers on tiny random
models (pixels, soft tokens, then the logits of prompts holding images, with
transformers' own processor building its inputs), the cache, weight types, and the
errors a user can cause."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from PIL import Image
from transformers import AutoTokenizer, Gemma3ImageProcessorPil, Gemma3Processor

import runner
from runner.engine import Prompt
from runner.gguf import GGUFError
from runner.images import MAX_BYTES, ImageError, check_remote, open_image
from vision_fixtures import (BOI, EOI, HF_TEMPLATE, SOFT, build_mm_model, hf_image_features, hf_mm_logits,
                             sample_image, vision_config, write_mm_model, write_mmproj_gguf)
from hf_fixtures import text_config

# Soft tokens: float32 on both sides, three encoder layers: differences stay near 1e-6 of
# the scale. Logits: as in test_model_tiny.
EMB_RTOL = 2e-5
RTOL = 1e-4


class MM:
    """A tiny model as transformers holds it and as we load it, with the processor."""

    def __init__(self, directory, hf, **write):
        self.hf = hf
        self.text, self.proj = write_mm_model(hf, directory, **write)
        v = hf.config.vision_config
        tok = AutoTokenizer.from_pretrained(
            str(directory), gguf_file=self.text.name,
            extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                  "image_token": "<image_soft_token>"})
        ip = Gemma3ImageProcessorPil(size={"height": v.image_size, "width": v.image_size},
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
        self.processor = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=HF_TEMPLATE,
                                         image_seq_length=hf.config.mm_tokens_per_image)
        self.llm = runner.load(self.text, mmproj=self.proj, n_ctx=2048)

    def pixels(self, img) -> np.ndarray:
        return self.processor.image_processor(img, return_tensors="np")["pixel_values"]

    def hf_inputs(self, messages):
        return self.processor.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                  add_generation_prompt=True, return_tensors="np")


@pytest.fixture(scope="module")
def mm(tmp_path_factory):
    return MM(tmp_path_factory.mktemp("mm"), build_mm_model(seed=0))


def hf_messages(messages):
    """Our messages as transformers' processor takes them (images as PIL objects)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{"type": "image", "image": open_image(p["image"])} if p["type"] == "image" else p
                       for p in content]
        out.append({"role": m["role"], "content": content})
    return out


def compare_prompt(mm, messages, label, chunk=None):
    """Our chat prompt and its logits against transformers' processor and model."""
    inputs = mm.hf_inputs(hf_messages(messages))
    ids, ttype = inputs["input_ids"][0], inputs["token_type_ids"][0]
    prompt = mm.llm.chat_prompt(messages)
    expect = np.where(ttype == 1, 0, ids)                    # our placeholders are the pad id
    assert prompt.tokens == expect.tolist()
    mask = np.zeros(len(ids), dtype=bool)
    for im in prompt.images:
        mask[im.start:im.start + len(im.embeds)] = True
    assert (mask == (ttype == 1)).all()
    assert (ids[mask] == SOFT).all() and list(ids).count(BOI) == len(prompt.images) == list(ids).count(EOI)
    ours = mm.llm.logits(prompt, chunk)
    ref = hf_mm_logits(mm.hf, ids, inputs["pixel_values"], ttype)
    scale = np.abs(ref).max()
    err = np.abs(ours - ref).max()
    print(f"\n{label}: {len(ids)} tokens, {len(prompt.images)} image(s): logits max |diff| {err:.2e} "
          f"(scale {scale:.2f}, relative {err / scale:.1e})")
    assert err <= RTOL * scale
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    return ours, ref, inputs


# -- preprocessing and the tower ----------------------------------------------------------

@pytest.mark.parametrize("size,mode", [((173, 131), "RGB"), ((40, 300), "RGB"), ((128, 128), "RGB"),
                                       ((1000, 700), "RGB"), ((90, 60), "RGBA"), ((77, 77), "L"),
                                       ((64, 80), "P")])
def test_pixels_equal_transformers_processor(mm, size, mode):
    """Resize, rescale and normalize give transformers' pixel values exactly (up- and
    downscaling, alpha flattened onto white, grey and palette images)."""
    img = sample_image(size, seed=size[0], mode="RGBA" if mode == "RGBA" else "RGB")
    if mode in ("L", "P"):
        img = img.convert(mode)
    ours = mm.llm.vision.normalize(mm.llm.vision.resize(open_image(img)))
    ref = mm.pixels(img)[0]
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.array_equal(ours, ref)


def test_image_embeddings_match_transformers(mm):
    img = sample_image()
    ours = mm.llm.embed_image(img)
    ref = hf_image_features(mm.hf, mm.pixels(img))
    err, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    print(f"\nsoft tokens {ours.shape}: max |diff| {err:.2e} (scale {scale:.2f})")
    assert ours.shape == (256, 64) and ours.dtype == np.float32
    assert err <= EMB_RTOL * scale


def test_prompt_with_an_image_matches_transformers(mm):
    """The processor's input_ids, pixel_values and token_type_ids into transformers; our
    chat prompt for the same messages: same tokens, same logits at every position."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hi there"},
                                         {"type": "image", "image": sample_image()},
                                         {"type": "text", "text": "what is this?"}]}]
    ours, ref, inputs = compare_prompt(mm, msgs, "one image")
    # the test can fail: without bidirectional attention inside the image transformers
    # computes logits far outside the tolerance
    causal = hf_mm_logits(mm.hf, inputs["input_ids"][0], inputs["pixel_values"],
                          np.zeros_like(inputs["token_type_ids"][0]))
    assert np.abs(causal - ours).max() > 100 * RTOL * np.abs(ref).max()


def test_several_images_across_turns_and_chunks(mm):
    """Two images in one turn and one in a later turn, prefilled in chunks of 100 tokens
    (no image is split: chunks stretch or stop at image edges)."""
    a, b, c = sample_image(seed=1), sample_image((50, 90), seed=2), sample_image((200, 120), seed=3)
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "image", "image": a}, {"type": "image", "image": b},
                                         {"type": "text", "text": "compare them"}]},
            {"role": "assistant", "content": "the first is redder."},
            {"role": "user", "content": [{"type": "text", "text": "and this?"}, {"type": "image", "image": c}]}]
    compare_prompt(mm, msgs, "three images, chunks of 100", chunk=100)
    # the same prompt through the Jinja path (the official template from a file)
    jinja = mm.llm.chat_prompt(msgs, HF_TEMPLATE)
    assert jinja.tokens == mm.llm.chat_prompt(msgs).tokens
    assert [im.start for im in jinja.images] == [im.start for im in mm.llm.chat_prompt(msgs).images]


def test_later_turn_reuses_the_cache(mm, monkeypatch):
    """A second turn prefills only its new tokens, encodes no image again, and its
    logits equal a fresh run's (and transformers')."""
    llm = mm.llm
    img = sample_image(seed=5)
    turn1 = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "what?"}]}]
    llm.engine.reset()
    llm._images.clear()
    calls = []
    encode = llm.vision.encode
    monkeypatch.setattr(llm.vision, "encode", lambda px: calls.append(1) or encode(px))
    reply = llm.chat(turn1, max_tokens=6, temperature=0)
    n1 = len(llm.chat_prompt(turn1))
    turn2 = turn1 + [{"role": "assistant", "content": reply},
                     {"role": "user", "content": [{"type": "text", "text": "again"},
                                                  {"type": "image", "image": img}]}]
    prompt = llm.chat_prompt(turn2)
    cached = llm.engine.prefill(prompt, stats := runner.Result())
    assert stats.cached_tokens >= n1 - 1 and stats.prompt_tokens - stats.cached_tokens < len(prompt) - n1 + 8
    assert len(calls) == 1                                     # one encode for the image used twice
    llm.engine.reset()
    fresh = llm.engine.prefill(prompt)
    np.testing.assert_allclose(cached, fresh, rtol=0, atol=1e-5 * np.abs(fresh).max())
    ref = compare_prompt(mm, turn2, "second turn")[1][-1]
    np.testing.assert_allclose(cached, ref, rtol=0, atol=RTOL * np.abs(ref).max())


def test_prefill_never_resumes_inside_an_image(tmp_path):
    """A cache that ends in the middle of an image (a rewind) is cut back to the image's
    start: the result equals a fresh prefill. (A window of 512, so that the sliding
    layers still hold what precedes the image.)"""
    hf = build_mm_model(tcfg=text_config(vocab=300, d=64, d_ff=128, layers=7, heads=4, kv_heads=2,
                                         head_dim=32, window=512), seed=2)
    text, proj = write_mm_model(hf, tmp_path)
    llm = runner.load(text, mmproj=proj, n_ctx=2048)
    prompt = llm.chat_prompt([{"role": "user", "content": [{"type": "text", "text": "look"},
                                                           {"type": "image", "image": sample_image(seed=6)},
                                                           {"type": "text", "text": "ok"}]}])
    im = prompt.images[0]
    fresh = llm.engine.prefill(prompt)
    llm.engine.rewind(len(prompt) - (im.start + 100))          # keep 100 of the image's rows
    st = runner.Result()
    again = llm.engine.prefill(prompt, st)
    assert st.cached_tokens == im.start
    np.testing.assert_allclose(again, fresh, rtol=0, atol=1e-5 * np.abs(fresh).max())


def test_the_image_changes_the_logits(mm):
    llm = mm.llm
    logits = [llm.logits(llm.image_prompt(sample_image(seed=s), "a"))[-1] for s in (7, 8)]
    assert np.abs(logits[0] - logits[1]).max() > 1e-2 * np.abs(logits[0]).max()
    p = llm.image_prompt(sample_image(seed=7), "a")
    assert p.tokens[0] == llm.tokenizer.bos_id and p.tokens[1:3] == llm.tokenize("\n\n", add_bos=False)
    assert p.tokens[3] == BOI and p.tokens[4 + llm.image_tokens] == EOI and len(p.images) == 1


def test_sources_share_one_cache_entry(mm, tmp_path):
    """A path, bytes, a data URI and a PIL image of the same picture are one image."""
    llm = mm.llm
    img = sample_image(seed=9)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(buf.getvalue())
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    keys = {llm.image(src)[0] for src in (img, buf.getvalue(), str(path), path, uri)}
    assert len(keys) == 1
    emb = llm.embed_image(uri)
    assert np.array_equal(emb, llm.embed_image(img))
    emb[:] = 0                                                 # a copy: the cache is untouched
    assert np.abs(llm.embed_image(img)).max() > 0


# -- weights and files ------------------------------------------------------------------

TYPES = [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def test_every_weight_type_and_the_default_pool(tmp_path):
    """Every ggml type the loader knows spread over the tower's matrices (width 256 so
    the K-quants fit), on 64 px images of 16x16 patches pooled 4x4 to 16 tokens, the
    pool llama.cpp assumes when the file does not say."""
    hf = build_mm_model(vision_config(d=256, d_ff=512, layers=3, heads=4, image_size=64, patch_size=4),
                        tokens=16, seed=3)
    order = iter(TYPES * 10)
    chosen = {}

    def types(name, shape):
        chosen[name] = next(order)
        return chosen[name]
    proj = write_mmproj_gguf(hf, tmp_path / "q.gguf", types=types)
    g = runner.GGUFFile(proj)
    assert "clip.vision.projector.scale_factor" not in g.metadata
    assert {g.tensors[n].type.name for n in chosen if g.tensors[n].type.name != "F32"} >= {t.name for t in TYPES}
    from runner.vision import load_vision
    tower = load_vision(g)
    img = sample_image(seed=4)
    ip = Gemma3ImageProcessorPil(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    px = ip(img, return_tensors="np")["pixel_values"]
    ours = tower.encode(px[0])
    ref = hf_image_features(hf, px)
    err, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    print(f"\nquantized tower, 16 tokens: max |diff| {err:.2e} (scale {scale:.2f})")
    assert ours.shape == (16, 64) and tower.cfg.pool == 4
    assert err <= EMB_RTOL * scale


def test_remainder_patches_dropped_by_the_pool_and_old_fc_names(tmp_path):
    """14x14 patches pooled 4x4 give 3x3 tokens (the last two rows and columns unused,
    as AvgPool2d does); an mmproj with fc1/fc2 stored under each other's names loads the
    same tower."""
    hf = build_mm_model(vision_config(d=64, d_ff=96, layers=2, heads=2, image_size=56, patch_size=4),
                        tokens=9, seed=5)
    new = write_mmproj_gguf(hf, tmp_path / "new.gguf")
    old = write_mmproj_gguf(hf, tmp_path / "old.gguf", swap_ffn=True)
    assert runner.GGUFFile(old).tensors["v.blk.0.ffn_down.weight"].shape == (96, 64)
    from runner.vision import load_vision
    img = sample_image(seed=6)
    ip = Gemma3ImageProcessorPil(size={"height": 56, "width": 56}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    px = ip(img, return_tensors="np")["pixel_values"]
    ref = hf_image_features(hf, px)
    for path in (new, old):
        ours = load_vision(path).encode(px[0])
        assert ours.shape == (9, 64)
        assert np.abs(ours - ref).max() <= EMB_RTOL * np.abs(ref).max()
    # the work split across 1 or 3 threads (uneven shares of rows and heads): same result
    one, three = (load_vision(new, threads=n).encode(px[0]) for n in (1, 3))
    np.testing.assert_allclose(three, one, rtol=0, atol=1e-6 * np.abs(one).max())


def test_without_mmproj_images_name_the_option(mm):
    llm = runner.load(mm.text, n_ctx=512)
    msgs = [{"role": "user", "content": [{"type": "image", "image": sample_image()}, {"type": "text", "text": "hi"}]}]
    for call in (lambda: llm.chat_prompt(msgs), lambda: llm.embed_image(sample_image())):
        with pytest.raises(ValueError, match="--mmproj"):
            call()
    assert not llm.has_vision and llm.image_tokens == 0
    assert llm.chat_prompt([{"role": "user", "content": "hi"}]).images == []


def test_wrong_mmproj_files(mm, tmp_path):
    other = build_mm_model(tcfg=text_config(vocab=300, d=32, d_ff=64, layers=2, heads=2, kv_heads=1, head_dim=16),
                           seed=7)
    proj = write_mmproj_gguf(other, tmp_path / "other.gguf")
    with pytest.raises(ValueError, match="width 32.*width is 64"):
        runner.load(mm.text, mmproj=proj)
    with pytest.raises(GGUFError, match="expected 'clip'"):
        runner.load(mm.text, mmproj=mm.text)
    broken = write_mmproj_gguf(build_mm_model(seed=8), tmp_path / "broken.gguf", skip=("v.blk.1.attn_k.weight",))
    with pytest.raises(GGUFError, match="v.blk.1.attn_k.weight is missing"):
        runner.load(mm.text, mmproj=broken)


# -- image files and errors ---------------------------------------------------------------

def encoded(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_formats(fmt):
    img = sample_image((60, 40), seed=1)
    got = open_image(encoded(img, fmt))
    assert got.mode == "RGB" and got.size == (60, 40)
    if fmt in ("PNG",):
        assert np.array_equal(np.asarray(got), np.asarray(img))


def test_gif_first_frame_exif_orientation_and_alpha():
    red, blue = Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (20, 10), (0, 0, 255))
    gif = encoded(red, "GIF", save_all=True, append_images=[blue])
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    assert np.asarray(open_image(gif))[5, 5].tolist() == [255, 0, 0]

    exif = Image.Exif()
    exif[0x0112] = 6                                           # orientation: rotate 90 degrees clockwise
    jpg = encoded(sample_image((60, 40)), "JPEG", exif=exif)
    assert open_image(jpg).size == (40, 60)

    clear = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    assert np.asarray(open_image(encoded(clear, "PNG")))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(open_image(half))[0, 0].tolist() == [127, 127, 127]
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 200, 0, 0])
    pal.info["transparency"] = 0
    assert np.asarray(open_image(encoded(pal, "PNG", transparency=0)))[0, 0].tolist() == [255, 255, 255]


def zero_size_png() -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_bad_images_give_one_line_errors(tmp_path, monkeypatch):
    png = encoded(sample_image((64, 64)), "PNG")
    jpg = encoded(sample_image((64, 64)), "JPEG")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_BYTES + 1))
    cases = {
        "not an image": b"hello, I am text",
        "empty": b"",
        "truncated": png[:len(png) // 2],
        "cannot decode": jpg[:len(jpg) // 2],
        r"empty \(0x0\)": zero_size_png(),
        r"empty \(0x3\)": Image.new("RGB", (0, 3)),
        "20,971,521 bytes is over the 20 MB": b"\0" * (MAX_BYTES + 1),
        "big.png: 20,971,521 bytes is over": str(big),
        "URLs are not fetched": "https://example.com/cat.png",
        "not fetched": "http://example.com/cat.png",
        "cannot read": str(tmp_path / "missing.png"),
        "type 'text/plain'": "data:text/plain;base64,aGVsbG8=",
        "base64 payload is not valid": "data:image/png;base64,@@@",
        "only base64": "data:image/png,rawbytes",
        "is over the 20 MB": "data:image/png;base64," + "A" * (MAX_BYTES * 4 // 3 + 100),
        "expected an image": 42,
    }
    for expect, source in cases.items():
        with pytest.raises(ImageError, match=expect) as e:
            open_image(source)
        assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    # what a server accepts from clients: data URIs only
    check_remote("data:image/png;base64,aGVsbG8=")
    for source, expect in (("/etc/passwd", "data:image"), ("https://x/y.png", "not fetched"), (b"png", "data:image")):
        with pytest.raises(ImageError, match=expect):
            check_remote(source)
    # decompression bombs: an error (not Pillow's warning) above the pixel limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)
    for data in (png, encoded(sample_image((100, 100)), "PNG")):       # just over, and over twice
        with pytest.raises(ImageError, match="decompression bomb"):
            open_image(data)


def test_a_bad_image_leaves_the_model_usable(mm):
    llm = mm.llm
    llm.engine.reset()
    with pytest.raises(ImageError, match="not an image"):
        llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
                                               {"type": "text", "text": "hi"}]}], max_tokens=2)
    ok = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
           + base64.b64encode(encoded(sample_image(seed=11), "PNG")).decode()}}, {"type": "text", "text": "hi"}]}]
    assert isinstance(llm.chat(ok, max_tokens=3, temperature=0), str)
    assert isinstance(llm.chat_prompt(ok), Prompt)
