"""The real Gemma 3 270M against transformers loading the same GGUF in float32."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.chat import render_text
from runner.engine import Prompt, SamplingParams

sys.path.insert(0, str(Path(__file__).parent / "data"))
from tokenizer_corpus import mixed_text  # noqa: E402

# Max |logit difference| allowed, over every position of every prompt. Both sides run
# float32 with different summation orders (BLAS blocking, fused vs separate ops); over
# 18 layers that noise measured here is ~1e-4 at logit magnitudes of ~20-40 (relative
# ~3e-6). 2e-3 leaves a 20x margin while any real error (a wrong RoPE base, mask, norm
# or scale) moves logits by 0.1 or more.
ATOL = 2e-3

PARAGRAPH = ("The river rose slowly through the night, and by morning the lower fields were under "
             "water. Farmers moved their animals to the hills, while the children watched from the "
             "bridge as boats drifted past the church. ")

PROMPTS = {
    "short": "The capital of France is",
    "story": "Once upon a time, in a small village by the sea,",
    "code": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "french": "La capitale de l'Italie est",
    "list": "Shopping list:\n1. eggs\n2. milk\n3.",
    "chat": render_text([{"role": "user", "content": "What is the tallest mountain on Earth?"}]),
    "chat_system": render_text([{"role": "system", "content": "Answer in one word."},
                                {"role": "user", "content": "What color is the sky?"},
                                {"role": "assistant", "content": "Blue."},
                                {"role": "user", "content": "And grass?"}]),
    "long_600": PARAGRAPH * 16 + "When the water finally went down,",
    "long_mixed_700": mixed_text(2600, seed=11),
}


@pytest.fixture(scope="module")
def hf(model_path):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name,
                                                 dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = None          # generate exactly n tokens, like ours
    return model


def ids_of(llm, name):
    text = PROMPTS[name]
    return llm.tokenize(text, add_bos=not text.startswith("<bos>"))


@pytest.mark.parametrize("name", PROMPTS)
def test_logits_match_transformers(llm, hf, name):
    ids = ids_of(llm, name)
    if name.startswith("long"):
        assert len(ids) > 600, "long prompts must cross the 512-token sliding window"
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    ours = llm.logits(ids)
    err = np.abs(ours - ref).max()
    print(f"\n{name}: {len(ids)} tokens, max |diff| {err:.2e}, logit scale {np.abs(ref).max():.1f}")
    assert err <= ATOL
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() == 1.0


@pytest.mark.parametrize("name", PROMPTS)
def test_greedy_32_tokens_match_transformers(llm, hf, name):
    ids = ids_of(llm, name)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    llm.engine.reset()
    ours = [t.id for t in llm.engine.generate(Prompt(ids), SamplingParams(temperature=0), max_tokens=32,
                                               ignore_eos=True)]
    assert ours == ref, f"ours:   {llm.detokenize(ours)!r}\nthem:   {llm.detokenize(ref)!r}"
