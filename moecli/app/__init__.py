"""The use cases: what each command does, independent of Typer and rich. `cli` and the HTTP server
parse their input, call these, and render what comes back.

    resolve   where a model name points, and its facts
    planning  the machine, the wishes and the user's flags -> a Plan (with this machine's calibration
              and tuned configuration: `planned`); the one verdict
    running   a Plan -> a loaded Engine; bench and sweep, recorded (`record_bench`, `bench_history`)
    chatting  what a chat is given: system prompt, template, structured output
    serving   the plan with the server's slots (-np), loaded
    models    pull (with its pre-plan), the pulled models and their verdicts, removal
"""

from __future__ import annotations

import importlib

# What each name is and where it lives. Imported on first use (PEP 562): `moecli plan` needs the
# planning and resolving use cases, not pulling, benching or serving (measured with
# scripts/bench_plan.py: the whole app package at once cost `plan` ~8 ms of its ~0.3 s).
_LAZY = {
    "chat_inputs": "chatting",
    "FileCheck": "models", "Listed": "models", "PrePlan": "models", "PullReport": "models",
    "damaged_records": "models", "partial_pulls": "models", "plan_removal": "models", "pull": "models",
    "pull_and_record": "models", "pulled_models": "models", "remove": "models", "verify": "models",
    "HubFits": "planning", "MachineOptions": "planning", "Planned": "planning", "Request": "planning",
    "TunedSkipped": "planning", "Verdict": "planning", "check_flags": "planning", "machine_for": "planning",
    "machine_for_loading": "planning", "plan_for": "planning", "planned": "planning", "verdict": "planning",
    "DEMO": "resolve", "Located": "resolve", "local_shards": "resolve", "locate": "resolve",
    "looks_like_path": "resolve", "read_facts": "resolve",
    "BenchJob": "running", "BenchRun": "running", "History": "running", "Recorded": "running",
    "bench_history": "running", "bench_job": "running", "ctrl_c_sets": "running", "load_engine": "running",
    "record_bench": "running", "rpc_exposed": "running", "run_bench": "running", "serve_rpc": "running",
    "with_threads": "running",
    "ServeJob": "serving", "Slots": "serving", "load_for_serving": "serving", "serve_job": "serving",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'moecli.app' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"moecli.app.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

