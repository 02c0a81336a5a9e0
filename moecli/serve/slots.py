"""The scheduler: N slots decoding together through one llama.cpp context, a queue beyond N.

One worker thread owns every llama.cpp call. Each step it admits waiting jobs to free slots (the
slot whose cache shares the longest prefix), then builds one batch: the next token of every
generating slot, then prompt chunks of the others up to n_batch, and calls llama_decode once. A
job whose client went away (`cancel()`) leaves its slot before the next step. Results go back
through `job.emit`, which must be thread-safe (the server passes loop.call_soon_threadsafe). The
worker keeps llama-server's counters and publishes a snapshot of the slots after each step, which
other threads read as `scheduler.snapshot` (serve/monitor.py).

An engine lost for good (`lost()`: an RPC worker stopped answering) ends every job with that
error, and every later one; the worker thread may then be blocked inside llama.cpp forever, so
nothing waits for it and nothing frees what it uses."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from moecli.engine import Engine, Sampling
from moecli.engine.batch import Batcher, DecodeFailed, Part, Sampler
from moecli.errors import EngineError
from moecli.serve.cache import PromptCache, SlotCache
from moecli.serve.monitor import Counters, SlotView, Snapshot, TaskView


class ContextFull(DecodeFailed):
    def __init__(self, n_tokens: int) -> None:
        EngineError.__init__(self, f"the KV cache has no room for this request ({n_tokens} tokens) beside the others "
                                   "(llama_decode returned 1)", "give a larger -c, or fewer slots")
        self.rc = 1


@dataclass(frozen=True)
class Stats:
    """One reply's figures, with llama-server's timings names; times are wall clock."""

    prompt_tokens: int
    cache_n: int
    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    finish_reason: str  # "stop" or "length"

    def timings(self) -> dict:
        def per_s(n, ms):
            return n / ms * 1e3 if ms > 0 else 0.0

        return {"cache_n": self.cache_n, "prompt_n": self.prompt_n, "prompt_ms": self.prompt_ms,
                "prompt_per_token_ms": self.prompt_ms / self.prompt_n if self.prompt_n else 0.0,
                "prompt_per_second": per_s(self.prompt_n, self.prompt_ms),
                "predicted_n": self.predicted_n, "predicted_ms": self.predicted_ms,
                "predicted_per_token_ms": self.predicted_ms / self.predicted_n if self.predicted_n else 0.0,
                "predicted_per_second": per_s(self.predicted_n, self.predicted_ms)}


class StopMatcher:
    """Cuts the text at the first stop string, which may arrive split over tokens: a tail that
    could begin one is held back until it is known not to."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        text = self.pending + text
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return text[:min(hits)], True
        keep = max((n for s in self.stops for n in range(min(len(s) - 1, len(text)), 0, -1)
                    if s.startswith(text[-n:])), default=0)
        self.pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass(eq=False)
class Job:
    """One request: its prompt tokens, how to sample, and where its events go. emit(kind, value)
    with kind "text" (a piece), "done" (Stats) or "error" (an exception)."""

    tokens: list[int]
    sampling: Sampling
    emit: Callable[[str, object], None]
    stop: Sequence[str] = ()
    n_predict: int = -1
    special: bool = False  # control tokens written out (tool-call markers that are control tokens)
    stream: bool = False  # shown in /slots
    id: int = -1  # given by Scheduler.submit (/slots' id_task)
    cancelled: bool = False
    t_queued: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class _Active:
    job: Job
    slot: SlotCache
    cache_n: int
    sampler: Sampler
    stops: StopMatcher
    breaks: list[int]  # prompt positions after which to take a checkpoint
    t_start: float
    next_token: int | None = None
    n_sampled: int = 0
    t_first: float | None = None
    has_new_line: bool = False

    def view(self) -> TaskView:
        job = self.job
        return TaskView(job.id, job.sampling, job.n_predict, job.stream,
                        n_processed=min(len(self.slot.tokens), len(job.tokens)) - self.cache_n, n_cached=self.cache_n,
                        n_decoded=self.n_sampled, has_next_token=True, has_new_line=self.has_new_line)


class Scheduler:
    """Slots over one Engine (loaded with n_seq_max = slots), driven by a worker thread."""

    def __init__(self, engine: Engine, *, max_checkpoints: int = 32, cache_ram: int = 8192 * 2**20,
                 checkpoint_step: int = 8192) -> None:
        self.engine = engine
        self.n_slots = engine.n_seq_max
        self.n_ctx_slot = engine.n_ctx_seq
        self.batcher = Batcher(engine)
        self.cache = PromptCache(self.n_slots, recurrent=engine.is_recurrent, max_checkpoints=max_checkpoints,
                                 max_bytes=cache_ram)
        self.checkpoint_step = max(1, checkpoint_step)
        self._n_ubatch = engine.params.n_ubatch
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: list[_Active] = []
        self._stopping = False
        self._lost: Exception | None = None
        self._ids = itertools.count()
        self.counters = Counters()
        self._prompt_queued = 0  # prompt tokens decoded since the last batch with logits, and when that began
        self._t_prompt = 0.0
        self._last: dict[int, TaskView] = {}  # each slot's previous request
        self._t_start = time.time()
        self._publish()
        self._thread = threading.Thread(target=self._run, name="moecli-slots", daemon=True)
        self._thread.start()

    # -- called from other threads ---------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if self._lost is not None:
            job.emit("error", self._lost)
            return
        if self._stopping:
            job.emit("error", RuntimeError("the server is stopping"))
            return
        job.id = next(self._ids)
        self._inbox.put(job)
        if self._lost is not None:  # lost() ran meanwhile, and may have drained the inbox before the put
            self._end_inbox(self._lost)

    @property
    def busy(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._waiting) + self._inbox.qsize()

    def stop(self, wait: bool = True, timeout: float = 5.0) -> None:
        """End every job (they get their "done" with what they have) and the worker."""
        self._stopping = True
        self._inbox.put(None)
        if wait and self._lost is None:  # a lost engine's worker may never come back
            self._thread.join(timeout)

    def lost(self, exc: Exception) -> None:
        """The engine cannot go on: every job in flight, queued or to come ends with `exc`. Called
        from another thread while the worker is inside llama.cpp (it may never return; if it does,
        it stops at once); makes no llama.cpp call."""
        self._lost = exc
        jobs = [a.job for a in list(self._active)] + list(self._waiting)
        self._active.clear()
        self._waiting.clear()
        for job in jobs:
            job.emit("error", exc)
        self._end_inbox(exc)

    def _end_inbox(self, exc: Exception) -> None:
        try:
            while True:
                job = self._inbox.get_nowait()
                if job is not None:
                    job.emit("error", exc)
        except queue.Empty:
            pass

    # -- the worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping and self._lost is None:
                self._take_inbox(block=not self._active and not self._waiting)
                self._admit()
                if self._active:
                    try:
                        self._step()
                    except Exception as exc:  # noqa: BLE001 - a bug or a llama.cpp failure: those requests end
                        for a in list(self._active):
                            self._fail(a, exc)
                if not self._active and self._prompt_queued:  # a prompt cut off before its logits
                    self._prompt_timed()
                self._publish()
        finally:
            if self._lost is None:  # else its jobs have ended, and the context must not be touched
                for a in list(self._active):
                    self._finish(a, "stop")
                for job in list(self._waiting):
                    job.emit("error", RuntimeError("the server is stopping"))
                self._waiting.clear()
                self.batcher.close()

    def _take_inbox(self, block: bool) -> None:
        try:
            job = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if job is not None:
                    self._waiting.append(job)
                job = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _admit(self) -> None:
        busy = {a.slot.seq_id for a in self._active}
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                continue
            free = [s for s in self.cache.slots if s.seq_id not in busy]
            if not free:
                return
            self._waiting.popleft()
            slot = self.cache.choose(free, job.tokens)
            busy.add(slot.seq_id)
            try:
                cache_n = self.cache.prepare(self.batcher, slot, job.tokens)
                sampler = Sampler(self.engine, job.sampling, job.tokens, special=job.special)
            except Exception as exc:  # noqa: BLE001 - this request fails, the server goes on
                self.cache.forget(self.batcher, slot)
                job.emit("error", exc)
                busy.discard(slot.seq_id)
                continue
            self.counters.prompt_cached += cache_n
            self._active.append(_Active(job, slot, cache_n, sampler, StopMatcher(job.stop),
                                        self._breaks(cache_n, len(job.tokens)), time.perf_counter()))

    def _breaks(self, start: int, end: int) -> list[int]:
        """Where prompt chunks end for a checkpoint (recurrent models): llama-server's 4 + n_ubatch
        and 4 tokens before the end, and every checkpoint_step tokens."""
        if not self.cache.recurrent:
            return []
        points = {end - 4 - self._n_ubatch, end - 4, *range(self.checkpoint_step, end, self.checkpoint_step)}
        return sorted(p for p in points if start < p < end)

    def _step(self) -> None:
        for a in [a for a in self._active if a.job.cancelled]:
            self._finish(a, "stop", cancelled=True)
        if not self._active:
            return
        parts: list[tuple[_Active, Part]] = []
        budget = self.batcher.capacity
        # In slot order, as llama-server's update_slots: without a unified KV cache llama.cpp puts
        # in one ubatch only sequences whose ids follow each other (llama_batch_allocr::split_equal,
        # sequential), so 4 slots out of order would be 4 ubatches, each reading every weight again.
        self._active.sort(key=lambda a: a.slot.seq_id)
        for a in self._active:
            if a.next_token is not None:
                parts.append((a, Part(a.slot.seq_id, len(a.slot.tokens), [a.next_token], logits=True)))
                budget -= 1
        for a in self._active:
            if a.next_token is None and budget > 0:
                done = len(a.slot.tokens)
                end = min(len(a.job.tokens), done + budget, *(p for p in a.breaks if p > done))
                chunk = a.job.tokens[done:end]
                parts.append((a, Part(a.slot.seq_id, done, chunk, logits=end == len(a.job.tokens))))
                budget -= len(chunk)
        try:
            self._decode([p for _, p in parts], sum(len(p.tokens) for a, p in parts if a.next_token is None))
        except DecodeFailed as exc:
            if self._lost is not None:
                return
            if exc.rc != 1:  # a compute error: as llama-server, the sequences of the batch end
                for a, _ in parts:
                    self._fail(a, exc)
                return
            # no room in the KV cache, and nothing changed: each sequence alone, and only those that
            # do not fit end (their request gets the error; the others go on)
            for a, part in parts:
                try:
                    self._decode_once([part], len(part.tokens) if a.next_token is None else 0)
                except DecodeFailed as alone:
                    self._fail(a, alone if alone.rc != 1 else ContextFull(len(a.slot.tokens) + len(part.tokens)))
                    continue
                self._evaluated(a, part)
            return
        if self._lost is not None:  # the decode came back after all (a hung worker woke up): too late
            return
        for a, part in parts:
            self._evaluated(a, part)

    def _evaluated(self, a: _Active, part: Part) -> None:
        """After the decode that held `part`: the cache grows, a checkpoint where due, a token drawn."""
        a.slot.tokens.extend(part.tokens)
        self.counters.n_tokens_max = max(self.counters.n_tokens_max, len(a.slot.tokens))
        if a.next_token is None and len(a.slot.tokens) in a.breaks:
            self.cache.checkpoint(self.batcher, a.slot)
        if part.logits:
            self._sampled(a, a.sampler.sample(self.batcher.ctx, part.index))

    def _decode(self, parts: list[Part], n_prompt: int) -> None:
        """One llama_decode; when the KV cache has no room (llama_decode returns 1, nothing changed),
        the caches of idle slots are dropped and it is tried once more (llama-server's
        try_clear_idle_slots), as they share the cells of a unified KV cache."""
        try:
            self._decode_once(parts, n_prompt)
        except DecodeFailed as exc:
            busy = {a.slot.seq_id for a in self._active}
            idle = [s for s in self.cache.slots if s.seq_id not in busy and s.tokens]
            if exc.rc != 1 or not idle:
                raise
            for slot in idle:
                self.cache.forget(self.batcher, slot)
            self._decode_once(parts, n_prompt)

    def _decode_once(self, parts: list[Part], n_prompt: int) -> None:
        """llama_decode, counted as llama-server counts it (metrics_post_decode): n_prompt of its
        tokens are prompt tokens, timed from this decode (or the first of a run without logits) to
        the end of the first batch with logits."""
        t0 = time.perf_counter()
        self.batcher.decode(parts)
        self.counters.n_decode += 1
        self.counters.n_busy_slots += len(self._active)
        if n_prompt:
            if not self._prompt_queued:
                self._t_prompt = t0
            self._prompt_queued += n_prompt
        if self._prompt_queued and any(p.logits for p in parts):
            self._prompt_timed()

    def _prompt_timed(self) -> None:
        self.batcher.synchronize()  # llama_decode may return before its compute is done
        self.counters.prompt_tokens += self._prompt_queued
        self.counters.prompt_seconds += time.perf_counter() - self._t_prompt
        self._prompt_queued = 0

    def _publish(self) -> None:
        """The state /slots and /metrics read, replaced whole in one assignment (which another
        thread sees entirely or not at all)."""
        running = {a.slot.seq_id: a for a in self._active}
        views = []
        for s in self.cache.slots:
            a = running.get(s.seq_id)
            views.append(SlotView(s.seq_id, self.n_ctx_slot, a is not None, len(s.tokens), len(s.checkpoints),
                                  sum(c.size for c in s.checkpoints), a.view() if a else self._last.get(s.seq_id)))
        self.snapshot = Snapshot(self._t_start, tuple(views), dataclasses.replace(self.counters),
                                 len(self._waiting) + self._inbox.qsize(), self.cache.n_restored)

    def _sampled(self, a: _Active, token: int) -> None:
        now = time.perf_counter()
        if a.t_first is None:
            a.t_first = now
        a.n_sampled += 1
        a.next_token = None
        if a.sampler.is_eog(token):
            return self._finish(a, "stop")
        text, stopped = a.stops.feed(a.sampler.piece(token))
        if text:
            a.has_new_line = a.has_new_line or "\n" in text
            a.job.emit("text", text)
        if stopped:
            return self._finish(a, "stop", flush=False)
        if 0 <= a.job.n_predict <= a.n_sampled or len(a.slot.tokens) + 1 >= self.n_ctx_slot:
            return self._finish(a, "length")
        a.next_token = token

    def _stats(self, a: _Active, reason: str) -> Stats:
        end = time.perf_counter()
        t_first = a.t_first or end
        return Stats(prompt_tokens=len(a.job.tokens), cache_n=a.cache_n, prompt_n=len(a.job.tokens) - a.cache_n,
                     prompt_ms=(t_first - a.t_start) * 1e3, predicted_n=a.n_sampled,
                     predicted_ms=(end - t_first) * 1e3 if a.n_sampled else 0.0, finish_reason=reason)

    def _finish(self, a: _Active, reason: str, *, flush: bool = True, cancelled: bool = False) -> None:
        self._active.remove(a)
        tail = a.sampler.close()
        if flush and not cancelled:
            text, _ = a.stops.feed(tail) if tail else ("", False)
            text += a.stops.flush()
            if text:
                a.job.emit("text", text)
        a.slot.last_used = time.monotonic()
        try:
            self.cache.checkpoint(self.batcher, a.slot)  # the reply's end: the next turn starts here
        except Exception:  # noqa: BLE001 - a missing checkpoint only costs a re-evaluation
            pass
        stats = self._stats(a, reason)
        self._released(a, stats)
        a.job.emit("done", stats)

    def _fail(self, a: _Active, exc: Exception) -> None:
        if a in self._active:
            self._active.remove(a)
        a.sampler.close()
        try:
            self.cache.forget(self.batcher, a.slot)
        finally:
            self._released(a, self._stats(a, "stop"))
            a.job.emit("error", exc)

    def _released(self, a: _Active, stats: Stats) -> None:
        """A request left its slot: its generation counted (llama-server's metrics_on_prediction),
        and the snapshot published before its client hears of it."""
        if stats.predicted_n:
            self.counters.predicted_tokens += stats.predicted_n
            self.counters.predicted_steps += stats.predicted_n - 1
            self.counters.predicted_seconds += stats.predicted_ms / 1e3
        job = a.job
        self._last[a.slot.seq_id] = TaskView(job.id, job.sampling, job.n_predict, job.stream)
        self._publish()
