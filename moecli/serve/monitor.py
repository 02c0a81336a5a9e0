"""What GET /slots and GET /metrics show: the Scheduler's counters and the snapshot of its slots
that its worker thread publishes, and their renderings in llama-server's shapes (server_slot::to_json
and server_task_result_metrics::to_metrics in tools/server/).

The worker owns the slots and changes them between llama.cpp calls; after each step (and before a
reply's "done") it builds a new frozen Snapshot and replaces the old one in a single assignment.
A reader on another thread takes whichever is current: always whole, never a lock, never a wait
on a decode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moecli.engine import Sampling


@dataclass
class Counters:
    """llama-server's server_metrics (tools/server/server-common.h), cumulative since the start;
    only the worker thread changes them, readers get a copy in the Snapshot."""

    prompt_tokens: int = 0  # prompt tokens evaluated (those reused from the cache not counted)
    prompt_seconds: float = 0.0  # from the decode that took them to the end of the batch with logits
    prompt_cached: int = 0  # prompt tokens reused from the cache
    predicted_tokens: int = 0  # tokens generated, counted when their request leaves its slot
    predicted_steps: int = 0  # their decode steps: a reply's first token comes with its prompt's logits
    predicted_seconds: float = 0.0  # from each reply's first token to its end
    n_decode: int = 0  # llama_decode calls that succeeded
    n_busy_slots: int = 0  # slots with a request, summed over those calls
    n_tokens_max: int = 0  # the longest sequence a slot has held (prompt + generated)


@dataclass(frozen=True)
class TaskView:
    """The request a slot runs (or ran last; then its figures are reset, as llama-server's)."""

    id: int
    sampling: Sampling
    n_predict: int
    stream: bool
    n_processed: int = 0  # prompt tokens evaluated so far
    n_cached: int = 0  # prompt tokens reused from the slot's cache
    n_decoded: int = 0
    has_next_token: bool = False
    has_new_line: bool = False


@dataclass(frozen=True)
class SlotView:
    id: int
    n_ctx: int
    processing: bool
    n_tokens: int  # what the slot's sequence holds: its prompt cache
    checkpoints: int
    checkpoint_bytes: int
    task: TaskView | None


@dataclass(frozen=True)
class Snapshot:
    t_start: float  # Unix time the scheduler started
    slots: tuple[SlotView, ...]
    counters: Counters  # a copy
    deferred: int  # requests waiting for a slot
    checkpoint_restores: int  # prompts resumed from a state checkpoint (moecli's)

    @property
    def processing(self) -> int:
        return sum(s.processing for s in self.slots)


# --- GET /slots ------------------------------------------------------------------------------------
SAMPLERS = ["penalties", "top_k", "top_p", "min_p", "temperature"]  # the chain's order (engine/sampling.py)


def _params(t: TaskView) -> dict:
    """task_params::to_json(only_metrics): the fields moecli's sampling has, by llama-server's names."""
    s = t.sampling
    return {"seed": s.seed, "temperature": s.temp, "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p,
            "repeat_last_n": s.repeat_last_n, "repeat_penalty": s.repeat_penalty,
            "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
            "max_tokens": t.n_predict, "n_predict": t.n_predict, "ignore_eos": s.ignore_eos, "stream": t.stream,
            "samplers": (["grammar"] if s.grammar is not None else []) + SAMPLERS}


def slot_json(s: SlotView) -> dict:
    """server_slot::to_json, and moecli's `prompt_cache`: what the slot's cache holds."""
    out: dict = {"id": s.id, "n_ctx": s.n_ctx, "speculative": False, "is_processing": s.processing}
    if s.task is not None:
        t = s.task
        out.update({
            "id_task": t.id, "n_prompt_tokens": s.n_tokens, "n_prompt_tokens_processed": t.n_processed,
            "n_prompt_tokens_cache": t.n_cached, "params": _params(t),
            "next_token": [{"has_next_token": t.has_next_token, "has_new_line": t.has_new_line,
                            "n_remain": t.n_predict - t.n_decoded if s.processing and t.n_predict >= 0 else -1,
                            "n_decoded": t.n_decoded}]})
    out["prompt_cache"] = {"n_tokens": s.n_tokens, "checkpoints": s.checkpoints, "checkpoint_bytes": s.checkpoint_bytes}
    return out


# --- GET /metrics ----------------------------------------------------------------------------------
class Rates:
    """llama-server's throughput gauges average over the time between two scrapes (its buckets are
    reset by each scrape): here, the counters' growth since the previous scrape."""

    def __init__(self) -> None:
        self._last = Counters()

    def since_last(self, now: Counters) -> tuple[float, float]:
        """(prompt tokens/s, generated tokens/s) since the previous call."""
        last, self._last = self._last, now

        def rate(steps: float, seconds: float) -> float:
            return steps / seconds if seconds > 0 else 0.0

        return (rate(now.prompt_tokens - last.prompt_tokens, now.prompt_seconds - last.prompt_seconds),
                rate(now.predicted_steps - last.predicted_steps, now.predicted_seconds - last.predicted_seconds))


def prometheus(snap: Snapshot, rates: Rates) -> str:
    """The Prometheus text of llama-server's /metrics: its names, HELP and TYPE lines, in its order;
    then moecli's own, under `moecli:`."""
    c = snap.counters
    prompt_rate, predicted_rate = rates.since_last(c)
    counters = [
        ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens", c.prompt_tokens),
        ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", c.prompt_cached),
        ("prompt_seconds_total", "Total time spent processing prompts", c.prompt_seconds),
        ("tokens_predicted_total", "Number of generation tokens processed", c.predicted_tokens),
        ("tokens_predicted_seconds_total", "Total time spent generating tokens", c.predicted_seconds),
        ("n_decode_total", "Total number of llama_decode() calls, excluding speculative decoding and multimodal "
                           "decoding", c.n_decode),
        ("n_tokens_max", "Largest observed sequence length (prompt + generation)", c.n_tokens_max),
        ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated", 0),  # no speculation
        ("spec_decode_num_accepted_tokens_total", "Speculative: Total draft tokens accepted by the target model", 0),
        ("spec_decode_num_drafts_total", "Speculative: Total speculative decoding verification steps", 0),
    ]
    gauges = [
        ("prompt_tokens_seconds", "Average prompt throughput in tokens/s", prompt_rate),
        ("predicted_tokens_seconds", "Average generation throughput in tokens/s", predicted_rate),
        ("requests_processing", "Number of requests processing", snap.processing),
        ("requests_deferred", "Number of requests deferred", snap.deferred),
        ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
         c.n_busy_slots / max(c.n_decode, 1)),
    ]
    ours = [
        ("checkpoint_restores_total", "counter", "Prompts resumed from a state checkpoint of the prompt cache "
                                                 "(hybrid and recurrent models)", snap.checkpoint_restores),
        ("checkpoints", "gauge", "State checkpoints held by the slots' prompt caches",
         sum(s.checkpoints for s in snap.slots)),
        ("checkpoint_bytes", "gauge", "Bytes of the state checkpoints held by the slots' prompt caches",
         sum(s.checkpoint_bytes for s in snap.slots)),
    ]
    rows = ([("llamacpp", name, "counter", text, value) for name, text, value in counters]
            + [("llamacpp", name, "gauge", text, value) for name, text, value in gauges]
            + [("moecli", name, kind, text, value) for name, kind, text, value in ours])
    return "".join(f"# HELP {ns}:{name} {text}\n# TYPE {ns}:{name} {kind}\n{ns}:{name} {value}\n"
                   for ns, name, kind, text, value in rows)
