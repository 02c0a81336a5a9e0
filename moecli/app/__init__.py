"""The use cases: what each command does, independent of Typer and rich. `cli` and the HTTP server
parse their input, call these, and render what comes back.

    resolve   where a model name points, and its facts
    planning  the machine, the wishes and the user's flags -> a Plan (with this machine's calibration
              and tuned configuration: `planned`); the one verdict
    running   a Plan -> a loaded Engine; bench and sweep, recorded (`record_bench`, `bench_history`)
    models    pull (with its pre-plan), the pulled models and their verdicts, removal
"""

from moecli.app.models import Listed, PrePlan, plan_removal, pull, pull_and_record, pulled_models, remove
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
    run_bench,
    with_threads,
)

__all__ = [
    "DEMO", "BenchJob", "Listed", "PrePlan", "plan_removal", "pull", "pull_and_record", "pulled_models", "remove", "BenchRun", "HubFits", "Located", "MachineOptions", "Request", "Verdict", "bench_job",
    "check_flags", "ctrl_c_sets", "load_engine", "local_shards", "locate", "looks_like_path", "machine_for",
    "machine_for_loading", "plan_for", "read_facts", "run_bench", "verdict", "with_threads",
    "History", "Planned", "Recorded", "TunedSkipped", "bench_history", "planned", "record_bench",
]
