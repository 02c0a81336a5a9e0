"""The speed of a configuration: the decode estimate (the bytes each token reads on each device
over that device's bandwidth), and the model of where the time goes fitted to this machine's
measurements (`predict`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from moecli.facts import GpuFacts, MachineFacts
from moecli.params import CPU, LlamaParams
from moecli.planner.types import GPU, Calibration, DecodeEstimate, Plan, Speed, SpeedFigure, SpeedInputs
from moecli.units import fmt_bytes

if TYPE_CHECKING:
    from moecli.planner.model import _Model
    from moecli.planner.placement import _Where

# Decoding reaches 25-60 % of the memory-bandwidth bound on real systems: a rule of thumb from
# community reports of llama.cpp on MoE models, e.g. GTX 1060 6 GB owners' ~17 tok/s with
# Qwen3.6-35B-A3B Q4_K_M (--n-cpu-moe 35, --no-mmap, DDR4), about a third of this estimate's
# ~47 tok/s bound for that machine (configs/machines/gtx1060-6gb.toml; tests/test_planner.py checks
# the bound). The H100 runs (see moecli.planner) reached ~17 % all on the GPU and ~25 % hybrid: on
# a card that fast per-token overheads, not bytes, dominate.
EFFICIENCY = (0.25, 0.60)


def _tensor_bytes_per_token(m: _Model, devices, per_device: dict[str, int]) -> None:
    """Add to `per_device` the weight bytes one decoded token reads on each tensor's device
    (`devices`, in m.tensors' order): top-k of the routed experts, one row of the embedding, every
    other loaded tensor whole."""
    f = m.facts
    share = f.n_expert_used / f.n_expert if f.n_expert else 1.0
    for t, device in zip(m.tensors, devices):
        if device is None:
            continue
        if t.kind:
            per_device[device] += int(t.info.n_bytes * share)
        elif t.is_input:
            per_device[device] += t.info.n_bytes // max(1, t.info.shape[-1])  # one row per token
        else:
            per_device[device] += t.info.n_bytes


def _decode(m: _Model, where: _Where, machine: MachineFacts, gpu: GpuFacts | None, copied: int) -> DecodeEstimate:
    f = m.facts
    per_device = {GPU: 0, CPU: 0}
    _tensor_bytes_per_token(m, where.devices, per_device)
    if copied:  # the GPU reads its copy of a tied head, not the CPU's embedding table
        per_device[GPU] += copied
    for layer, size in m.recurrent_per_layer:  # each token reads and rewrites the state
        per_device[GPU if gpu is not None and where.layer_on_gpu(m, layer) else CPU] += 2 * size

    gpu_name = f"CUDA{gpu.index}" if gpu is not None else GPU
    bandwidth = {GPU: gpu.bandwidth if gpu is not None else None, CPU: machine.ram_bandwidth}
    used = [d for d in (GPU, CPU) if per_device[d]]
    names = {GPU: gpu_name, CPU: CPU}
    bytes_out = tuple((names[d], per_device[d]) for d in used)
    bw_out = tuple((names[d], bandwidth[d]) for d in used)
    missing = [names[d] for d in used if not bandwidth[d]]
    if missing:
        return DecodeEstimate(None, None, None, bytes_out, bw_out,
                              f"no estimate: the memory bandwidth of {', '.join(missing)} is unknown "
                              "(give a machine profile, or let moecli probe this machine)")
    seconds = sum(per_device[d] / bandwidth[d] for d in used)
    bound = 1.0 / seconds if seconds > 0 else None
    parts = ", ".join(f"{fmt_bytes(per_device[d])} from {names[d]} at {bandwidth[d] / 1e9:.0f} GB/s" for d in used)
    # the efficiency range and the H100's 17-25 %: see EFFICIENCY
    basis = (f"estimate: each token reads {parts} (routed experts: {f.n_expert_used} of {f.n_expert}; "
             "recurrent state read and written; KV reads of a short context ignored); "
             f"bound {bound:.0f} tok/s; real systems reach {EFFICIENCY[0]:.0%}-{EFFICIENCY[1]:.0%} of such a bound "
             "(community reports; on a card as fast as an H100 per-token overheads dominate and llama.cpp "
             "reached 17-25 %)"
             if bound else "estimate: nothing to read")
    return DecodeEstimate(bound, bound * EFFICIENCY[0] if bound else None, bound * EFFICIENCY[1] if bound else None,
                          bytes_out, bw_out, basis)


# ---------------------------------------------------------------------------------------------
# the speed model fitted to this machine's measurements (issue 15)
#
# decode, seconds per token = Σ_device bytes read there / its bandwidth x a fitted factor
#                             + a per-token overhead + a per-layer overhead x layers
# prompt, seconds per token = the compute per token (2 FLOPs per active weight) over a throughput
#                             + the weights read (and, with a GPU, copied to it) once per ubatch
# The terms are fitted by least squares on relative error to the measurements of this machine
# (same device kind, same thread count): one term (a scale of the nominal figure) from one
# configuration, more terms as more distinct configurations are measured, never a negative one.

# Nominal figures that only weigh the prompt's terms against each other before a fit scales them
# (a fitted scale replaces them on this machine): a few tens of GFLOP/s per CPU thread for
# quantized matrix products with AVX2; a GPU's throughput taken as ~100 FLOPs per byte of its
# memory bandwidth; host->device copies of 12 GB/s from pinned memory (PCIe 3 x16, a GTX 1060's
# link) and half that from pageable memory (the H100 runs measured 55 vs 8 GB/s on PCIe 5).
NOMINAL_CPU_FLOPS_PER_THREAD = 20e9
NOMINAL_GPU_FLOPS_PER_BYTE_S = 100.0
NOMINAL_COPY_PINNED = 12e9
NOMINAL_COPY_PAGEABLE = 6e9
MAX_SAMPLES = 64  # the most recent distinct configurations a fit uses
# What a point's weight never goes below: the model's own error (a fit to a point measured to 0.1 %
# is still no better than the model is).
MODEL_ERROR = 0.05
PROMPT_TOKENS = 512  # the prompt figure is llama-bench's pp512
GEN_TOKENS = 128  # the decode figure is its tg128


def model_key(facts) -> str:
    """A model as measurements name it: its first file's name and its tensor bytes."""
    first = facts.shards[0].location if facts.shards else facts.source
    return f"{first.replace(chr(92), '/').rsplit('/', 1)[-1]}:{facts.n_bytes}"


def config_key(params: LlamaParams, n_threads: int) -> str:
    """A configuration as measurements name it: llama-bench's flags (no context: the speed of a
    test does not depend on the context's size, only on the cells in use)."""
    return " ".join(params.with_(n_threads=params.n_threads or n_threads).to_llama_args("bench"))


def _speed_inputs(m: _Model, where: _Where, machine: MachineFacts, gpu: GpuFacts | None, params: LlamaParams,
                  decode: DecodeEstimate) -> SpeedInputs:
    from moecli.planner.memory import OP_OFFLOAD_MIN_BATCH

    f = m.facts
    share = f.n_expert_used / f.n_expert if f.n_expert else 1.0
    flops = {GPU: 0.0, CPU: 0.0}
    weights = {GPU: 0, CPU: 0}
    offload = gpu is not None and params.n_ubatch >= OP_OFFLOAD_MIN_BATCH
    for t, device in zip(m.tensors, where.devices):
        if device is None or t.is_input:
            continue
        weights[device] += t.info.n_bytes
        if t.layer is None:  # the output head: llama-bench's prompt test takes the last token's logits only
            continue
        n = t.info.n_params * (share if t.kind else 1.0)
        flops[GPU if offload else device] += 2 * n
    threads = params.n_threads or machine.physical_cores
    gpu_name = f"CUDA{gpu.index}" if gpu is not None else GPU
    return SpeedInputs(
        model=model_key(f), config=config_key(params, threads), n_layer=f.n_layer, n_threads=threads,
        n_ubatch=params.n_ubatch, gpu=gpu.name if gpu is not None else None,
        decode_bytes=decode.bytes_per_token,
        bandwidths=(((gpu_name, gpu.bandwidth),) if gpu is not None else ()) + ((CPU, machine.ram_bandwidth),),
        prompt_flops=tuple((gpu_name if d == GPU else d, v) for d, v in flops.items() if v),
        prompt_weight_bytes=tuple((gpu_name if d == GPU else d, v) for d, v in weights.items() if v),
        prompt_copy_bytes=weights[CPU] if offload else 0, pinned=not params.use_mmap)


def _bw(inputs: SpeedInputs, device: str) -> float | None:
    return dict(inputs.bandwidths).get(device)


def _decode_columns(x: SpeedInputs) -> dict[str, float] | None:
    """The decode model's features of one configuration: seconds at nominal bandwidth per device,
    1 (a per-token overhead), layers (a per-layer overhead)."""
    cols = {"bytes/bandwidth": 0.0, "per token": 1.0, "per layer": float(x.n_layer)}
    for device, n in x.decode_bytes:
        bw = _bw(x, device)
        if not bw:
            return None
        cols["bytes/bandwidth"] += n / bw
        cols[f"bytes/bandwidth {'CPU' if device == CPU else 'GPU'}"] = n / bw
    return cols


def _prompt_columns(x: SpeedInputs, n_prompt: int = PROMPT_TOKENS) -> dict[str, float] | None:
    """The prompt model's features: compute at nominal throughput per device, weights read per
    ubatch at nominal bandwidth, weights copied to the GPU per ubatch, 1 (a per-token overhead).
    A prompt shorter than the micro-batch is one ubatch of its own length."""
    n_ubatch = max(1, min(x.n_ubatch, n_prompt))
    cols = {"compute": 0.0, "per token": 1.0, "per layer": float(x.n_layer)}
    nominal = 0.0
    for device, n in x.prompt_flops:
        if device == CPU:
            s = n / (NOMINAL_CPU_FLOPS_PER_THREAD * x.n_threads)
        else:
            bw = _bw(x, device)
            if not bw:
                return None
            s = n / (NOMINAL_GPU_FLOPS_PER_BYTE_S * bw)
        cols[f"compute {'CPU' if device == CPU else 'GPU'}"] = s
        nominal += s
    reads = 0.0
    for device, n in x.prompt_weight_bytes:
        bw = _bw(x, device)
        if bw:
            reads += n / bw / n_ubatch
    copies = x.prompt_copy_bytes / (NOMINAL_COPY_PINNED if x.pinned else NOMINAL_COPY_PAGEABLE) / n_ubatch
    cols["weights per ubatch"] = reads + copies
    cols["compute"] = nominal + reads + copies  # the nominal time: what one scale factor fits
    if copies:
        cols["copies per ubatch"] = copies
    return cols


# the term sets each model tries, simplest first; the first one is a scale of the nominal time
# (a per-layer overhead carries over between sizes better than a per-token one: it is tried first)
_DECODE_TERMS = (("bytes/bandwidth",), ("bytes/bandwidth", "per layer"), ("bytes/bandwidth", "per token"),
                 ("bytes/bandwidth", "per token", "per layer"),
                 ("bytes/bandwidth CPU", "bytes/bandwidth GPU", "per layer"),
                 ("bytes/bandwidth CPU", "bytes/bandwidth GPU", "per token", "per layer"))
_PROMPT_TERMS = (("compute",), ("compute", "per layer"), ("compute", "per token"), ("compute", "weights per ubatch"),
                 ("compute CPU", "compute GPU"), ("compute CPU", "compute GPU", "copies per ubatch"),
                 ("compute CPU", "compute GPU", "copies per ubatch", "per token"))


def _solve(rows: list[list[float]], ys: list[float], spreads: Sequence[float] | None = None) -> list[float] | None:
    """Least squares on relative error (each row divided by its y), each point weighted by how
    well it was measured (`spreads`: the relative standard deviation of its repetitions, floored at
    MODEL_ERROR); by the normal equations; None where they are singular or ill-conditioned."""
    k = len(rows[0])
    a = [[0.0] * k for _ in range(k)]
    b = [0.0] * k
    for i, (row, y) in enumerate(zip(rows, ys)):
        spread = max(MODEL_ERROR, spreads[i]) if spreads else MODEL_ERROR
        w = 1.0 / (y * y * spread * spread)
        for i in range(k):
            b[i] += w * row[i] * y
            for j in range(k):
                a[i][j] += w * row[i] * row[j]
    scale = [a[i][i] ** 0.5 or 1.0 for i in range(k)]  # equilibrate before judging the condition
    a = [[a[i][j] / (scale[i] * scale[j]) for j in range(k)] for i in range(k)]
    b = [b[i] / scale[i] for i in range(k)]
    for col in range(k):  # Gaussian elimination with partial pivoting
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-9:
            return None
        a[col], a[pivot], b[col], b[pivot] = a[pivot], a[col], b[pivot], b[col]
        for r in range(col + 1, k):
            factor = a[r][col] / a[col][col]
            for c in range(col, k):
                a[r][c] -= factor * a[col][c]
            b[r] -= factor * b[col]
    x = [0.0] * k
    for i in reversed(range(k)):
        x[i] = (b[i] - sum(a[i][j] * x[j] for j in range(i + 1, k))) / a[i][i]
    return [x[i] / scale[i] for i in range(k)]


def fit(points: Sequence[tuple[dict[str, float], float]], target: dict[str, float],
        term_sets: Sequence[tuple[str, ...]],
        spreads: Sequence[float] | None = None) -> tuple[float, tuple[tuple[str, float], ...]] | None:
    """Seconds per token predicted for `target` from `points` (features, measured seconds per
    token; `spreads`: each point's relative standard deviation); None without points.

    Which terms: only those the target has and the points vary in, every coefficient positive.
    One point: the first set (a scale of the nominal figure). Two: the first admissible set of two
    terms in the order given (the one that carries over best first), else one. Three or more: of
    the sets with fewer terms than points, the one whose leave-one-out error is smallest (a term
    must earn its place by predicting runs it was not fitted to), fewer terms on a tie."""
    if not points:
        return None
    spreads = list(spreads) if spreads else [0.0] * len(points)

    def solve(terms, idx):
        coef = _solve([[points[i][0][t] for t in terms] for i in idx], [points[i][1] for i in idx],
                      [spreads[i] for i in idx])
        return None if coef is None or any(c <= 0 for c in coef) else coef

    def usable(terms) -> bool:
        if any(t not in target or any(t not in p for p, _ in points) for t in terms):
            return False
        return len(terms) == 1 or not any(all(p[t] == 0 for p, _ in points) for t in terms)

    k = len(points)
    candidates = [t for t in term_sets if usable(t)]
    if k <= 2:
        order = [t for t in candidates if len(t) == k] + [t for t in candidates if len(t) < k]
        chosen = next(((t, c) for t in order if (c := solve(t, range(k))) is not None), None)
    else:
        scored = []
        for terms in candidates:
            if len(terms) >= k or (coef := solve(terms, range(k))) is None:
                continue
            errors = []
            for leave in range(k):
                rest = [i for i in range(k) if i != leave]
                fold = terms
                while fold and (c := solve(fold, rest)) is None:
                    # a term that comes out negative without this run: the fold does without it
                    raw = _solve([[points[i][0][t] for t in fold] for i in rest], [points[i][1] for i in rest],
                                 [spreads[i] for i in rest])
                    fold = fold[:1] if raw is None else tuple(t for t, ci in zip(fold, raw) if ci > 0)
                    if len(fold) == 1 and (c := solve(fold, rest)) is None:
                        fold = ()
                    elif len(fold) == 1:
                        break
                if not fold:
                    break
                predicted = sum(ci * points[leave][0][t] for ci, t in zip(c, fold))
                errors.append((predicted / points[leave][1] - 1) ** 2)
            if len(errors) == k:
                scored.append((sum(errors) / k, len(terms), terms, coef))
        scored.sort(key=lambda x: (round(x[0], 6), x[1]))
        chosen = (scored[0][2], scored[0][3]) if scored else None
    if chosen is None:
        return None
    terms, coef = chosen
    seconds = sum(c * target[t] for c, t in zip(coef, terms))
    return (seconds, tuple(zip(terms, coef))) if seconds > 0 else None


def _spread(ys: list[float], spreads: list[float]) -> float:
    """The relative uncertainty of the mean of runs: within each run, its repetitions' spread;
    between runs, theirs."""
    mean = sum(ys) / len(ys)
    within = max(spreads) if spreads else 0.0
    between = (sum((y - mean) ** 2 for y in ys) / (len(ys) - 1)) ** 0.5 / mean if len(ys) > 1 else 0.0
    return max(within, between) / len(ys) ** 0.5


def _same_devices(then: tuple[tuple[str, float | None], ...],
                  now: tuple[tuple[str, float | None], ...]) -> tuple[tuple[str, float | None], ...]:
    current = dict(now)
    return tuple((d, current.get(d) or bw) for d, bw in then)


def predict(inputs: SpeedInputs, decode: DecodeEstimate, calibration: Calibration | None) -> Speed:
    """Decode and prompt speed of a configuration, each as one figure with its basis: measured
    (this model and configuration were benched), calibrated from this machine's runs, or the
    uncalibrated estimate (decode: the bound and the range real systems reach; prompt: none)."""
    samples = calibration.samples if calibration else ()
    figures = []
    for test, columns, terms in (("tg", _decode_columns, _DECODE_TERMS), ("pp", _prompt_columns, _PROMPT_TERMS)):
        mine = [s for s in samples if s.test == test]
        size = PROMPT_TOKENS if test == "pp" else GEN_TOKENS
        same = [s for s in mine if s.inputs.model == inputs.model and s.inputs.config == inputs.config
                and (test == "tg" or s.n_tokens in (0, size))]  # decode's speed hardly depends on n_gen
        if same:
            last = max(same, key=lambda s: s.when)
            figures.append(SpeedFigure(test, "measured", last.tokens_per_s, n_runs=len(same), when=last.when))
            continue
        group = [s for s in mine if (s.inputs.gpu, s.inputs.n_threads) == (inputs.gpu, inputs.n_threads)]
        target = columns(inputs)
        points: dict[tuple[str, str], list] = {}  # the newest runs of each distinct configuration
        for s in sorted(group, key=lambda s: s.when, reverse=True):
            # the nominal bandwidths of now for every run: a re-measured RAM bandwidth (a noisy
            # figure on a busy machine) must not shift what the fit learnt of this machine
            x = replace(s.inputs, bandwidths=_same_devices(s.inputs.bandwidths, inputs.bandwidths))
            cols = columns(x, s.n_tokens or size) if test == "pp" else columns(x)
            if cols is None or s.tokens_per_s <= 0:
                continue
            key = (s.inputs.model, s.inputs.config, s.n_tokens if test == "pp" else 0)
            points.setdefault(key, [cols, [], []])[1].append(1.0 / s.tokens_per_s)
            points[key][2].append(s.spread)
        used = [(c, ys) for c, ys, _ in list(points.values())[:MAX_SAMPLES]]
        # a configuration measured k times: the mean of its runs, its spread over sqrt(k) (runs that
        # disagree, as on a busy machine, count as their disagreement says)
        spreads = [_spread(ys, sp) for _, ys, sp in list(points.values())[:MAX_SAMPLES]]
        fitted = fit([(c, sum(ys) / len(ys)) for c, ys in used], target, terms, spreads) if target is not None else None
        if fitted is not None:
            seconds, coef = fitted
            figures.append(SpeedFigure(test, "calibrated", 1.0 / seconds, n_runs=sum(len(ys) for _, ys in used),
                                       n_configs=len(used), terms=coef))
        elif test == "tg" and decode.bound is not None:
            figures.append(SpeedFigure(test, "estimate", None, low=decode.low, high=decode.high, bound=decode.bound,
                                       other_runs=len(mine)))
        else:
            figures.append(SpeedFigure(test, "none", None, other_runs=len(mine)))
    return Speed(figures[0], figures[1], inputs)


def calibrated(plan: Plan, calibration: Calibration | None) -> Plan:
    """The plan with its speed predicted from this machine's measurements (the planner's own
    `plan` and `evaluate` know none)."""
    if plan.speed is None:
        return plan
    return replace(plan, speed=predict(plan.speed.inputs, plan.decode, calibration))
