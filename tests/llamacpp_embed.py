"""llama.cpp's embeddings of some texts, as the reference for tests/test_embeddings_real.py.

Run with the python of the llama-cpp-python reference venv (../shared/tools/llamacpp-ref,
default ~/.cache/llamacpp-ref), not the project's:

    ~/.cache/llamacpp-ref/bin/python tests/llamacpp_embed.py MODEL.gguf POOLING < texts.json

prints {"tokens": [[ids] per text], "embeddings": [vector, or [per-token vectors]]} with
llama.cpp's raw pooled values (not normalized), one text per llama_decode, its context
settings left at llama-server's defaults (F16 KV cache).
"""
import json
import sys

import llama_cpp
from llama_cpp import Llama

POOLING = {"none": llama_cpp.LLAMA_POOLING_TYPE_NONE, "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
           "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS, "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}


def main() -> None:
    path, pooling = sys.argv[1], sys.argv[2]
    texts = json.load(sys.stdin)
    llm = Llama(model_path=path, embedding=True, pooling_type=POOLING[pooling], n_ctx=2048, n_batch=2048,
                n_ubatch=2048, n_threads=2, n_threads_batch=2, verbose=False)
    out = {"tokens": [llm.tokenize(t.encode()) for t in texts],
           "embeddings": [llm.embed(t, normalize=False) for t in texts]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
