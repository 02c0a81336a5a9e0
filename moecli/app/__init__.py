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

from moecli.app.chatting import chat_inputs
from moecli.app.models import (
    FileCheck,
    Listed,
    PrePlan,
    PullReport,
    damaged_records,
    partial_pulls,
    plan_removal,
    pull,
    pull_and_record,
    pulled_models,
    remove,
    verify,
)
from moecli.app.planning import (
    HubFits,
    MachineOptions,
    Planned,
    Request,
    TunedSkipped,
    Verdict,
    check_flags,
    machine_for,
    machine_for_loading,
    plan_for,
    planned,
    verdict,
)
from moecli.app.resolve import DEMO, Located, local_shards, locate, looks_like_path, read_facts
from moecli.app.running import (
    BenchJob,
    BenchRun,
    History,
    Recorded,
    bench_history,
    bench_job,
    ctrl_c_sets,
    load_engine,
    record_bench,
    rpc_exposed,
    run_bench,
    serve_rpc,
    with_threads,
)
from moecli.app.serving import ServeJob, Slots, load_for_serving, serve_job

__all__ = [
    "BenchJob", "BenchRun", "DEMO", "FileCheck", "HubFits", "Listed", "Located", "MachineOptions", "PrePlan",
    "PullReport", "Request", "Verdict", "bench_job", "chat_inputs", "check_flags", "ctrl_c_sets",
    "damaged_records", "load_engine", "local_shards", "locate", "looks_like_path", "machine_for",
    "machine_for_loading", "partial_pulls", "plan_for", "plan_removal", "pull", "pull_and_record",
    "pulled_models", "read_facts", "remove", "rpc_exposed", "run_bench", "serve_rpc", "verdict", "verify", "with_threads",
    "History", "Planned", "Recorded", "TunedSkipped", "bench_history", "planned", "record_bench",
    "ServeJob", "Slots", "load_for_serving", "serve_job",
]
