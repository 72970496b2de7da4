"""--cli: complete one prompt, print it, exit (llamafile's --cli, for scripts).

    gemma-runner --cli -p 'The sky is' -n 32 --temp 0
    echo 'Once upon a time' | gemma-runner --cli -n 64 --no-display-prompt

Standard output gets the prompt (unless --no-display-prompt) and then the completion as
it is generated, and nothing else; the timings and any log go to standard error (none
with --log-disable). Errors: one line on standard error and a non-zero status (2 for a
usage mistake).

The prompt is completed as raw text, as llamafile --cli does, whatever the model (a chat
model included): the output is `llm.complete(prompt)` for the same settings. Given
--chat-template, --chat-template-file or --image, the prompt is instead sent as one user
message in that chat format, and the output is the model's reply.
"""
from __future__ import annotations

import os
import sys

from ..args import UserError, die, read_prompt, sampling_from_args, stop_strings
from ..engine import ContextError, Prompt
from ..generation import ModelError


def build_prompt(llm, args, text: str) -> tuple[Prompt, str]:
    """The model's input for `text` and what to show of it: raw text, or one user message
    in the chat format when --chat-template or --image asks for one."""
    if not (args.chat_template or args.chat_template_file or args.image):
        return llm.prompt_of(text), text
    content = text
    if args.image:
        content = [{"type": "image", "image": path} for path in args.image] + [{"type": "text", "text": text}]
    try:
        return llm.chat_prompt([{"role": "user", "content": content}]), text + "\n"
    except ValueError as e:                       # a template error, or images this model cannot read
        raise UserError(str(e)) from None


class _Out:
    """Standard output as UTF-8 bytes (whatever the locale), flushed piece by piece."""

    def __init__(self):
        self.buf = sys.stdout.buffer
        self.last = "\n"

    def write(self, text: str) -> None:
        if text:
            self.buf.write(text.encode("utf-8", "replace"))
            self.buf.flush()
            self.last = text[-1]


def run(llm, args) -> int:
    def log(msg: str) -> None:
        if not args.log_disable:
            print(msg, file=sys.stderr, flush=True)

    try:
        text = read_prompt(args, stdin=True)
        if text is None or (text == "" and args.prompt is None and args.file is None):
            raise UserError("no prompt: give -p TEXT or -f FILE, or pipe it on standard input", 2)
        prompt, shown = build_prompt(llm, args, text)
    except UserError as e:
        return die(str(e), e.status)

    params = sampling_from_args(args)
    n = args.n_predict
    if args.verbose:
        log(f"prompt: {len(prompt)} tokens; sampling: {params}")
    out = _Out()
    try:
        tokens = iter(())
        if n != 0:                                 # -n 0: show the prompt, generate nothing
            gen = llm.engine.generate(prompt, params, max_tokens=None if n < 0 else n,
                                      stop=stop_strings(args), ignore_eos=args.ignore_eos)
            first = next(gen, None)                # the prefill: a prompt too long fails here
            tokens = _chain(first, gen)
        if not args.no_display_prompt:
            out.write(shown)
        for tok in tokens:
            out.write(tok.text)
    except (ContextError, ModelError) as e:      # a prompt too long; a model computing NaN
        return die(str(e))
    except KeyboardInterrupt:
        if out.last != "\n":
            out.write("\n")
        log("interrupted")
        return 130
    except BrokenPipeError:                        # the reader stopped (| head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if sys.stdout.isatty() and out.last != "\n":
        out.write("\n")                            # the shell prompt on a line of its own
    if n != 0:
        s = llm.stats
        log(f"prompt {s.prompt_tokens} tokens ({s.cached_tokens} cached), {s.prefill_s:.2f} s, "
            f"{s.prefill_tok_s:.1f} tok/s | generated {s.generated_tokens} tokens, {s.decode_s:.2f} s, "
            f"{s.decode_tok_s:.1f} tok/s | ended by {s.stop.words}"
            + (f" ({s.shifts} context shift{'s' * (s.shifts > 1)})" if s.shifts else ""))
    return 0


def _chain(first, rest):
    if first is not None:
        yield first
        yield from rest
