"""The server's compute side: one thread runs every reply in progress through
`engine.step`, so that each decode step reads the weights once for all of them
(continuous batching).

Each turn of the loop takes in new jobs, then runs one step over the generations in
progress: the oldest prompt still being read reads one chunk (PREFILL_CHUNK tokens, the
granularity of progress and of a cancel), every reply holding fresh logits chooses its
next token, and the chosen tokens are evaluated together; with no other work waiting,
greedy replies draft (engine.py). A client that leaves sets its job's cancel flag, which
is checked after every event, so a reply stops within a token.

Work that needs no slot (embeddings: scratch caches, read-only weights) comes as a
`Chore`, a generator advanced one piece (one pass over the weights) per turn between
decoding steps, so that it shares the cores with the replies in progress instead of
competing with them from another thread.

Engines are touched by this thread only, so no locks guard them. Events go to each
job's `emit` (which hands them to the event loop); `finish` reports its end.
"""
from __future__ import annotations

import queue
import threading
import time
import traceback
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..engine import step
from ..generation import Generation, Progress

PREFILL_CHUNK = 256          # prompt tokens per step: the granularity of progress and cancel


@dataclass(eq=False)
class Running:
    gen: Generation
    emit: Callable[[tuple[str, object]], None]       # an event for the client
    cancel: threading.Event                           # set when the client leaves
    finish: Callable[[Running], None]                 # the job ended (called on this thread)
    progress: bool = False                            # report prompt progress events
    prompt_logprobs: int | None = None                # score the prompt first (echo + logprobs)
    t0: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class Chore:
    work: Iterator[Any]                               # each next() does one piece; StopIteration.value: the result
    done: Callable[[Any, Exception | None], None]     # (result, error) on this thread; (None, None): dropped
    cancel: threading.Event                           # set when the client leaves


class Scheduler:
    def __init__(self, decoded: Callable[[int], None] = lambda busy: None):
        self.decoded = decoded                            # called after each pass over the weights (metrics)
        self.inbox: queue.Queue[Running | Chore] = queue.Queue()
        self.stopping = threading.Event()
        self.active: list[Running] = []
        self.chores: list[Chore] = []
        self.thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self.thread.start()

    def submit(self, r: Running | Chore) -> None:
        self.inbox.put(r)

    def shutdown(self) -> None:
        self.stopping.set()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                idle = not self.active and not self.chores
                self._admit(self.inbox.get(timeout=0.2) if idle else self.inbox.get_nowait())
                while True:
                    self._admit(self.inbox.get_nowait())
            except queue.Empty:
                pass
            if self.active:
                self._turn()
            if self.chores:
                self._chore()
        for r in self.active:                             # shutting down: stop them all
            r.gen.cancel()
            self._end(r)
        for c in self.chores:
            c.done(None, None)

    def _admit(self, r: Running | Chore) -> None:
        if isinstance(r, Chore):
            self.chores.append(r)
            return
        if r.prompt_logprobs is not None:
            def check(done: int, total: int) -> None:
                if r.cancel.is_set():
                    raise _Cancelled
            try:
                r.emit(("prompt_logprobs", r.gen.engine.prompt_logprobs(r.gen.prompt, r.prompt_logprobs, check)))
            except _Cancelled:
                r.gen.cancel()
            except Exception as e:
                r.gen.fail(e)
            if r.gen.done:
                self._end(r)
                return
        self.active.append(r)

    def _turn(self) -> None:
        jobs = {r.gen: r for r in self.active}
        events = step(list(jobs), PREFILL_CHUNK, draft=self.inbox.empty() and not self.chores,
                      stopped=lambda: any(r.cancel.is_set() for r in self.active))
        self.decoded(len(jobs))
        with closing(events):                             # a drafted round cuts its cache back
            for g, event in events:
                r = jobs[g]
                if isinstance(event, Progress):
                    if r.progress:
                        r.emit(("progress", {"total": event.total, "cache": event.cached, "processed": event.done,
                                             "time_ms": (time.perf_counter() - r.t0) * 1e3}))
                else:
                    r.emit(("token", event))
                if any(r.cancel.is_set() for r in self.active):
                    break
        for r in list(self.active):
            if r.cancel.is_set():
                r.gen.cancel()
            if r.gen.done:
                self.active.remove(r)
                self._end(r)

    def _chore(self) -> None:
        """One piece of the oldest chore (the others wait: first come, first served)."""
        c = self.chores[0]
        try:
            if not c.cancel.is_set():
                next(c.work)
                self.decoded(0)
                return
            result, error = None, None                    # the client left: drop the rest
        except StopIteration as s:
            result, error = s.value, None
        except Exception as e:
            result, error = None, e
        self.chores.pop(0)
        c.done(result, error)

    def _end(self, r: Running) -> None:
        e = r.gen.error
        if e is not None and not isinstance(e, ValueError):
            traceback.print_exception(e)                  # a bug, not a bad request: keep its trace
        r.finish(r)


class _Cancelled(Exception):
    """Raised from engine callbacks when the client has gone."""
