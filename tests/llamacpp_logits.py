"""llama.cpp's next-token predictions over a text, and its quantizer: the references of
tests/test_fidelity_llamacpp.py. Run with the python of the llama-cpp-python reference
venv (../shared/tools/llamacpp-ref, default ~/.cache/llamacpp-ref), not the project's:

    python tests/llamacpp_logits.py predict MODEL.gguf < ids.json
        {"argmax": [per position], "logprob": [log p(ids[i+1]) after ids[:i+1]]}
    python tests/llamacpp_logits.py quantize IN.gguf OUT.gguf Q4_0|Q6_K|Q8_0

predict evaluates the ids in one batch with every position's logits kept (F16 KV cache,
llama-server's default); quantize is llama.cpp's quantizer (llama-quantize), allowed to
requantize an already quantized file.
"""
import ctypes
import json
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama

FTYPES = {"Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
          "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}


def predict(path: str) -> None:
    ids = json.load(sys.stdin)
    llm = Llama(model_path=path, logits_all=True, n_ctx=len(ids) + 8, n_batch=len(ids), n_ubatch=len(ids),
                n_threads=2, n_threads_batch=2, verbose=False)
    llm.eval(ids)
    scores = np.asarray(llm.scores[:len(ids)], dtype=np.float64)          # [T, n_vocab]
    top = scores.max(-1, keepdims=True)
    logz = top[:, 0] + np.log(np.exp(scores - top).sum(-1))
    nxt = np.array(ids[1:])
    json.dump({"argmax": scores.argmax(-1).tolist(),
               "logprob": (scores[np.arange(len(nxt)), nxt] - logz[:-1]).tolist()}, sys.stdout)


def quantize(src: str, dst: str, kind: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")


if __name__ == "__main__":
    if sys.argv[1] == "predict":
        predict(sys.argv[2])
    elif sys.argv[1] == "quantize":
        quantize(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
