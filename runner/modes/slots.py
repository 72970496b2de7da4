"""Generation across the `-np N` slots: one engine each (its own KV cache, shared weights).

    pool = SlotPool(engines, metrics)
    async with aclosing(pool.run(job)) as events:
        async for kind, value in events:      # "progress", "token", then "done" or "error"
            ...

Scheduling: requests wait in arrival order for a free slot. A request takes, among the
free slots, the one whose cache shares the longest prefix with its prompt (the next turn
of a chat finds its conversation still cached), else the one idle the longest.

Concurrency: the engines are only touched by one compute thread (scheduler.py), which
reads prompts a chunk at a time and decodes all the replies in progress together, one
pass over the weights per step. A request's events reach its asyncio queue through the
event loop; its client leaving sets a cancel flag the scheduler checks between events, so
a generation stops within one token. The slot is freed (on the event loop) when the
scheduler is done with it, so the next request can never touch an engine still in use.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

from ..engine import Engine, Prompt, common_prefix
from ..generation import Generation, Result, Stop, rate
from ..sampling import Constraint, SamplingParams
from .scheduler import Chore, Running, Scheduler

POLL_S = 0.1                 # how often a non-streaming request checks that its client is there


@dataclass
class Job:
    """A generation to run on whichever slot is free (the Generation's arguments)."""
    prompt: Prompt
    params: SamplingParams
    max_tokens: int | None = None         # None: until the end of text or context; 0: none
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None           # None: no log-probabilities; n: with the top n
    constraint: Callable[[], Constraint] | None = None   # a fresh constraint per run (schemas, tools)
    progress: bool = False                # report prefill progress events
    prompt_logprobs: int | None = None    # also score the prompt's tokens (echo + logprobs)

    def start(self, engine: Engine) -> Generation:
        return Generation(engine, self.prompt, self.params, self.max_tokens, self.stop, self.ignore_eos,
                          self.logprobs, self.constraint() if self.constraint else None)


class Metrics:
    """Counters for /metrics, updated from the event loop and the compute thread; named
    and defined as llama-server's (`llamacpp:...`), plus a few of ours (`gemma_runner_...`)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = self.cached_tokens = self.generated_tokens = 0
        self.prefill_s = self.decode_s = 0.0
        self.draft_n = self.draft_accepted = 0
        self.n_decode = self.n_busy_slots = self.n_tokens_max = 0
        self.completions = 0
        self.cancelled = 0
        self.window = _Window()          # the throughput gauges: since the last scrape, as llama-server

    def request(self, path: str, status: int) -> None:
        with self.lock:
            self.requests[(path, status)] += 1

    def decoded(self, busy: int) -> None:
        """One pass over the weights (a decoding step, or a piece of an embedding) with
        `busy` replies in it."""
        with self.lock:
            self.n_decode += 1
            self.n_busy_slots += busy

    def record(self, r: Result) -> None:
        with self.lock:
            self.completions += 1
            self.cancelled += r.stop is Stop.CANCELLED
            self.prompt_tokens += r.prompt_tokens
            self.cached_tokens += r.cached_tokens
            self.prefill_s += r.prefill_s
            self.generated_tokens += r.generated_tokens
            self.decode_s += r.decode_s
            self.draft_n += r.draft_n
            self.draft_accepted += r.draft_accepted
            self.n_tokens_max = max(self.n_tokens_max, r.prompt_tokens + r.generated_tokens)
            w = self.window
            w.prompt_n += r.prompt_tokens - r.cached_tokens
            w.prompt_s += r.prefill_s
            w.decode_steps += r.decode_steps
            w.decode_s += r.decode_s

    def render(self, busy: int, waiting: int, slots: int) -> str:
        """Prometheus text exposition format. Like llama-server, the throughput gauges
        average over the time since the previous scrape, which this one starts anew."""
        with self.lock:
            w, self.window = self.window, _Window()
            llamacpp = [
                ("prompt_tokens_total", "counter", "Number of prompt tokens processed, excluding cached tokens",
                 self.prompt_tokens - self.cached_tokens),
                ("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache",
                 self.cached_tokens),
                ("prompt_seconds_total", "counter", "Total time spent processing prompts", self.prefill_s),
                ("tokens_predicted_total", "counter", "Number of generation tokens processed", self.generated_tokens),
                ("tokens_predicted_seconds_total", "counter", "Total time spent generating tokens", self.decode_s),
                ("n_decode_total", "counter", "Total number of decoding steps (passes over the weights)",
                 self.n_decode),
                ("n_tokens_max", "counter", "Largest observed sequence length (prompt + generation)",
                 self.n_tokens_max),
                ("spec_decode_num_draft_tokens_total", "counter", "Speculative: Total draft tokens generated",
                 self.draft_n),
                ("spec_decode_num_accepted_tokens_total", "counter",
                 "Speculative: Total draft tokens accepted by the target model", self.draft_accepted),
                ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s",
                 rate(w.prompt_n, w.prompt_s)),
                ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s",
                 rate(w.decode_steps, w.decode_s)),
                ("requests_processing", "gauge", "Number of requests processing", busy),
                ("requests_deferred", "gauge", "Number of requests deferred", waiting),
                ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per decoding step",
                 self.n_busy_slots / max(self.n_decode, 1)),
            ]
            ours = [
                ("requests_total", "counter", "HTTP requests by route and status",
                 [({"path": p, "status": str(s)}, n) for (p, s), n in sorted(self.requests.items())]),
                ("completions_total", "counter", "generations run (cancelled ones included)", [({}, self.completions)]),
                ("completions_cancelled_total", "counter", "generations stopped because the client left",
                 [({}, self.cancelled)]),
                ("slots", "gauge", "parallel slots (-np)", [({}, slots)]),
            ]
        out = []
        for name, kind, help_, v in llamacpp:
            out += [f"# HELP llamacpp:{name} {help_}", f"# TYPE llamacpp:{name} {kind}",
                    f"llamacpp:{name} {_number(v)}"]
        for name, kind, help_, samples in ours:
            out += [f"# HELP gemma_runner_{name} {help_}", f"# TYPE gemma_runner_{name} {kind}"]
            for labels, v in samples:
                lab = ",".join(f'{k}="{_label(x)}"' for k, x in labels.items())
                out.append(f"gemma_runner_{name}{{{lab}}} {_number(v)}" if lab else f"gemma_runner_{name} {_number(v)}")
        return "\n".join(out) + "\n"


@dataclass
class _Window:
    """Prompt and generation work since the last scrape (the throughput gauges)."""
    prompt_n: int = 0
    prompt_s: float = 0.0
    decode_steps: int = 0       # the first token of a reply comes with the prompt: no step of its own
    decode_s: float = 0.0


def _number(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6f}"     # never 1.23457e+06 for a count


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Slot:
    def __init__(self, id: int, engine: Engine):
        self.id, self.engine = id, engine
        self.busy = False
        self.last_used = 0.0


class SlotPool:
    def __init__(self, engines: list[Engine], metrics: Metrics):
        self.slots = [Slot(i, e) for i, e in enumerate(engines)]
        self.metrics = metrics
        self._waiters: deque[tuple[asyncio.Future, list[int]]] = deque()
        self._cancels: set[threading.Event] = set()
        self.scheduler = Scheduler(metrics.decoded)

    @property
    def busy(self) -> int:
        return sum(s.busy for s in self.slots)

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f, _ in self._waiters)

    # -- slots (event loop only) -------------------------------------------------------

    def _pick(self, ids: list[int]) -> Slot | None:
        free = [s for s in self.slots if not s.busy]
        if not free:
            return None
        return max(free, key=lambda s: (common_prefix(s.engine.ids, ids), -s.last_used))

    async def _acquire(self, ids: list[int]) -> Slot:
        if not self._waiters:
            slot = self._pick(ids)
            if slot is not None:
                slot.busy = True
                return slot
        fut = asyncio.get_running_loop().create_future()
        entry = (fut, ids)
        self._waiters.append(entry)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release(fut.result())       # granted just as the client left
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise

    async def _acquire_watching(self, ids: list[int], disconnected) -> Slot | None:
        """A slot, or None if the client left while waiting for one."""
        if disconnected is None:
            return await self._acquire(ids)
        task = asyncio.ensure_future(self._acquire(ids))
        while not task.done():
            await asyncio.wait({task}, timeout=POLL_S)
            if not task.done() and await disconnected():
                task.cancel()                     # leaves the queue (or frees a slot just granted)
                await asyncio.wait({task})
                if not task.cancelled() and task.exception() is None:
                    self._release(task.result())  # granted before the cancel landed
                return None
        return task.result()

    def _release(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()
        while self._waiters:
            fut, ids = self._waiters[0]
            if fut.done():                        # its client left
                self._waiters.popleft()
                continue
            s = self._pick(ids)
            if s is None:
                return
            self._waiters.popleft()
            s.busy = True
            fut.set_result(s)

    # -- a job -------------------------------------------------------------------------

    async def run(self, job: Job, disconnected: Callable[[], Awaitable[bool]] | None = None
                  ) -> AsyncIterator[tuple[str, object]]:
        """Events of one generation: ("prompt_logprobs", list) if the job scores its
        prompt, ("progress", dict)*, ("token", Token)*, then ("done", Result) or
        ("error", exception). Closing the iterator (or `disconnected` returning True)
        cancels the generation."""
        loop = asyncio.get_running_loop()
        slot = await self._acquire_watching(job.prompt.ids(), disconnected)
        if slot is None:
            return
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        self._cancels.add(cancel)

        def emit(event) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:                  # the loop is gone (shutdown)
                cancel.set()

        def free() -> None:
            self._cancels.discard(cancel)
            self._release(slot)

        def finish(r: Running) -> None:           # from the scheduler thread
            result = r.gen.result
            result.slot = slot.id
            self.metrics.record(result)
            r.emit(("error", r.gen.error) if r.gen.error is not None else ("done", result))
            try:
                loop.call_soon_threadsafe(free)
            except RuntimeError:                  # the loop is gone (shutdown)
                pass

        if self.scheduler.stopping.is_set():      # shutting down
            free()
            return
        self.scheduler.submit(Running(job.start(slot.engine), emit, cancel, finish, job.progress,
                                      job.prompt_logprobs))
        try:
            check_at = time.monotonic() + POLL_S
            while True:
                if disconnected is None:
                    event = await queue.get()
                else:
                    try:
                        event = await asyncio.wait_for(queue.get(), POLL_S)
                    except asyncio.TimeoutError:
                        event = None
                    # why: a client can leave while tokens flow (a non-streaming request
                    # hears of it only when asked), so ask at least every POLL_S
                    if time.monotonic() >= check_at:
                        if await disconnected():
                            return
                        check_at = time.monotonic() + POLL_S
                    if event is None:
                        continue
                yield event
                if event[0] in ("done", "error"):
                    return
        finally:
            cancel.set()                          # no-op if the job already ended

    # -- work without a slot -----------------------------------------------------------

    async def compute(self, work: Iterator[Any], disconnected: Callable[[], Awaitable[bool]] | None = None) -> Any:
        """Run `work` on the compute thread, one piece per turn between decoding steps
        (scheduler.Chore): the generator's return value, or its exception raised here;
        None if the client left (or the server is stopping) first."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        cancel = threading.Event()

        def done(result: Any, error: Exception | None) -> None:      # from the scheduler thread
            def settle() -> None:
                if fut.done():
                    return
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:                  # the loop is gone (shutdown)
                pass

        if self.scheduler.stopping.is_set():
            return None
        self._cancels.add(cancel)
        self.scheduler.submit(Chore(work, done, cancel))
        try:
            while not fut.done():
                await asyncio.wait({fut}, timeout=POLL_S)
                if fut.done():
                    break
                if (disconnected is not None and await disconnected()) or not self.scheduler.thread.is_alive():
                    return None
            return fut.result()
        finally:
            cancel.set()                          # no-op if it ended; else the scheduler drops it
            self._cancels.discard(cancel)

    def shutdown(self) -> None:
        for c in list(self._cancels):
            c.set()
        self.scheduler.shutdown()
