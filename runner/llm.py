"""The public object: a loaded model with its tokenizer and engine.

    llm = runner.load("models/gemma-3-270m-q4_k_m.gguf")
    llm.complete("The capital of France is", max_tokens=16, temperature=0)
    for piece in llm.complete("Once upon a time", stream=True): print(piece, end="")
    llm.chat([{"role": "user", "content": "Hi!"}])

With a vision projector (`runner.load(model, mmproj="mmproj.gguf")`) messages may hold
images (`{"type": "image", "image": "cat.jpg"}` or OpenAI `image_url` parts):

    llm.chat([{"role": "user", "content": [{"type": "image", "image": "cat.jpg"},
                                           {"type": "text", "text": "What is this?"}]}])
    llm.embed_image("cat.jpg")     # [256, d] float32: the soft tokens the model reads
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any, Iterator

import numpy as np

from . import model as M
from .chat import ChatFormat, ImageRef, render_prefilled, resolve_template
from .engine import Engine, EngineConfig, check_memory
from .generation import ImageSlot, Prompt, Result
from .gguf import GGUFFile
from .sampling import OPTIONS, SamplingParams
from .structured import Structured
from .structured.tools import ToolSpec
from .threads import set_blas_threads
from .tokenizer import Tokenizer, load_tokenizer

IMAGE_CACHE = 32           # encoded images kept per model (by content hash)


class LLM:
    def __init__(self, gguf: GGUFFile, config: EngineConfig = EngineConfig(), threads: int | None = None,
                 quantized: bool | None = None, mmproj: str | os.PathLike | GGUFFile | None = None,
                 chat_format: ChatFormat | None = None):
        """`chat_format`: from resolve_template; default: the file's template, or none (a
        base model)."""
        t0 = time.perf_counter()
        set_blas_threads(threads)
        self.gguf = gguf
        self.cfg = M.Config.from_gguf(gguf)
        self.tokenizer: Tokenizer = load_tokenizer(gguf)
        check_memory(self.cfg, config.n_ctx if config.n_ctx > 0 else self.cfg.n_ctx_train)   # before the weights
        self.weights = M.load_weights(gguf, self.cfg, quantized=quantized, threads=threads)
        self.engine = Engine(self.weights, self.cfg, self.tokenizer, config)
        self.vision = None
        self._structured: Structured | None = None
        self._structured_lock = threading.Lock()
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()   # content hash -> soft tokens
        if mmproj is not None:
            self.vision = self._load_vision(mmproj, threads)
        self.has_chat_template = bool(gguf.get("tokenizer.chat_template"))
        self.chat_format = chat_format or resolve_template(None, gguf.get("tokenizer.chat_template"))
        self.load_s = time.perf_counter() - t0

    # -- facts -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.cfg.name or os.path.basename(self.gguf.path)

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.cfg.n_vocab

    @property
    def stats(self) -> Result:
        return self.engine.last

    @property
    def chat_template(self) -> str:
        """What chat_prompt formats with: the chat format's template, or the built-in Gemma
        format for a model that has none (a base model: the REPL completes raw text)."""
        return self.chat_format.template or "gemma"

    # -- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def logits(self, ids, chunk: int | None = None) -> np.ndarray:
        """[len(ids), n_vocab] float32: the next-token logits after each prefix, in a
        fresh context (the engine's cache is left as it was), `chunk` rows at a time
        (default n_batch). `ids` may be a Prompt with images."""
        if not isinstance(ids, Prompt):
            arr = np.asarray(ids)
            if arr.ndim != 1 or arr.size == 0:
                raise ValueError("logits: expected a non-empty list of token ids")
            ids = Prompt([int(i) for i in arr])
        prompt = ids
        out = np.empty((len(prompt), self.cfg.n_vocab), dtype=np.float32)
        for start, rows in self.engine.prompt_logits(prompt, chunk):
            out[start:start + len(rows)] = rows
        return out

    def prompt_logprobs(self, ids, top_n: int = 0) -> list:
        """log p of each prompt token given those before it (None for the first), with
        the top_n alternatives: [(logprob, [(id, logprob)])]."""
        prompt = ids if isinstance(ids, Prompt) else self.prompt_of(ids)
        return self.engine.prompt_logprobs(prompt, top_n)

    def embed(self, texts: str | list[str] | list[int] | list[list[int]], pooling: str | None = None,
              normalize: bool = True) -> np.ndarray:
        """Embeddings as llama.cpp computes them (runner/embedding.py): one text (or list
        of token ids) -> [d], a list of them -> [n, d], float32, L2-normalized unless
        normalize=False. `pooling`: mean, last, cls, or none (one text's [n_tokens, d]);
        default: the file's declared pooling, else mean. Texts get BOS; computed in fresh
        contexts, so the engine's cache is left as it was."""
        from .embedding import Pooling, default_pooling, embed_packs, input_items, token_lists
        from .embedding import normalize as norm_rows
        how = default_pooling(self.gguf) if pooling is None else Pooling(pooling)
        items, single = input_items(texts)
        if how is Pooling.NONE and not single:
            raise ValueError("pooling 'none' gives a matrix per input: embed one text at a time")
        inputs = token_lists(items, lambda t: self.tokenize(t, add_bos=True), self.n_vocab, self.n_ctx)
        p = 2 if normalize else -1
        out = [v for pack in embed_packs(self.weights, self.cfg, inputs, how, self.engine.config.n_batch, p)
               for _, v in pack]
        if how is Pooling.NONE:
            return norm_rows(out[0], p)
        return out[0] if single else np.stack(out)

    # -- generation ------------------------------------------------------------------------

    def _params(self, kw: dict[str, Any]) -> SamplingParams:
        unknown = set(kw) - set(OPTIONS)
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        return SamplingParams(**kw)

    def structured(self) -> Structured:
        """Structured output (JSON Schema constraints) over this model's vocabulary, built on
        first use (about a second)."""
        with self._structured_lock:
            if self._structured is None:
                self._structured = Structured(self.tokenizer)
            return self._structured

    def _run(self, prompt: Prompt, stream: bool, max_tokens, stop, ignore_eos, kw, json_schema=None):
        constraint = self.structured().constraint(json_schema)() if json_schema is not None else None
        gen = self.engine.generate(prompt, self._params(kw), max_tokens=max_tokens,
                                   stop=list(stop or ()), ignore_eos=ignore_eos, constraint=constraint)
        if stream:
            return (t.text for t in gen if t.text)
        return "".join(t.text for t in gen)

    def prompt_of(self, prompt: str | list[int] | list[str | ImageRef]) -> Prompt:
        """A Prompt from text (BOS added), token ids (as they are), or a list of text
        pieces and ImageRefs (BOS added)."""
        if isinstance(prompt, str):
            return Prompt(self.tokenize(prompt, add_bos=True))
        if any(isinstance(p, (str, ImageRef)) for p in prompt):
            return self.build_prompt(prompt, add_bos=True)
        return Prompt([int(t) for t in prompt])

    def complete(self, prompt: str | list[int], max_tokens: int | None = 128, stop=(), ignore_eos: bool = False,
                 stream: bool = False, json_schema: Any = None, **sampling) -> str | Iterator[str]:
        """Continue `prompt` (text, to which BOS is added, or token ids as they are);
        with `json_schema` the output is a JSON value it accepts (SchemaError if the
        schema is not supported)."""
        return self._run(self.prompt_of(prompt), stream, max_tokens, stop, ignore_eos, sampling, json_schema)

    def chat_prompt(self, messages: list[dict], template: str | None = None, tools: ToolSpec | None = None) -> Prompt:
        """The prompt for `messages` under `template` (default: chat_template), with
        exactly one BOS (added if the template does not write it); `tools` (from
        structured.tools.parse_tools) are described in it. A final assistant message is
        continued (chat.render_prefilled)."""
        pieces = render_prefilled(messages, template or self.chat_template, tools=tools)
        bos = self.tokenizer.token_text(self.tokenizer.bos_id)
        has_bos = bool(pieces) and isinstance(pieces[0], str) and pieces[0].startswith(bos)
        return self.build_prompt(pieces, add_bos=not has_bos)

    def chat(self, messages: list[dict], max_tokens: int | None = 512, stop=(), stream: bool = False,
             json_schema: Any = None, **sampling) -> str | Iterator[str]:
        """Reply to OpenAI-style messages with the model's chat template (Gemma's built-in
        format for a file without one); `json_schema` as in `complete`."""
        return self._run(self.chat_prompt(messages), stream, max_tokens, stop, False, sampling, json_schema)

    # -- images ----------------------------------------------------------------------------

    def _load_vision(self, mmproj, threads: int | None):
        from .vision import load_vision
        tower = load_vision(mmproj, threads)
        if tower.cfg.proj_dim != self.cfg.d or tower.weights.input_projection.shape[1] != self.cfg.d:
            raise ValueError(f"--mmproj {tower.gguf.path}: projects images to width "
                             f"{tower.weights.input_projection.shape[1]}, but the model's width is "
                             f"{self.cfg.d}: this projector belongs to another model")
        for piece in ("<start_of_image>", "<end_of_image>"):
            if self.tokenizer.token_id(piece) is None:
                raise ValueError(f"--mmproj: the model's vocabulary has no {piece} token")
        return tower

    @property
    def has_vision(self) -> bool:
        return self.vision is not None

    @property
    def image_tokens(self) -> int:
        """Soft tokens per image (256 for Gemma 3); 0 without a vision projector."""
        return self.vision.cfg.n_tokens if self.vision else 0

    def _need_vision(self):
        if self.vision is None:
            raise ValueError("this model was loaded without a vision projector: to use images, "
                             "pass --mmproj FILE (the model's mmproj GGUF)")
        return self.vision

    def image(self, source) -> tuple[int, np.ndarray]:
        """(content hash, soft tokens [n, d] read-only) of an image: a path, bytes, a data
        URI or a PIL image. Encoded once: equal images come from the cache.
        Raises ImageError (a ValueError) for an image that cannot be used."""
        from .images import open_image
        tower = self._need_vision()
        pixels = tower.resize(open_image(source))                 # [S, S, 3] uint8
        key = tower.key(pixels)
        emb = self._images.get(key)
        if emb is None:
            emb = tower.encode(tower.normalize(pixels))
            emb.flags.writeable = False
            self._images[key] = emb
            while len(self._images) > IMAGE_CACHE:
                self._images.popitem(last=False)
        self._images.move_to_end(key)
        return key, emb

    def embed_image(self, image) -> np.ndarray:
        """[n_tokens, d] float32 (n_tokens = 256 for Gemma 3): the projected soft tokens of
        `image` (a path, bytes, a data URI or a PIL image) exactly as they enter the
        text model. Raises ImageError for an unusable image and ValueError without an
        mmproj."""
        return self.image(image)[1].copy()

    def build_prompt(self, pieces: list[str | ImageRef], add_bos: bool = False) -> Prompt:
        """A Prompt from text pieces and images, in order. Each image becomes, as in
        transformers' Gemma3Processor, `\\n\\n<start_of_image>` + n soft-token slots +
        `<end_of_image>\\n\\n`, the newlines tokenized together with the text around
        them. Text may hold control tokens (`<start_of_turn>`); BOS is added if asked."""
        ids: list[int] = [self.tokenizer.bos_id] if add_bos else []
        slots: list[ImageSlot] = []
        text = ""
        for p in pieces:
            if isinstance(p, str):
                text += p
                continue
            key, emb = self.image(p.source if isinstance(p, ImageRef) else p)
            ids += self.tokenizer.encode(text + "\n\n", add_bos=False, special=True)
            ids.append(self.tokenizer.token_id("<start_of_image>"))
            slots.append(ImageSlot(len(ids), emb, key))
            ids += [self.tokenizer.pad_id] * len(emb)           # placeholders: the embeddings replace them
            ids.append(self.tokenizer.token_id("<end_of_image>"))
            text = "\n\n"
        ids += self.tokenizer.encode(text, add_bos=False, special=True)
        return Prompt(ids, slots)

    def image_prompt(self, image, text: str = "", add_bos: bool = True) -> Prompt:
        """A raw-completion Prompt: the image, then `text` (for base models; chat models
        read images through `chat` / `chat_prompt` messages)."""
        return self.build_prompt([ImageRef(image), text], add_bos=add_bos)


def load(model_path: str | os.PathLike, mmproj: str | os.PathLike | GGUFFile | None = None, n_ctx: int = 8192,
         threads: int | None = None, quantized: bool | None = None, offset: int = 0,
         length: int | None = None, **config) -> LLM:
    """Load a Gemma 3 GGUF (from a file, or a region of one) ready to generate. `config`:
    the rest of EngineConfig (n_batch, draft_max: greedy decoding checks up to this many
    guessed tokens at once, 0 = off; context_shift, n_keep)."""
    return LLM(GGUFFile(model_path, offset, length), EngineConfig(n_ctx=n_ctx, **config), threads=threads,
               quantized=quantized, mmproj=mmproj)
