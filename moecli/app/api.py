"""The Python API (`moecli.plan`, `moecli.load`): the same use cases as `moecli plan` and
`moecli run`, for people who script rather than type. Options are the CLI's, by their Python
names: `vram="6GiB"`, `ctx=8192`, `ctk="q8_0"`, `ngl="all"`, `ncmoe=30`, `ot=["blk\\.1.*=CPU"]`,
`profile="gtx1060-6gb"`, `cpu_only=True`, ..."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .planning import HubFits, Request, machine_for, machine_for_loading, plan_for
from .resolve import locate, read_facts
from .running import load_engine

if TYPE_CHECKING:
    from moecli.engine import Engine
    from moecli.planner import Plan


def plan(model: str, **options) -> Plan:
    """Where MODEL's tensors go on this machine (or the one `options` describe), without loading
    anything: a path, a pulled model, `org/repo:QUANT` (its header is read from the Hub), or `demo`."""
    request = Request.from_options(**options)
    machine = machine_for(request.machine)
    located = locate(model, remote_ok=True, fits=HubFits(machine))
    return plan_for(read_facts(located), machine, request)


def load(model: str, **options) -> Engine:
    """MODEL loaded into llama.cpp with its plan on this machine (a local file, a pulled model or
    `demo`). Use it as a context manager; `engine.chat(messages)` and `engine.complete(text)`
    stream text pieces, `engine.last_timings` has llama.cpp's counters."""
    request = Request.from_options(**options)
    located = locate(model)
    facts = read_facts(located)
    machine, _ = machine_for_loading(request.machine)
    return load_engine(located.path, plan_for(facts, machine, request, planning=False).params)
