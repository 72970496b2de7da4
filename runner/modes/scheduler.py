"""The server's compute side: one thread runs the work of every slot, so that each decode
step reads the weights once for all the replies in progress (continuous batching).

Each turn of the loop:
1. takes in new jobs (a job arrives with its slot: an engine with its own KV cache);
2. reads one chunk (PREFILL_CHUNK tokens) of the oldest prompt still being read;
3. lets every reply holding fresh logits pick its next token (Generation.step), and
   ends those that are finished, cancelled (their client left) or failed;
4. evaluates all the chosen tokens in one pass (engine.decode_batch), or, for a greedy
   reply alone in the server, runs a drafted round (engine.draft_round).

An engine is touched by this thread only, so no locks guard the engines. Events go to
each job's `emit` (which hands them to the event loop); `free` returns the slot.
"""
from __future__ import annotations

import queue
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..engine import Generation, Stats, decode_batch
from .jsonmode import JSONConstraint


@dataclass(eq=False)
class Running:
    slot: object                     # slots.Slot: .id, .engine
    job: object                      # slots.Job
    result: object                   # slots.Result, filled in at the end
    emit: Callable[[tuple], None]
    cancel: threading.Event
    free: Callable[[], None]
    stats: Stats = field(default_factory=Stats)
    t0: float = field(default_factory=time.perf_counter)
    reading: Iterator | None = None          # the prompt's prefill_chunks, while it is read
    done: int = -1                           # prompt tokens in the cache so far
    gen: Generation | None = None            # once the prompt is read
    logits: np.ndarray | None = None         # the next token's distribution, when fresh


class Scheduler:
    def __init__(self, finish: Callable[[Running, bool, Exception | None], None]):
        self.finish_job = finish                 # reports a job's end (metrics, events, slot)
        self.inbox: queue.Queue[Running] = queue.Queue()
        self.stopping = threading.Event()
        self.reading: deque[Running] = deque()
        self.replying: list[Running] = []
        self.thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self.thread.start()

    def submit(self, r: Running) -> None:
        self.inbox.put(r)

    def shutdown(self) -> None:
        self.stopping.set()

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stopping.is_set():
            idle = not self.reading and not self.replying
            try:
                self._admit(self.inbox.get(timeout=0.2) if idle else self.inbox.get_nowait())
                while True:
                    self._admit(self.inbox.get_nowait())
            except queue.Empty:
                pass
            if self.reading:
                self._read(self.reading[0])
            self._reply()
        for r in list(self.reading) + self.replying:      # shutting down: stop them all
            r.cancel.set()
            self._end(r)

    def _admit(self, r: Running) -> None:
        try:
            eng, job = r.slot.engine, r.job
            if job.prompt_logprobs is not None:                      # echo with logprobs
                def check(done: int, total: int) -> None:
                    if r.cancel.is_set():
                        raise _Cancelled
                r.result.prompt_logprobs = eng.prompt_logprobs(job.prompt, job.prompt_logprobs, check)
                r.emit(("prompt_logprobs", r.result.prompt_logprobs))
            r.reading = eng.prefill_chunks(job.prompt, r.stats)
            self.reading.append(r)
        except _Cancelled:
            self._end(r)
        except Exception as e:
            self._end(r, e)

    def _read(self, r: Running) -> None:
        """One chunk of r's prompt; a read prompt starts its reply."""
        if r.cancel.is_set():
            self.reading.remove(r)
            self._end(r)
            return
        try:
            done, total, logits = next(r.reading)
            if r.done < 0:                       # the first step only found the cached prefix
                r.done = done
                if r.job.progress:
                    self._progress(r, done, total)
                if done < total:
                    done, total, logits = next(r.reading)
            r.done = done
            if r.job.progress:
                self._progress(r, done, total)
        except Exception as e:
            self.reading.remove(r)
            self._end(r, e)
            return
        if done < total:
            return
        self.reading.remove(r)
        r.reading = None
        job = r.job
        constraint = JSONConstraint(job.json_vocab) if job.json_vocab is not None else None
        r.gen = Generation(r.slot.engine, job.prompt, job.params, job.max_tokens, job.stop, job.ignore_eos,
                           job.logprobs, constraint, r.stats)
        r.logits = logits
        if r.gen.done:                           # max_tokens 0: the prompt only
            self._end(r)
        else:
            self.replying.append(r)

    def _progress(self, r: Running, done: int, total: int) -> None:
        r.emit(("progress", {"total": total, "cache": r.stats.cached_tokens, "processed": done,
                             "time_ms": (time.perf_counter() - r.t0) * 1e3}))

    def _reply(self) -> None:
        """Every reply with fresh logits picks its next token; those continuing are
        evaluated together. A reply alone in the server, greedy, decodes a drafted
        round instead (engine.draft_round: several tokens per product of the output
        matrix, the same text)."""
        batch = []
        for r in list(self.replying):
            if r.cancel.is_set():
                self._drop(r)
                continue
            if r.logits is not None:             # else its next input awaits evaluation
                try:
                    tok = r.gen.step(r.logits)
                except Exception as e:
                    self._drop(r, e)
                    continue
                r.logits = None
                if tok is not None:
                    r.emit(("token", tok))
                if r.gen.done:
                    self._drop(r)
                    continue
            batch.append(r)
        if not batch:
            return
        if len(batch) == 1 and not self.reading and self.inbox.empty() and batch[0].slot.engine.can_draft(batch[0].gen):
            self._draft(batch[0])
            return
        t = time.perf_counter()
        try:
            rows = decode_batch([r.slot.engine for r in batch], [r.gen.next_input for r in batch])
        except Exception as e:                   # each engine was rolled back; all fail alike
            for r in batch:
                self._drop(r, e)
            return
        dt = time.perf_counter() - t
        for r, row in zip(batch, rows):
            r.logits = row
            r.stats.decode_s += dt
            r.stats.decode_steps += 1

    def _draft(self, r: Running) -> None:
        """One drafted round of a lone greedy reply; a client that leaves stops it
        between tokens (the round cuts the cache back to what was emitted)."""
        rnd = r.slot.engine.draft_round(r.gen)
        try:
            for tok in rnd:
                r.emit(("token", tok))
                if r.cancel.is_set():
                    break
        except Exception as e:
            self._drop(r, e)
            return
        finally:
            rnd.close()
        if r.gen.done:
            self._drop(r)

    def _drop(self, r: Running, error: Exception | None = None) -> None:
        self.replying.remove(r)
        self._end(r, error)

    def _end(self, r: Running, error: Exception | None = None) -> None:
        if r.reading is not None:
            r.reading.close()                    # stops between chunks: the cache is consistent
            r.reading = None
        if r.gen is not None and error is None and not r.cancel.is_set():
            tail = r.gen.tail()
            if tail is not None:
                r.emit(("token", tail))
        if error is not None and not isinstance(error, ValueError):
            traceback.print_exception(error)     # a bug, not a bad request: keep its trace
        self.finish_job(r, r.cancel.is_set(), error)


class _Cancelled(Exception):
    """Raised from engine callbacks when the client has gone."""
