"""Our next-token predictions against llama.cpp's on the same GGUF files: the real 270M
(Q4_K_M) and copies of it requantized to Q4_0, Q6_K and Q8_0 by llama.cpp's own quantizer.

llama.cpp is the reference run by tests/llamacpp_logits.py in its own venv (skipped where
it is not installed). The two engines do not compute the same numbers: llama.cpp keeps
its KV cache in F16, sums in its own order, and rounds the activations to 8 bits before
each quantized product (per 32 values against 32-value blocks, per 256 against
K-quants). Ours rounds them to 8 bits per 32 values, as llama.cpp's Q8_0 does, in every
product (runner/kernels/q8.py, gemm8.py for prompts). So the exact reference is
transformers (float32, loading the same file), and llama.cpp is held to what the exact
reference achieves against it. Measured on this text (317 tokens), agreement with
llama.cpp: 96.5% (Q4_K_M), 96.2% (Q4_0), 95.9% (Q6_K), 97.5% (Q8_0); with float32
activations (the exact mode, = transformers) 96.5%, 96.8%, 95.9%, 97.8%: llama.cpp agrees
with an exact engine no more often. Every disagreement is a near-tie (our top-2 margin
0.00-0.45; where our argmax differs from transformers', its margin was at most 0.25), and
the perplexities differ by -0.6%, +0.7%, -1.2%, +0.5%. Rounding K and V to halves as
llama.cpp's F16 cache does moved the four agreements by -1.9 to +0.6 points (noise: one
token is 0.3 points), not towards the bar. Issue 12 asked for >= 97.5% and 1%; llama.cpp's
own rounding is not reached by an engine that computes exactly, nor by one that rounds
as it does (its F16 cache and order remain), so the bars are: the argmax equals
transformers' wherever its top-2 margin exceeds 0.5 (test_model_real's bar for 8-bit
activations), agreement with llama.cpp >= 95%, perplexity within 1.5% of llama.cpp's.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runner

sys.path.insert(0, str(Path(__file__).parent))
from test_embeddings_real import REF_PYTHON, needs_llama_cpp  # noqa: E402

TESTS = Path(__file__).resolve().parent
# Every product rounds the activations to 8 bits: the bar on transformers' top-2 margin
# is test_model_real's.
INT8_MARGIN = 0.5
# Natural text of several kinds (perplexity over random characters measures near-ties):
# prose, a how-to, an encyclopedic paragraph, code, dialogue.
TEXT = """The river rose slowly through the night, and by morning the lower fields were under water. \
Farmers moved their animals to the hills, while the children watched from the bridge as boats drifted \
past the church. Nobody in the village remembered a flood like it, though the old records spoke of one \
in the year the mill burned down.

To make bread at home, mix five hundred grams of flour with ten grams of salt and seven grams of dried \
yeast. Add three hundred and fifty millilitres of warm water and knead the dough for ten minutes, until \
it is smooth and elastic. Leave it to rise in a warm place for an hour, then shape it into a loaf and \
bake it at two hundred and twenty degrees for about thirty minutes.

The Pacific Ocean is the largest and deepest of the world's oceans. It extends from the Arctic in the \
north to the Southern Ocean in the south, and it covers about one third of the surface of the Earth. \
The ocean was named by the Portuguese explorer Ferdinand Magellan, who found its waters calm.

def average(numbers):
    \"\"\"Return the arithmetic mean of a non-empty list of numbers.\"\"\"
    if not numbers:
        raise ValueError("average of an empty list")
    return sum(numbers) / len(numbers)

"Are you coming to the station with us?" asked Anna.
"I cannot," said her brother. "The train leaves at six, and I have to finish my work before the shop \
closes. Tell our mother that I will write to her on Sunday."
"""


def ref(*args: str, stdin: str | None = None) -> str:
    r = subprocess.run([str(REF_PYTHON), str(TESTS / "llamacpp_logits.py"), *args], input=stdin,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def copies(model_path, tmp_path_factory):
    """name -> GGUF path: the file itself and llama.cpp's requantized copies."""
    out = {"Q4_K_M": model_path}
    d = tmp_path_factory.mktemp("requant")
    for kind in ("Q4_0", "Q6_K", "Q8_0"):
        out[kind] = d / f"{kind}.gguf"
        ref("quantize", str(model_path), str(out[kind]), kind)
    return out


def ours(path: Path, ids: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(argmax, log p of the next token, top-1 minus top-2 logit) at each position."""
    llm = runner.load(path, n_ctx=len(ids) + 8)
    logits = llm.logits(ids).astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logz = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
    nxt = np.array(ids[1:])
    top2 = np.sort(logits, -1)[:, -2:]
    return logits.argmax(-1), logits[np.arange(len(nxt)), nxt] - logz[:-1], top2[:, 1] - top2[:, 0]


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["Q4_K_M", "Q4_0", "Q6_K", "Q8_0"])
def test_top1_and_perplexity_match_llama_cpp(copies, kind):
    path = copies[kind]
    llm = runner.load(path, n_ctx=64)
    ids = llm.tokenize(TEXT)
    assert len(ids) > 300
    theirs = json.loads(ref("predict", str(path), stdin=json.dumps(ids)))
    argmax, logprob, margin = ours(path, ids)
    same = argmax == np.array(theirs["argmax"])
    agree = float(np.mean(same))
    ppl_ours, ppl_theirs = math.exp(-logprob.mean()), math.exp(-np.mean(theirs["logprob"]))
    print(f"\n{kind}: top-1 agreement {agree:.4f}, perplexity ours {ppl_ours:.4f} llama.cpp {ppl_theirs:.4f} "
          f"({ppl_ours / ppl_theirs - 1:+.3%}); our top-2 margins where they differ: "
          f"{np.round(np.sort(margin[~same]), 2).tolist()}")
    exact = exact_argmax(path, ids)
    flipped = argmax != exact[0]
    print(f"transformers' top-2 margins where our argmax differs from its: {np.round(np.sort(exact[1][flipped]), 3).tolist()}")
    decided = exact[1] > INT8_MARGIN
    assert np.array_equal(argmax[decided], exact[0][decided])
    assert agree >= 0.95
    assert abs(ppl_ours / ppl_theirs - 1) < 0.015


def exact_argmax(path: Path, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """transformers' (float32, same file) argmax and top-2 margin at each position."""
    import torch
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].double().numpy()
    top2 = np.sort(logits, -1)[:, -2:]
    return logits.argmax(-1), top2[:, 1] - top2[:, 0]
