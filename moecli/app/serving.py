"""`serve`: the plan, loaded with llama-server's slots. The CLI and the server call this, as `run`
calls plan_for and load_engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from moecli.errors import BadInput
from moecli.facts import MachineFacts, ModelFacts

from .planning import Request, plan_for
from .running import load_engine

if TYPE_CHECKING:
    from moecli import planner
    from moecli.engine import Engine

AUTO_SLOTS = 4  # llama-server's -np -1 (auto): 4 slots with a unified KV cache (tools/server/server.cpp)


@dataclass(frozen=True)
class Slots:
    """llama-server's -np and -kvu: how many sequences, and whether they share one KV cache (then
    each may use the whole -c) or divide it (each gets -c / N)."""

    n: int
    kv_unified: bool

    @classmethod
    def resolve(cls, n_parallel: int = -1, kv_unified: bool | None = None) -> Slots:
        if n_parallel == 0 or n_parallel < -1:
            raise BadInput(f"-np {n_parallel} is not a number of slots", "give 1 or more, or -1 for auto")
        if n_parallel == -1:
            return cls(AUTO_SLOTS, True if kv_unified is None else kv_unified)
        return cls(n_parallel, bool(kv_unified))


@dataclass(frozen=True)
class ServeJob:
    plan: planner.Plan
    slots: Slots


def serve_job(facts: ModelFacts, machine_facts: MachineFacts, request: Request, slots: Slots) -> ServeJob:
    """The plan the server loads (the same as `run`'s), and its slots."""
    the_plan = plan_for(facts, machine_facts, request, planning=False)
    if not slots.kv_unified and the_plan.params.n_ctx // slots.n < 2:
        raise BadInput(f"-c {the_plan.params.n_ctx} divided among {slots.n} slots leaves no room",
                       "give a larger -c, fewer slots (-np), or --kv-unified")
    return ServeJob(the_plan, slots)


def load_for_serving(path: Path, job: ServeJob, *, on_log: Callable[[str], None] | None = None) -> Engine:
    return load_engine(path, job.plan.params, on_log=on_log, n_seq_max=job.slots.n, kv_unified=job.slots.kv_unified)
