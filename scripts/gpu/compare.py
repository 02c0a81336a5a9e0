#!/usr/bin/env python3
"""The comparison of issues 5 and 9 on a GPU machine: moecli's plan for a small card against llama.cpp's
own ways of fitting the same model to it, measured on one machine in one session.

At a VRAM budget (6 GiB), for each context (4096, 32768) and thread count (16, and 4 pinned with
`taskset` like a desktop CPU), prompt 512 and generation 128 tokens, repeated:

  plan        moecli's plan (`moecli plan --vram 6GiB`), measured by `moecli bench`
  plan@lb     the same llama.cpp flags measured by `llama-bench` (moecli's own overhead)
  fitter      llama.cpp's fitter as a 6 GiB card's owner gets it: `llama-fit-params -c CTX
              --fit-target (free - 6 GiB + 1024 MiB)`, its default load mode, by llama-bench
  cpu-moe     every expert on the CPU, by llama-bench
  naive       the largest `-ngl N` (no overrides) that fits, llama.cpp's default load mode
  sweep       `--n-cpu-moe N` around the budget's edge in both load modes, by `moecli bench`
              (the budget is judged on the measured peak at the real context)
  ceiling     everything on the GPU, by llama-bench

plus moecli's plan at 4, 8 and 12 GiB (predicted against measured peak GPU memory), and the RAM
bandwidth at 1, 4 and 16 threads for the decode bound. Peak GPU memory is sampled with NVML every
50 ms while each command runs (the device's use above what it used before the command started).
llama-bench sizes its context to prompt + generation (640 tokens), so its peaks are at that
context; moecli bench runs allocate the real context.

Runs go in priority order (run_priority: memory truth first, then the 6 GiB comparison at the
first context and the most threads, then fewer threads, the second context, the ceiling) and are
skipped when the deadline would be passed (--deadline, or a later one poll.sh writes into
--deadline-file); results.json and results.md are rewritten before and after every run, with
what is still queued, so a cut-off session still has what was measured and what was not.

    python scripts/gpu/compare.py --model M.gguf --llama-bench B --fit-params F --out DIR
        [--quick] [--reps 3] [--deadline EPOCH] [--deadline-file F] [--dry-run [--profile h100-80gb]]
    python scripts/gpu/compare.py --cpu-smoke --llama-bench B --fit-params F --out DIR
        (the same code path on a CPU: the demo model, CPU-only configurations, no GPU memory)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import report  # scripts/gpu/report.py, beside this file (the script's folder is on sys.path): checks, the page

from moecli import gguf as moe_gguf
from moecli import machine as moe_machine
from moecli import planner
from moecli.facts import MachineFacts, ModelFacts
from moecli.params import ALL_LAYERS, LlamaParams, TensorOverride
from moecli.units import GiB, MiB

N_PROMPT = 512
N_GEN = 128
BUDGET = 6 * GiB
MEMORY_BUDGETS = (4 * GiB, 8 * GiB, 12 * GiB)
CONTEXTS = (4096, 32768)
THREADS = (16, 4)
# llama.cpp's fitter keeps 1024 MiB free per device unless told otherwise (common/common.h:
# fit_params_target); a 6 GiB card's owner gets that margin inside their 6 GiB.
LLAMA_FIT_MARGIN_MIB = 1024
SAMPLE_INTERVAL_S = 0.05
# The speeds the time estimates assume (tokens/s, 16 threads, full-size model on the team's H100,
# the H100 runs (moecli/planner/__init__.py)): experts on the CPU read into RAM / mmapped, the naive layer split, all on
# the GPU. 4 threads decode at ~0.56x wherever the CPU does expert work (same page).
EXPECTED_TS = {
    "cpu-experts-none": (1250.0, 58.0),
    "cpu-experts-mmap": (250.0, 62.0),
    "naive": (210.0, 23.5),
    "ceiling": (5200.0, 238.0),
}
FOUR_THREAD_DECODE = 0.56
# The time before the first run on the GPU machine with the carried build, an estimate (no lent GPU
# has run it yet; scripts/gpu/README.md's time plan): snapshot, wheels, unpacking and checking the
# carried build ~15 s; the 19.7 GiB model, with the native CPU backend built beside it, ~60 s; RAM
# bandwidth, the plans, the fitter and llama.cpp's estimates ~30 s.
SETUP_ESTIMATE_S = 105.0
FULL_MODEL_BYTES = 21_163_968_896  # the synthetic Qwen3.6-35B-A3B Q4_K_M file (19.7 GiB)
# the configurations whose llama.cpp estimate is asked for (plan@lb has the plan's flags)
ESTIMATED_KINDS = ("plan", "memory", "fitter", "cpu-moe", "naive", "sweep", "ceiling")


# ---------------------------------------------------------------------------------------------
# parsing the tools' output (pure; tests/test_gpu_scripts.py)


def parse_bench_rows(rows: Sequence[dict]) -> dict[str, dict]:
    """llama-bench's JSON rows (and moecli bench's `results`, same field names) -> {"pp": ..., "tg": ...}
    with mean, standard deviation and samples in tokens/s."""
    out = {}
    for row in rows:
        test = "pp" if row.get("n_prompt") else "tg"
        out[test] = {"avg_ts": float(row["avg_ts"]), "stddev_ts": float(row["stddev_ts"]),
                     "samples_ts": [float(x) for x in row.get("samples_ts", [])],
                     "n_tokens": int(row.get("n_prompt") or row.get("n_gen") or 0)}
    return out


@dataclass(frozen=True)
class FitterFlags:
    """What `llama-fit-params` prints on stdout: `-c N -ngl N [-ts A,B] [-ot "PAT=BUFT,PAT=BUFT"]`
    (tools/fit-params/fit-params.cpp; its log goes to stderr)."""

    n_ctx: int
    n_gpu_layers: int  # negative: every layer
    overrides: tuple[TensorOverride, ...]
    tensor_split: str | None
    line: str

    def params(self, **changes) -> LlamaParams:
        ngl = ALL_LAYERS if self.n_gpu_layers < 0 else self.n_gpu_layers
        return LlamaParams(n_gpu_layers=ngl, tensor_overrides=self.overrides, n_ctx=self.n_ctx).with_(**changes)


def parse_fit_params(stdout: str) -> FitterFlags:
    lines = [line.strip() for line in stdout.splitlines() if line.strip().startswith("-c ")]
    if not lines:
        raise ValueError(f"no fitted arguments (-c ... -ngl ...) in llama-fit-params' output: {stdout[-300:]!r}")
    line = lines[-1]
    words = shlex.split(line)
    values: dict[str, str] = {}
    for flag, value in zip(words[::2], words[1::2]):
        values[flag] = value
    if "-c" not in values or "-ngl" not in values:
        raise ValueError(f"llama-fit-params printed {line!r}: expected -c and -ngl")
    overrides = TensorOverride.parse_list(values["-ot"]) if "-ot" in values else ()
    return FitterFlags(int(values["-c"]), int(values["-ngl"]), overrides, values.get("-ts"), line)


def parse_fit_print(stdout: str) -> dict[str, dict[str, int]]:
    """`llama-fit-params --fit-print on`: one line per device, `NAME model context compute` in MiB
    (common/fit.cpp: common_fit_print), the host last."""
    out = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) == 4 and all(w.isdigit() for w in words[1:]):
            model, context, compute = (int(w) for w in words[1:])
            out[words[0]] = {"model": model, "context": context, "compute": compute, "total": model + context + compute}
    return out


def fit_target_mib(free_bytes: int, budget: int) -> int:
    """The `--fit-target` that leaves llama.cpp's fitter what a card of `budget` bytes would give
    it: everything free here minus (budget - its default 1024 MiB margin)."""
    return max(0, free_bytes // MiB - budget // MiB + LLAMA_FIT_MARGIN_MIB)


def llama_bench_args(params: LlamaParams, threads: int, reps: int, n_prompt: int = N_PROMPT,
                     n_gen: int = N_GEN) -> list[str]:
    """llama-bench's flags for a configuration (its context is always prompt + generation)."""
    return [*params.with_(n_threads=None, n_threads_batch=None).to_llama_args(tool="bench"),
            "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps), "-o", "json"]


def placement_args(params: LlamaParams) -> list[str]:
    """The placement and load flags of `params` as `moecli bench` takes them."""
    args = ["-ngl", "all" if params.n_gpu_layers < 0 else str(params.n_gpu_layers)]
    if params.cpu_moe:
        args.append("--cpu-moe")
    if params.n_cpu_moe:
        args += ["--n-cpu-moe", str(params.n_cpu_moe)]
    if params.tensor_overrides:
        args += ["-ot", ",".join(str(o) for o in params.tensor_overrides)]
    if params.load_mode != "auto":
        args += ["-lm", params.load_mode]
    return args


def pin_prefix(threads: int, n_cpus: int) -> list[str]:
    """Fewer threads than the machine's cores run pinned to the first ones (`taskset -c 0-3`), so
    the OS cannot spread them over idle cores' caches and memory channels as a desktop cannot."""
    if threads >= n_cpus:
        return []
    return ["taskset", "-c", "0" if threads == 1 else f"0-{threads - 1}"]


def estimate_seconds(kind: str, load_mode: str, threads: int, reps: int, model_bytes: int, tool: str,
                     n_prompt: int = N_PROMPT, n_gen: int = N_GEN) -> float:
    """A run's expected wall time: loading, then llama-bench's schedule (a warm-up prompt, `reps`
    prompts, a one-token warm-up, `reps` generations) at the speeds of EXPECTED_TS."""
    scale = model_bytes / FULL_MODEL_BYTES
    if kind == "ceiling":
        key = "ceiling"
    elif kind == "naive":
        key = "naive"
    else:
        key = "cpu-experts-none" if load_mode == "none" else "cpu-experts-mmap"
    pp, tg = EXPECTED_TS[key]
    if threads < 16 and key != "ceiling":
        tg *= FOUR_THREAD_DECODE if key != "naive" else 13.2 / 23.5
    per_gib = {"none": 0.6, "mmap": 0.3, "auto": 0.3}.get(load_mode, 0.3) if key != "ceiling" else 0.75
    load = 0.5 + per_gib * model_bytes / GiB
    work = ((1 + reps) * n_prompt / pp + (reps * n_gen + 1) / tg) * scale if n_prompt or n_gen else 0.0
    startup = 4.0 if tool == "moecli" else 1.0  # python, the header, the plan
    return load + work + startup


def run_priority(kind: str, group_index: int, other_mode: bool = False) -> int:
    """The order runs are made in while the lease lasts (issue 9). Groups: 0 = the first context at
    the most threads, 1 = the same context at fewer threads, 2 = the second context at the most
    threads, 3 = the rest.

      1  memory truth: moecli's plan (6 GiB) and its plans at 4, 8 and 12 GiB, first context
      2  group 0: the same flags by llama-bench, the fitter, --cpu-moe, the naive split, the sweep
         in both load modes
      3  group 1 (4 threads pinned): as 2, the sweep in the plan's load mode
      4  group 2 (context 32768): likewise
      5  the all-GPU ceiling (group 0)
      6  the other load mode's sweep in groups 1 and 2; the memory runs at the second context
      7  everything else (group 3; the ceiling at fewer threads)
    """
    if kind == "memory":
        return 1 if group_index == 0 else 6
    if group_index == 0:
        return {"plan": 1, "ceiling": 5}.get(kind, 2)
    if group_index >= 3 or kind == "ceiling":
        return 7
    if other_mode:
        return 6
    return 3 if group_index == 1 else 4


def priority_table(runs: Sequence) -> list[tuple[int, int, float, float]]:
    """(priority, runs, estimated seconds, cumulative seconds) of queued runs, in run order."""
    table: list[tuple[int, int, float, float]] = []
    total = 0.0
    for prio in sorted({r.priority for r in runs}):
        chosen = [r for r in runs if r.priority == prio]
        seconds = sum(r.estimate_s for r in chosen)
        total += seconds
        table.append((prio, len(chosen), seconds, total))
    return table


def read_deadline(path: Path | None, default: float) -> float:
    """The deadline (epoch seconds) poll.sh writes when the lease's end is known (RUN_END_IN),
    else `default`: a later call can move the end of a run started by an earlier one."""
    if path is None:
        return default
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def run_timeout(estimate_s: float, left_s: float) -> float:
    """How long one run may take before it is killed: 4x its estimate (at least 2 minutes), but
    never much past the deadline (a hung load must not eat the rest of the lease)."""
    return max(30.0, min(max(120.0, 4 * estimate_s), left_s + 15))


# ---------------------------------------------------------------------------------------------
# sampling GPU memory


class GpuMemory:
    """NVML on GPU `index`, or nothing (no library, no driver, no GPU: every reading is None)."""

    def __init__(self, index: int = 0) -> None:
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # noqa: BLE001 - any failure means: no GPU to sample
            self.handle = None

    @property
    def available(self) -> bool:
        return self.handle is not None

    def used(self) -> int | None:
        if self.handle is None:
            return None
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def free(self) -> int | None:
        if self.handle is None:
            return None
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self.handle).free)

    def used_by(self, pid: int) -> int | None:
        if self.handle is None:
            return None
        try:
            for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if p.pid == pid and p.usedGpuMemory is not None:
                    return int(p.usedGpuMemory)
        except self._nvml.NVMLError:
            return None
        return None

    def describe(self) -> dict:
        if self.handle is None:
            return {}
        n = self._nvml
        name = n.nvmlDeviceGetName(self.handle)
        info = {"name": name.decode() if isinstance(name, bytes) else str(name),
                "total_bytes": int(n.nvmlDeviceGetMemoryInfo(self.handle).total)}
        for key, call in (("driver", lambda: n.nvmlSystemGetDriverVersion()),
                          ("cuda_driver_version", lambda: n.nvmlSystemGetCudaDriverVersion()),
                          ("compute_capability", lambda: ".".join(map(str, n.nvmlDeviceGetCudaComputeCapability(self.handle)))),
                          ("max_mem_clock_mhz", lambda: n.nvmlDeviceGetMaxClockInfo(self.handle, n.NVML_CLOCK_MEM)),
                          ("bus_width_bits", lambda: n.nvmlDeviceGetMemoryBusWidth(self.handle))):
            try:
                value = call()
                info[key] = value.decode() if isinstance(value, bytes) else value
            except Exception:  # noqa: BLE001 - older drivers lack some queries
                pass
        return info


class PeakWatch:
    """Samples GPU memory while one process runs: the peak of the device's use above what it used
    before the process started, and the peak NVML attributes to the process itself."""

    def __init__(self, gpu: GpuMemory, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.gpu, self.interval = gpu, interval
        self.baseline = gpu.used()
        self.peak_device: int | None = None
        self.peak_process: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        if not self.gpu.available:
            return
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._thread.start()

    def _run(self, pid: int) -> None:
        while True:
            used = self.gpu.used()
            if used is not None and self.baseline is not None:
                self.peak_device = max(self.peak_device or 0, used - self.baseline)
            own = self.gpu.used_by(pid)
            if own is not None:
                self.peak_process = max(self.peak_process or 0, own)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# ---------------------------------------------------------------------------------------------
# the runs


@dataclass
class Run:
    id: str
    priority: int
    group: str  # "c4096-t16", or "memory"
    kind: str  # plan | plan@lb | fitter | cpu-moe | naive | sweep | ceiling | memory
    label: str
    tool: str  # "moecli" | "llama-bench"
    ctx: int
    threads: int
    params: LlamaParams | None  # the placement (None: moecli's own plan, from --vram)
    budget: int | None  # moecli plan runs: the --vram they plan for
    load_mode: str
    n_gen: int = N_GEN
    reps: int = 3
    estimate_s: float = 0.0
    predicted_gpu: int | None = None  # moecli's accounting at the context the tool allocates
    predicted_fits: bool | None = None
    decode_bound: float | None = None
    llama_estimate_mib: int | None = None
    sweep_n: int | None = None
    record: dict = field(default_factory=dict)


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke = args.cpu_smoke
        self.model = Path(args.model)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.gpu = GpuMemory()
        self.machine: MachineFacts = self._machine()
        # the CPUs the runs may use (a profile's cores when only planning for another machine)
        self.n_cpus = self.machine.physical_cores if args.profile else len(os.sched_getaffinity(0))
        self.reps = args.reps
        self.contexts = tuple(args.contexts)
        self.threads = tuple(t for t in args.threads if t <= self.n_cpus) or (self.n_cpus,)
        self.started = time.time()
        self.deadline_default = args.deadline or float("inf")
        self.deadline_file = Path(args.deadline_file) if args.deadline_file else None
        self.facts: ModelFacts = moe_gguf.read_model(self.model)
        self.ram_bw: dict[int, float] = {}
        self.results: dict = {
            "schema": 1, "mode": "cpu-smoke" if self.smoke else ("quick" if args.quick else "full"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "deadline": args.deadline,
            "settings": {"budget_bytes": BUDGET, "memory_budgets": list(MEMORY_BUDGETS), "contexts": list(self.contexts),
                         "threads": list(self.threads), "reps": self.reps, "n_prompt": N_PROMPT, "n_gen": N_GEN,
                         "llama_fit_margin_mib": LLAMA_FIT_MARGIN_MIB, "sample_interval_s": SAMPLE_INTERVAL_S},
            "model": {"path": str(self.model), "bytes": self.model.stat().st_size, "name": self.facts.name,
                      "arch": self.facts.arch, "file_type": self.facts.file_type, "n_params": self.facts.n_params,
                      "n_layer": self.facts.n_layer, "n_expert": self.facts.n_expert},
            "machine": {}, "plans": {}, "fitter": {}, "runs": [], "notes": [],
            # run.sh's steps before this one (snapshot, wheels, build, model), one line each
            "setup": (self.out / "timings.txt").read_text().splitlines() if (self.out / "timings.txt").exists() else [],
        }
        self.queue: list[Run] = []
        self.scale = 1.0  # measured / estimated time so far (calibrates the deadline checks)

    @property
    def deadline(self) -> float:
        return read_deadline(self.deadline_file, self.deadline_default)

    # -- what the machine is -------------------------------------------------------------------
    def _machine(self) -> MachineFacts:
        if self.args.profile:
            return moe_machine.load_profile(self.args.profile, measure_bandwidth=False)
        return moe_machine.probe(measure_bandwidth=False)

    def measure_bandwidth(self) -> None:
        """RAM copy bandwidth (read + write counted) with 1, 4 and all threads, each pinned to the
        first cores like the runs: what bounds decoding where experts live in RAM."""
        size = 128 * MiB if self.smoke else 1 * GiB
        original = os.sched_getaffinity(0)
        for n in sorted({1, *self.threads}):
            cores = sorted(original)[:n]
            try:
                os.sched_setaffinity(0, cores)
                self.ram_bw[n] = moe_machine.measure_ram_bandwidth(n, total_bytes=size)
            finally:
                os.sched_setaffinity(0, original)
        self.machine = replace(self.machine, ram_bandwidth=self.ram_bw[max(self.ram_bw)])

    def describe_machine(self) -> None:
        cpu = ""
        try:
            cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        import psutil

        self.results["machine"] = {
            "gpu": self.gpu.describe(), "gpu_for_planning": [g.__dict__ for g in self.machine.gpus],
            "cpu": cpu, "cpus": self.n_cpus, "physical_cores": moe_machine.physical_cores(),
            "ram_bytes": psutil.virtual_memory().total,
            "ram_bandwidth": {str(k): v for k, v in sorted(self.ram_bw.items())},
            "python": sys.version.split()[0], "source": self.machine.source,
        }

    # -- planning ------------------------------------------------------------------------------
    def machine_args(self, budget: int) -> list[str]:
        if self.smoke:
            return ["--cpu-only"]
        args = ["--vram", f"{budget // GiB}GiB" if budget % GiB == 0 else f"{budget // MiB}MiB"]
        return (["--profile", self.args.profile] + args) if self.args.profile else args

    def moecli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "moecli", *args]

    def cli_plans(self, wanted: Sequence[tuple[int, int, int]]) -> dict[tuple[int, int, int], dict]:
        """`moecli plan` as a user runs it, for each (budget, context, threads), all at once; its JSON
        is what the bench run will load."""
        procs = {}
        for budget, ctx, threads in dict.fromkeys(wanted):
            cmd = self.moecli("plan", str(self.model), *self.machine_args(budget), "-c", str(ctx), "-t", str(threads),
                              "--json")
            procs[(budget, ctx, threads)] = (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                                   text=True))
        return {key: self._plan_entry(key, cmd, *proc.communicate()) for key, (cmd, proc) in procs.items()}

    def _plan_entry(self, key: tuple[int, int, int], cmd: list[str], stdout: str, stderr: str) -> dict:
        budget, ctx, threads = key
        entry: dict = {"command": shlex.join(cmd), "budget_bytes": budget, "ctx": ctx, "threads": threads}
        self.results["plans"][f"{budget // GiB}GiB-c{ctx}-t{threads}"] = entry
        try:
            plan = json.loads(stdout)["plan"]
        except (ValueError, KeyError):
            entry["error"] = (stderr or stdout).strip()[-500:]
            return entry
        gpu = next((d for d in plan["devices"] if d["device"] != "CPU"), None)
        entry.update(llama_args=plan["params"]["llama_args"], fits=plan["fits"], n_ctx=plan["n_ctx"],
                     predicted_gpu_bytes=gpu["total"] if gpu else None,
                     predicted_cpu_bytes=next(d["total"] for d in plan["devices"] if d["device"] == "CPU"),
                     devices=plan["devices"], placement=plan["placement"], decode=plan["decode"],
                     warnings=plan["warnings"], notes=plan["notes"], params=plan["params"])
        return entry

    @staticmethod
    def params_of(plan_params: dict) -> LlamaParams:
        fields = {k: v for k, v in plan_params.items() if k not in ("llama_args", "tensor_overrides")}
        overrides = tuple(TensorOverride(*text.rsplit("=", 1)) for text in plan_params["tensor_overrides"])
        return LlamaParams(**fields, tensor_overrides=overrides)

    def evaluate(self, params: LlamaParams, ctx: int, budget: int = BUDGET, threads: int | None = None) -> planner.Plan:
        machine = self.machine
        if threads is not None and threads in self.ram_bw:
            machine = replace(machine, ram_bandwidth=self.ram_bw[threads])
        return planner.evaluate(self.facts, machine, params.with_(n_ctx=ctx),
                                planner.Wishes(vram_budget=budget, margin=0))

    def predict(self, run: Run) -> None:
        """moecli's accounting of the run's configuration at the context its tool allocates."""
        if run.params is None:
            return
        tool_ctx = run.ctx if run.tool == "moecli" else N_PROMPT + run.n_gen
        try:
            plan = self.evaluate(run.params, tool_ctx, run.budget or BUDGET, run.threads)
        except Exception as exc:  # noqa: BLE001 - a prediction is a bonus, never a reason to stop
            run.record["prediction_error"] = str(exc)
            return
        run.predicted_gpu = plan.gpu.total if plan.gpu else None
        run.predicted_fits = plan.fits
        run.decode_bound = plan.decode.bound

    def sweep_edge(self, ctx: int, load_mode: str) -> int:
        """The smallest --n-cpu-moe that moecli's accounting fits into the whole budget (no margin)."""
        n_expert_layers = self.facts.n_layer
        if not self.machine.gpus:
            return max(0, n_expert_layers // 2)
        for n in range(0, n_expert_layers + 1):
            p = LlamaParams(n_gpu_layers=ALL_LAYERS, n_cpu_moe=n, load_mode=load_mode)
            if self.evaluate(p, ctx).fits:
                return n
        return n_expert_layers

    def naive_ngl(self, ctx: int) -> int:
        """The largest -ngl without overrides that moecli's accounting fits (with the plan's margin)."""
        if not self.machine.gpus:
            return 0
        for ngl in range(self.facts.n_layer + 1, -1, -1):
            plan = planner.evaluate(self.facts, self.machine, LlamaParams(n_gpu_layers=ngl, n_ctx=ctx),
                                    planner.Wishes(vram_budget=BUDGET))
            if plan.fits:
                return ngl
        return 0

    def run_fitter(self, ctx: int) -> FitterFlags | None:
        """llama.cpp's fitter told what a 6 GiB card would leave it; its flags, and its own
        estimate of what they need at this context."""
        entry: dict = {"ctx": ctx}
        self.results["fitter"][str(ctx)] = entry
        if not self.args.fit_params:
            entry["error"] = "no llama-fit-params given"
            return None
        free = self.gpu.free()
        target = fit_target_mib(free, BUDGET) if free is not None else LLAMA_FIT_MARGIN_MIB
        cmd = [self.args.fit_params, "-m", str(self.model), "-c", str(ctx), "-fitt", str(target)]
        entry.update(command=shlex.join(cmd), free_bytes=free, fit_target_mib=target)
        if self.args.dry_run:
            entry["error"] = "dry run: not run"
            return None
        proc = subprocess.run(cmd, capture_output=True, text=True)
        entry["stdout"] = proc.stdout.strip()[-2000:]
        try:
            flags = parse_fit_params(proc.stdout)
        except ValueError as exc:
            entry["error"] = f"{exc}; stderr: {proc.stderr.strip()[-800:]}"
            return None
        entry.update(n_ctx=flags.n_ctx, n_gpu_layers=flags.n_gpu_layers, tensor_split=flags.tensor_split,
                     overrides=[str(o) for o in flags.overrides])
        return flags

    def fill_llama_estimates(self) -> None:
        """llama.cpp's own estimate (MiB, model + context + compute) of each queued configuration on
        the GPU: `llama-fit-params -fitp on` dry runs, eight at a time (each ~1-2 s, mostly CUDA's
        start; one after the other they would cost a minute of the lease)."""
        if not self.args.fit_params or self.args.dry_run or not self.gpu.available:
            return
        from concurrent.futures import ThreadPoolExecutor

        def flags_of(run: Run) -> tuple[str, ...]:
            return tuple(run.params.with_(n_ctx=run.ctx, n_threads=None).to_llama_args())

        def estimate(flags: tuple[str, ...]) -> int | None:
            cmd = [self.args.fit_params, "-m", str(self.model), *flags, "-fitp", "on"]
            devices = parse_fit_print(subprocess.run(cmd, capture_output=True, text=True).stdout)
            gpu = next((v for k, v in devices.items() if k != "Host"), None)
            return gpu["total"] if gpu else None

        runs = [r for r in self.queue if r.params is not None and r.kind in ESTIMATED_KINDS]
        distinct = list(dict.fromkeys(flags_of(r) for r in runs))
        with ThreadPoolExecutor(max_workers=8) as pool:
            estimates = dict(zip(distinct, pool.map(estimate, distinct)))
        for run in runs:
            run.llama_estimate_mib = estimates[flags_of(run)]

    # -- the matrix ----------------------------------------------------------------------------
    def add(self, run: Run) -> Run:
        run.reps = run.reps if run.kind == "memory" else self.reps
        run.estimate_s = estimate_seconds(run.kind, run.load_mode, run.threads, run.reps, self.model.stat().st_size,
                                          run.tool, n_gen=run.n_gen)
        self.predict(run)
        self.queue.append(run)
        return run

    def build(self) -> None:
        top = max(self.threads)
        quick = self.args.quick
        # the groups in the order their runs matter (run_priority): the first context at the most
        # threads, the same context at fewer threads, the second context at the most, then the rest
        order = [(c, t) for c in self.contexts for t in sorted(self.threads, reverse=True)]
        groups = order[:1] if quick else order
        memory_contexts = self.contexts[:1] if quick else self.contexts

        # every `moecli plan` the matrix needs, made at once (each is a Python start and a header
        # read: ~2-3 s one after the other), then llama.cpp's fitter once per context, one at a
        # time (each reads the GPU's free memory, which a concurrent process would change)
        wanted = [(BUDGET, ctx, t) for ctx, t in groups] + [(b, ctx, top) for ctx in memory_contexts
                                                             for b in MEMORY_BUDGETS]
        plans = self.cli_plans(wanted)
        fitters = {ctx: self.run_fitter(ctx) for ctx in dict.fromkeys(ctx for ctx, _ in groups)}
        for index, (ctx, t) in enumerate(groups):
            group = f"c{ctx}-t{t}"
            plan_entry = plans[(BUDGET, ctx, t)]
            if "error" in plan_entry:
                self.results["notes"].append(f"{group}: moecli plan failed: {plan_entry['error']}")
                continue
            plan = self.params_of(plan_entry["params"])
            mode = plan.load_mode
            other = "mmap" if mode == "none" else "none"

            def prio(kind: str, other_mode: bool = False, index: int = index) -> int:
                return run_priority(kind, index, other_mode)

            plan_run = self.add(Run(f"{group}-plan", prio("plan"), group, "plan", "moecli's plan", "moecli", ctx, t,
                                    plan, BUDGET, mode))
            plan_run.predicted_gpu = plan_entry["predicted_gpu_bytes"]
            plan_run.record["plan_llama_args"] = plan_entry["llama_args"]
            self.add(Run(f"{group}-plan-lb", prio("plan@lb"), group, "plan@lb", "moecli's plan, by llama-bench",
                         "llama-bench", ctx, t, plan, None, mode))
            fitter = fitters.get(ctx)
            if fitter is not None:
                fp = fitter.params()
                self.add(Run(f"{group}-fitter", prio("fitter"), group, "fitter", "llama.cpp's fitter (6 GiB card)",
                             "llama-bench", ctx, t, fp, None, fp.load_mode))
            elif self.args.dry_run:  # its flags are known only once it has run: keep its place in the plan
                self.add(Run(f"{group}-fitter", prio("fitter"), group, "fitter", "llama.cpp's fitter (flags found when run)",
                             "llama-bench", ctx, t, None, None, "auto"))
            self.add(Run(f"{group}-cpu-moe", prio("cpu-moe"), group, "cpu-moe", "all experts on CPU (--cpu-moe)",
                         "llama-bench", ctx, t, plan.with_(cpu_moe=True, n_cpu_moe=0, tensor_overrides=()), None, mode))
            ngl = self.naive_ngl(ctx)
            self.add(Run(f"{group}-naive", prio("naive"), group, "naive", f"naive layer split -ngl {ngl}", "llama-bench",
                         ctx, t, LlamaParams(n_gpu_layers=ngl, n_ctx=ctx), None, "auto"))
            for sweep_mode in (mode, other):
                edge = self.sweep_edge(ctx, sweep_mode)
                for n in (edge - 1, edge, edge + 1):
                    if 0 <= n <= self.facts.n_layer:
                        self.add_sweep(group, ctx, t, n, sweep_mode, plan, prio("sweep", sweep_mode != mode))
            if ctx == self.contexts[0]:
                self.add(Run(f"{group}-ceiling", prio("ceiling"), group, "ceiling", "everything on the GPU",
                             "llama-bench", ctx, t, LlamaParams(n_gpu_layers=ALL_LAYERS, n_ctx=ctx), None, "auto"))
        for ctx in memory_contexts:
            for budget in MEMORY_BUDGETS:
                entry = plans[(budget, ctx, top)]
                if "error" in entry:
                    self.results["notes"].append(f"memory {budget // GiB} GiB c{ctx}: moecli plan failed: {entry['error']}")
                    continue
                params = self.params_of(entry["params"])
                run = self.add(Run(f"memory-{budget // GiB}gib-c{ctx}",
                                   run_priority("memory", order.index((ctx, top))), "memory", "memory",
                                   f"moecli's plan at {budget // GiB} GiB", "moecli", ctx, top, params, budget,
                                   params.load_mode, n_gen=16, reps=1))
                run.predicted_gpu = entry["predicted_gpu_bytes"]
                run.record["plan_llama_args"] = entry["llama_args"]
        if quick:
            self.queue = [r for r in self.queue if r.priority <= 2]
        self.queue.sort(key=lambda r: r.priority)  # stable: groups keep their order inside a priority
        self.fill_llama_estimates()

    def add_sweep(self, group: str, ctx: int, t: int, n: int, mode: str, plan: LlamaParams, priority: int) -> Run:
        params = plan.with_(n_gpu_layers=ALL_LAYERS, cpu_moe=False, n_cpu_moe=n, tensor_overrides=(), load_mode=mode)
        label = f"--n-cpu-moe {n} -lm {mode}"
        if self.smoke:  # moecli refuses GPU placement flags without a GPU: the smoke run keeps the rest of the path
            params = params.with_(n_gpu_layers=0, n_cpu_moe=0)
            label = f"-ngl 0 -lm {mode} (CPU smoke, in place of --n-cpu-moe {n})"
        run = self.add(Run(f"{group}-sweep-{n}-{mode}", priority, group, "sweep", label, "moecli",
                           ctx, t, params, BUDGET, mode))
        run.sweep_n = n
        return run

    def extend_sweep(self, done: Run) -> None:
        """A sweep point at the low edge that measured under the budget: also try one more expert
        layer on the GPU (the accounting may be cautious; the measurement decides)."""
        if done.kind != "sweep" or not done.record.get("under_budget") or done.sweep_n in (None, 0):
            return
        measured = [r for r in self.results["runs"] if r.get("kind") == "sweep" and r["group"] == done.group
                    and r["load_mode"] == done.load_mode]
        queued = [r for r in self.queue if r.kind == "sweep" and r.group == done.group and r.load_mode == done.load_mode]
        lowest = min([r["sweep_n"] for r in measured] + [r.sweep_n for r in queued])
        extensions = sum(1 for r in measured if r.get("extension"))
        if done.sweep_n == lowest and extensions < 3:
            run = self.add_sweep(done.group, done.ctx, done.threads, done.sweep_n - 1, done.load_mode, done.params,
                                 done.priority)
            run.record["extension"] = True
            self.queue.remove(run)
            self.queue.insert(0, run)

    # -- running -------------------------------------------------------------------------------
    def command(self, run: Run) -> list[str]:
        prefix = pin_prefix(run.threads, self.n_cpus)
        if run.tool == "llama-bench":
            flags = (llama_bench_args(run.params, run.threads, run.reps, n_gen=run.n_gen) if run.params is not None
                     else ["<llama-fit-params' flags>"])
            return prefix + [self.args.llama_bench, "-m", str(self.model), *flags]
        args = ["bench", str(self.model), *self.machine_args(run.budget or BUDGET), "-c", str(run.ctx), "-t",
                str(run.threads), "-p", str(N_PROMPT), "-n", str(run.n_gen), "-r", str(run.reps), "--json"]
        if run.kind == "sweep":
            args += placement_args(run.params)
        return prefix + self.moecli(*args)

    def execute(self, run: Run) -> None:
        cmd = self.command(run)
        rec = run.record
        rec.update(id=run.id, priority=run.priority, group=run.group, kind=run.kind, label=run.label, tool=run.tool, ctx=run.ctx,
                   threads=run.threads, pinned=bool(pin_prefix(run.threads, self.n_cpus)), load_mode=run.load_mode,
                   reps=run.reps, n_prompt=N_PROMPT, n_gen=run.n_gen, sweep_n=run.sweep_n, budget_bytes=run.budget,
                   flags=run.params.with_(n_threads=None).to_llama_args(tool="bench") if run.params else None,
                   command=shlex.join(cmd), estimate_s=round(run.estimate_s, 1),
                   predicted_gpu_bytes=run.predicted_gpu, predicted_fits=run.predicted_fits,
                   predicted_ctx=run.ctx if run.tool == "moecli" else N_PROMPT + run.n_gen,
                   decode_bound=run.decode_bound, llama_estimate_mib=run.llama_estimate_mib)
        print(f"[{time.strftime('%H:%M:%S')}] {run.id}: {shlex.join(cmd)}", flush=True)
        if self.args.dry_run:
            rec["skipped"] = "dry run"
            return
        pin = None
        if cmd[0] == "taskset" and not shutil.which("taskset"):  # the same pinning without the tool
            cores = sorted(os.sched_getaffinity(0))[:run.threads]
            cmd, pin = cmd[3:], (lambda: os.sched_setaffinity(0, cores))
        watch = PeakWatch(self.gpu)
        began = time.time()
        timeout = run_timeout(run.estimate_s, self.deadline - time.time())
        try:
            try:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pin)
            except OSError as exc:
                rec.update(error=f"could not start: {exc}", wall_s=0.0)
                return
            watch.start(proc.pid)
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                rec["error"] = f"killed after {timeout:.0f} s"
        finally:
            watch.stop()
        rec["wall_s"] = round(time.time() - began, 1)
        rec["rc"] = proc.returncode
        rec["peak_gpu_bytes"] = watch.peak_device
        rec["peak_gpu_process_bytes"] = watch.peak_process
        if run.budget is not None and watch.peak_device is not None:  # moecli runs, at their real context
            rec["under_budget"] = watch.peak_device <= run.budget
        try:
            data = json.loads(stdout)
            rows = data["results"] if isinstance(data, dict) else data
            rec["tests"] = parse_bench_rows(rows)
            if isinstance(data, dict):  # moecli bench: its plan and its own peak readings
                rec["moecli_llama_args"] = data.get("plan")
                if "plan_llama_args" in rec:  # bench loaded what `moecli plan` printed
                    rec["same_as_moecli_plan"] = rec["moecli_llama_args"] == rec["plan_llama_args"]
                rec["moecli_peak_vram_bytes"] = max((r.get("peak_vram_bytes") or 0 for r in rows), default=None)
                rec["moecli_peak_ram_bytes"] = max((r.get("peak_ram_bytes") or 0 for r in rows), default=None)
                rec["n_ctx"] = rows[0].get("n_ctx") if rows else None
            else:
                rec["build_commit"] = rows[0].get("build_commit") if rows else None
                rec["gpu_info"] = rows[0].get("gpu_info") if rows else None
        except (ValueError, KeyError, TypeError, IndexError):
            rec.setdefault("error", f"rc {proc.returncode}: no results in the output")
        if "error" in rec or proc.returncode:
            rec["stderr_tail"] = stderr.strip()[-1500:]
        elif run.tool == "moecli":
            rec["notes"] = [line for line in stderr.splitlines() if line.strip()][-6:]
        if run.estimate_s > 0:
            done = [r for r in self.results["runs"] if r.get("wall_s")] + [rec]
            spent = sum(r["wall_s"] for r in done)
            expected = sum(r["estimate_s"] for r in done)
            self.scale = min(3.0, max(0.5, spent / expected)) if expected else 1.0

    def run_all(self) -> None:
        total = sum(r.estimate_s for r in self.queue)
        print(f"{len(self.queue)} runs planned, about {total / 60:.1f} min by the estimates "
              f"(deadline in {(self.deadline - time.time()) / 60:.1f} min):", flush=True)
        for r in self.queue:
            print(f"  p{r.priority} {r.id:<32} {r.tool:<11} ~{r.estimate_s:5.0f} s  {r.label}", flush=True)
        for prio, n, seconds, total in priority_table(self.queue):
            print(f"  priority {prio}: {n:2d} runs, ~{seconds / 60:4.1f} min, cumulative ~{total / 60:4.1f} min", flush=True)
        self.save()
        while self.queue:
            run = self.queue.pop(0)
            left = self.deadline - time.time()
            if run.estimate_s * self.scale > left:
                run.record.update(id=run.id, priority=run.priority, group=run.group, kind=run.kind, label=run.label,
                                  tool=run.tool, ctx=run.ctx, threads=run.threads, load_mode=run.load_mode,
                                  sweep_n=run.sweep_n,
                                  estimate_s=round(run.estimate_s, 1),
                                  skipped=f"no time left ({left:.0f} s, needs ~{run.estimate_s * self.scale:.0f} s)")
                self.results["runs"].append(run.record)
                continue
            self.results["running"] = {"id": run.id, "label": run.label, "since": round(time.time(), 1)}
            self.save()
            self.execute(run)
            self.results.pop("running", None)
            self.results["runs"].append(run.record)
            summary = report.run_line(run.record)
            print(f"    -> {summary}", flush=True)
            self.extend_sweep(run)
            self.save()
        self.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.save()

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.time() - self.started, 1)
        # what is still queued: a run cut off by the end of the lease still lists what it did not make
        self.results["pending"] = [{"id": r.id, "priority": r.priority, "label": r.label, "group": r.group,
                                    "estimate_s": round(r.estimate_s, 1)} for r in self.queue]
        for name, text in (("results.json", json.dumps(self.results, indent=1, default=str)),
                           ("results.md", report.render(self.results))):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="the full-size GGUF (default with --cpu-smoke: the demo model)")
    ap.add_argument("--llama-bench", required=True, help="llama-bench built from the vendored llama.cpp")
    ap.add_argument("--fit-params", help="llama-fit-params from the same build")
    ap.add_argument("--out", required=True, help="folder for results.json and results.md")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each test (default 3)")
    ap.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=list(CONTEXTS))
    ap.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="thread counts (default 16,4; with --cpu-smoke: all cores, 1)")
    ap.add_argument("--quick", action="store_true", help="only priorities 1-2: the memory runs and the 6 GiB "
                    "comparison at the first context and the most threads")
    ap.add_argument("--deadline", type=float, default=None, help="epoch seconds: skip runs that would end later")
    ap.add_argument("--deadline-file", help="a file holding a later or earlier deadline (epoch seconds), read "
                    "before each run; poll.sh writes it (RUN_END_IN)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same code path on a CPU with the demo model")
    ap.add_argument("--dry-run", action="store_true", help="plan the runs and write the files, measure nothing")
    ap.add_argument("--profile", help="with --dry-run: plan for this machine profile (e.g. h100-80gb)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.cpu_smoke and args.model is None:
        from moecli.synth import ensure_demo_model

        args.model = str(ensure_demo_model())
    if args.model is None:
        ap.error("--model is required (or --cpu-smoke)")
    if args.threads is None:
        args.threads = [len(os.sched_getaffinity(0)), 1] if args.cpu_smoke else list(THREADS)
    if args.profile and not args.dry_run:
        ap.error("--profile plans for another machine: only with --dry-run")
    for tool in (args.llama_bench, args.fit_params):
        if tool and not args.dry_run and not shutil.which(tool):
            ap.error(f"{tool} is not an executable")

    campaign = Campaign(args)
    if not campaign.gpu.available and not (args.cpu_smoke or args.dry_run):
        print("no GPU through NVML: use --cpu-smoke on a CPU, or --dry-run", file=sys.stderr)
        return 2
    if not args.dry_run:
        campaign.measure_bandwidth()
    campaign.describe_machine()
    campaign.build()
    campaign.run_all()
    print(report.checks_section(campaign.results))
    print(f"all results: {campaign.out / 'results.md'}, {campaign.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
