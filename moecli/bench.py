"""Throughput of a placement, measured like llama.cpp's llama-bench so figures compare directly.

Per configuration: load, llama-bench's warm-up, then `reps` repetitions of the prompt test (`pp`,
n_prompt random tokens in n_batch batches) and of the generation test (`tg`, n_gen single-token
decodes), each on an empty KV cache; mean ± sample standard deviation of tokens/s. Field names are
llama-bench's (tools/llama-bench/llama-bench.cpp, its JSON/CSV printers); moecli adds the placement
label, the context, and the peak RAM and VRAM sampled while the configuration ran.
"""

from __future__ import annotations

import csv
import io
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from moecli.errors import NotMoE
from moecli.params import EXPS_REGEX, LlamaParams, TensorOverride
from moecli.planner import Plan

# llama-bench's own CSV/JSON field names, in its order, then ours.
FIELDS = (
    "model_filename", "model_type", "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads",
    "type_k", "type_v", "n_gpu_layers", "n_cpu_moe", "tensor_buft_overrides", "use_mmap", "flash_attn",
    "n_prompt", "n_gen", "n_depth", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
    "label", "load_mode", "n_ctx", "peak_ram_bytes", "peak_vram_bytes", "samples_ns", "samples_ts",
)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1), as llama-bench's stdev()."""
    if len(values) <= 1:
        return 0.0
    m = mean(values)
    return math.sqrt(max(sum((v - m) ** 2 for v in values) / (len(values) - 1), 0.0))


# Repetitions "agree" when every one is within this factor of their median. Runs on one machine
# differ by a few percent to ~20 % (decode at ~60 tok/s varied by 2-12 tok/s between llama-bench
# runs on an H100 machine: the H100 runs described in moecli.planner); a repetition twice as slow
# or as fast as the median means something else used the machine meanwhile.
AGREE_FACTOR = 2.0


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return 0.0
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def agree(samples: Sequence[float], factor: float = AGREE_FACTOR) -> bool:
    """Whether every sample is within `factor` of the samples' median (so one outlier is caught
    whichever side it falls on, and a few repetitions are enough to judge)."""
    m = median(samples)
    return m > 0 and all(m / factor <= s <= m * factor for s in samples)


@dataclass(frozen=True)
class BenchResult:
    """One test (pp or tg) of one configuration."""

    label: str  # "plan", "--n-cpu-moe 30", "all experts on CPU", ...
    model_filename: str
    model_type: str
    model_size: int
    model_n_params: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    type_k: str
    type_v: str
    n_gpu_layers: int
    n_cpu_moe: int
    tensor_buft_overrides: str  # llama-bench's form: PATTERN=BUFT;PATTERN=BUFT
    use_mmap: bool
    load_mode: str
    flash_attn: str
    n_prompt: int
    n_gen: int
    n_depth: int
    n_ctx: int
    samples_ns: tuple[int, ...]
    peak_ram_bytes: int
    peak_vram_bytes: int | None

    @property
    def test(self) -> str:
        name = f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"
        return name + (f" @ d{self.n_depth}" if self.n_depth else "")

    @property
    def samples_ts(self) -> tuple[float, ...]:
        n_tokens = self.n_prompt + self.n_gen
        return tuple(n_tokens * 1e9 / ns for ns in self.samples_ns)

    @property
    def avg_ns(self) -> int:
        return round(mean(self.samples_ns))

    @property
    def stddev_ns(self) -> int:
        return round(stdev(self.samples_ns))

    @property
    def avg_ts(self) -> float:
        return mean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return stdev(self.samples_ts)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(test=self.test, avg_ns=self.avg_ns, stddev_ns=self.stddev_ns, avg_ts=self.avg_ts,
                    stddev_ts=self.stddev_ts, samples_ns=list(self.samples_ns), samples_ts=list(self.samples_ts))
        return data


class PeakSampler:
    """Samples this process's resident memory and the GPU's used memory in a background thread
    while a configuration runs; `stop()` returns the peaks (VRAM None without a GPU probe)."""

    def __init__(self, vram_used: Callable[[], int | None] | None = None, interval: float = 0.05) -> None:
        self._vram_used = vram_used
        self._interval = interval
        import psutil  # only where a bench runs: `plan` renders with this module too

        self._process = psutil.Process()
        self._done = threading.Event()
        self.peak_ram = 0
        self.peak_vram: int | None = None
        self._thread = threading.Thread(target=self._run, name="moecli-peak-sampler", daemon=True)

    def _sample(self) -> None:
        self.peak_ram = max(self.peak_ram, self._process.memory_info().rss)
        if self._vram_used is not None:
            used = self._vram_used()
            if used is not None:
                self.peak_vram = max(self.peak_vram or 0, used)

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            self._sample()

    def __enter__(self) -> PeakSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self._sample()


@dataclass(frozen=True)
class BenchSpec:
    n_prompt: int = 512  # llama-bench -p
    n_gen: int = 128  # llama-bench -n
    n_depth: int = 0  # llama-bench -d
    reps: int = 5  # llama-bench -r


def neighbours(plan: Plan, steps: Iterable[int] = (1, 2)) -> list[tuple[str, LlamaParams]]:
    """Configurations around a plan, for benchmarking: the plan, +-k expert layers on the GPU, all
    experts on the CPU, a naive layer split of the same VRAM, and the other load mode. The ones
    with more on the GPU may not fit: evaluate them before loading. Also twice the micro-batch."""
    if not plan.is_moe:
        raise NotMoE(f"{plan.model} is a dense model: the sweep moves experts, and it has none",
                     "benchmark it with `moecli bench` without --sweep")
    base = plan.params
    layers = plan.placement.expert_layers
    on_gpu = len(plan.placement.expert_layers_gpu)
    out: list[tuple[str, LlamaParams]] = [("plan", base)]

    def with_gpu_layers(count: int) -> LlamaParams:
        if count <= 0:
            return base.with_(cpu_moe=True, n_cpu_moe=0, tensor_overrides=())
        return base.with_(cpu_moe=False, n_cpu_moe=layers[len(layers) - count], tensor_overrides=())

    for k in steps:
        for sign, word in ((1, "more"), (-1, "fewer")):
            count = on_gpu + sign * k
            if 0 <= count <= len(layers) and count != on_gpu:
                p = with_gpu_layers(count)
                flag = "--cpu-moe" if p.cpu_moe else f"--n-cpu-moe {p.n_cpu_moe}"
                out.append((f"{k} {word} expert layer{'s' if k > 1 else ''} on GPU ({flag})", p))
    out.append(("all experts on CPU (--cpu-moe)", with_gpu_layers(0)))
    naive = next((a for a in plan.alternatives if a.label.startswith("naive")), None)
    if naive is not None:
        out.append((naive.label, naive.params))
    other = "mmap" if base.load_mode == "none" else "none"
    out.append((f"plan with -lm {other}", base.with_(load_mode=other)))
    big = base.n_ubatch * 2  # a larger micro-batch amortises the copies of CPU experts for prompts
    out.append((f"plan with -ub {big}", base.with_(n_ubatch=big, n_batch=max(base.n_batch, big))))
    return _unique(out)


def cpu_neighbours(plan: Plan, logical_cores: int) -> list[tuple[str, LlamaParams]]:
    """Configurations around a plan on the CPU alone (no placement to move): other thread counts
    (one fewer, and every hardware thread), half and twice the micro-batch, the other load mode."""
    base = plan.params
    threads = base.n_threads or logical_cores
    out: list[tuple[str, LlamaParams]] = [("plan", base)]
    for n in sorted({max(1, threads - 1), logical_cores} - {threads}):
        out.append((f"plan with -t {n}", base.with_(n_threads=n)))
    for ub in (base.n_ubatch // 2, base.n_ubatch * 2):
        if ub >= 1:
            out.append((f"plan with -ub {ub}", base.with_(n_ubatch=ub, n_batch=max(base.n_batch, ub))))
    other = "none" if base.use_mmap else "mmap"
    out.append((f"plan with -lm {other}", base.with_(load_mode=other)))
    return _unique(out)


def _unique(out: list[tuple[str, LlamaParams]]) -> list[tuple[str, LlamaParams]]:
    seen, unique = set(), []
    for label, params in out:
        if params not in seen:
            seen.add(params)
            unique.append((label, params))
    return unique


def sweep(plan: Plan, fits: Callable[[LlamaParams], bool], label: str = "plan", *,
          candidates: list[tuple[str, LlamaParams]] | None = None) -> tuple[list[tuple[str, LlamaParams]], list[str]]:
    """`moecli bench --sweep`: the plan (named `label`) and its neighbours (`neighbours`: +-1-2
    expert layers on the GPU, all experts on the CPU, a naive layer split, the other load mode, a
    larger -ub; or `candidates`, e.g. `cpu_neighbours`), keeping those that `fits(params)` accepts;
    also the labels of those left out. A configuration that does not fit is not loaded: on a GPU
    it would fail to allocate, or slow the machine down."""
    configs, left_out = [(label, plan.params)], []
    for name, params in (neighbours(plan) if candidates is None else candidates)[1:]:  # [0] is the plan itself
        if fits(params):
            configs.append((name, params))
        else:
            left_out.append(name)
    return configs, left_out


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a configuration was measured: `rows` holds the repetitions done by then."""

    def __init__(self, rows: list[BenchResult]) -> None:
        super().__init__()
        self.rows = rows


def run_config(path: Path, label: str, params: LlamaParams, spec: BenchSpec, *,
               load: Callable[[Path, LlamaParams], object],
               vram_used: Callable[[], int | None] | None = None,
               on_rep: Callable[[str, int], None] | None = None) -> list[BenchResult]:
    """Measure one configuration: its pp and tg rows (a test with 0 tokens is skipped, as in
    llama-bench). `load(path, params)` returns an engine (moecli.engine.Engine.load)."""
    tests = [(n, 0) for n in (spec.n_prompt,) if n > 0] + [(0, n) for n in (spec.n_gen,) if n > 0]
    samples: dict[tuple[int, int], list[int]] = {}
    interrupted = False
    with PeakSampler(vram_used) as peaks:
        with load(path, params) as engine:
            try:
                for n_prompt, n_gen in tests:
                    engine.bench_warmup(n_prompt, n_gen)
                    runs = samples.setdefault((n_prompt, n_gen), [])
                    for rep in range(spec.reps):
                        if n_prompt:
                            seconds = engine.bench_prompt(n_prompt, depth=spec.n_depth, seed=rep)
                        else:
                            seconds = engine.bench_gen(n_gen, depth=spec.n_depth, seed=rep)
                        runs.append(round(seconds * 1e9))
                        if on_rep:
                            on_rep(f"pp{n_prompt}" if n_prompt else f"tg{n_gen}", rep + 1)
            except KeyboardInterrupt:  # keep the repetitions measured (Interrupted carries them)
                interrupted = True
            facts = dict(model_type=engine.model_type, model_size=engine.model_size,
                         model_n_params=engine.model_n_params, n_threads=engine.n_threads, n_ctx=engine.n_ctx,
                         load_mode=engine.report.load_mode or params.load_mode,
                         flash_attn=_flash(engine.report.flash_attn, params.flash_attn))
    rows = [
        BenchResult(
            label=label, model_filename=str(path), n_batch=params.n_batch, n_ubatch=params.n_ubatch,
            type_k=params.type_k, type_v=params.type_v, n_gpu_layers=params.n_gpu_layers,
            n_cpu_moe=params.n_cpu_moe, tensor_buft_overrides=_overrides(params),
            use_mmap=facts["load_mode"] in ("mmap", "mmap+mlock"),
            n_prompt=n_prompt, n_gen=n_gen, n_depth=spec.n_depth, samples_ns=tuple(runs),
            peak_ram_bytes=peaks.peak_ram, peak_vram_bytes=peaks.peak_vram, **facts,
        )
        for (n_prompt, n_gen), runs in samples.items() if runs
    ]
    if interrupted:
        raise Interrupted(rows)
    return rows


def _flash(resolved: bool | None, wished: str) -> str:
    return wished if resolved is None else ("on" if resolved else "off")


def _overrides(params: LlamaParams) -> str:
    """The explicit overrides as llama-bench prints them (`--n-cpu-moe` is its own field there)."""
    explicit = list(params.tensor_overrides)
    if params.cpu_moe:
        explicit.append(TensorOverride(EXPS_REGEX))
    return ";".join(str(o) for o in explicit) or "none"


def to_csv(results: Sequence[BenchResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    for result in results:
        data = result.to_dict()
        writer.writerow([" ".join(str(v) for v in data[f]) if f.startswith("samples") else data[f] for f in FIELDS])
    return buffer.getvalue()


# Two decode figures within this fraction of each other are the same speed on a shared machine
# (repetitions on this project's 2-core box differ by several percent): between such
# configurations the faster prompt decides.
SAME_SPEED = 0.05


def fastest(results: Sequence[BenchResult]) -> str | None:
    """The label of the fastest configuration: the highest decode (tg) speed, and among those
    within SAME_SPEED of it the highest prompt (pp) speed; by prompt speed alone without a tg row."""
    tg = {r.label: r.avg_ts for r in results if r.n_gen and not r.n_prompt}
    pp = {r.label: r.avg_ts for r in results if r.n_prompt and not r.n_gen}
    if tg:
        best = max(tg.values())
        close = [label for label, v in tg.items() if v >= best * (1 - SAME_SPEED)]
        return max(close, key=lambda label: (pp.get(label, 0.0), tg[label]))
    return max(pp, key=pp.get) if pp else None
