"""`serve`: the plan, loaded with llama-server's slots. The CLI and the server call this, as `run`
calls plan_for and load_engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from moecli import planner
from moecli.errors import BadInput
from moecli.facts import MachineFacts, ModelFacts
from moecli.units import fmt_bytes

from .planning import Request, planned
from .running import load_engine

if TYPE_CHECKING:
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
    note: str | None = None  # what the slots cost, and why auto chose that many

    @property
    def n_ctx_slot(self) -> int:
        """The context one slot may hold (llama.cpp's n_ctx_seq)."""
        return self.plan.n_ctx if self.slots.kv_unified else self.plan.n_ctx // self.slots.n


def _expert_layers_on_gpu(p: planner.Plan) -> tuple[int, int]:
    return len(p.placement.expert_layers_gpu), len(p.placement.partial_gpu)


def _with_slots(request: Request, slots: Slots) -> Request:
    return replace(request, wishes=replace(request.wishes, n_seq=slots.n, kv_unified=slots.kv_unified))


def serve_job(facts: ModelFacts, machine_facts: MachineFacts, request: Request, n_parallel: int = -1,
              kv_unified: bool | None = None, *, use_tuned: bool = True) -> ServeJob:
    """The plan the server loads (the same as `run`'s, for n_seq_max = the slots: a recurrent state
    and a row of logits per slot, each stream's window cells, the compute buffers of the slots'
    graph, and -c shared or divided as llama-server does), and its slots. With -np auto: up to
    llama-server's 4 slots, as many as cost no expert layer on the GPU."""
    wanted = Slots.resolve(n_parallel, kv_unified)

    def plan_for(facts, machine_facts, request, planning):  # what `run` uses: app.planned
        return planned(facts, machine_facts, request, use_tuned=use_tuned, planning=planning).plan

    def note(the_plan: planner.Plan, n: int, short: bool = False) -> str | None:
        return _cost_note(facts, n, planner.slot_cost(facts, machine_facts, the_plan.params, n, wanted.kv_unified),
                          short)

    if n_parallel != -1:
        the_plan = plan_for(facts, machine_facts, _with_slots(request, wanted), planning=False)
        job = ServeJob(the_plan, wanted, note(the_plan, wanted.n))
    else:
        one = plan_for(facts, machine_facts, _with_slots(request, Slots(1, wanted.kv_unified)), planning=False)
        job = ServeJob(one, Slots(1, wanted.kv_unified))
        for n in range(wanted.n, 1, -1):
            slots = Slots(n, wanted.kv_unified)
            candidate = plan_for(facts, machine_facts, _with_slots(request, slots), planning=False)
            if candidate.fits and _expert_layers_on_gpu(candidate) >= _expert_layers_on_gpu(one):
                job = ServeJob(candidate, slots, note(candidate, n))
                break
        else:
            if wanted.n > 1 and one.gpu is not None:
                lost = _expert_layers_on_gpu(one)[0] - _expert_layers_on_gpu(
                    plan_for(facts, machine_facts, _with_slots(request, Slots(2, wanted.kv_unified)), planning=False))[0]
                job = replace(job, note=f"1 slot: a second one ({note(one, 2, short=True)}) would move "
                                        f"{max(lost, 1)} expert layer(s) off the GPU; give -np 2 to have it anyway")
    if job.n_ctx_slot < 2:
        raise BadInput(f"-c {job.plan.params.n_ctx} divided among {job.slots.n} slots leaves no room",
                       "give a larger -c, fewer slots (-np), or --kv-unified")
    return job


def _cost_note(facts: ModelFacts, n: int, extra: int, short: bool = False) -> str | None:
    """What the slots beyond the first cost (`extra` bytes, planner.slot_cost), and the recurrent
    state each holds (hybrid models)."""
    state = f"a recurrent state of {fmt_bytes(facts.recurrent_state_bytes)} per slot" if facts.recurrent_state_bytes else ""
    if short:
        return f"{fmt_bytes(max(extra, 0))} more" + (f", {state}" if state else "")
    if n < 2 or extra <= 0 and not state:
        return None
    more = f"{fmt_bytes(extra)} more than one slot" if extra > 0 else "no more memory than one slot"
    return f"{n} slots: {more}" + (f" ({state})" if state else "")


def load_for_serving(path: Path, job: ServeJob, *, on_log: Callable[[str], None] | None = None) -> Engine:
    return load_engine(path, job.plan.params, on_log=on_log, n_seq_max=job.slots.n, kv_unified=job.slots.kv_unified)
