"""The decode estimate: the bytes each token reads on each device over that device's bandwidth."""

from __future__ import annotations

from typing import TYPE_CHECKING

from moecli.facts import GpuFacts, MachineFacts
from moecli.params import CPU
from moecli.planner.types import GPU, DecodeEstimate
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


def _decode(m: _Model, where: _Where, machine: MachineFacts, gpu: GpuFacts | None, copied: int) -> DecodeEstimate:
    f = m.facts
    per_device = {GPU: 0, CPU: 0}
    share = f.n_expert_used / f.n_expert if f.n_expert else 1.0
    for t, device in zip(m.tensors, where.devices):
        if device is None:
            continue
        if t.kind:
            per_device[device] += int(t.info.n_bytes * share)
        elif t.is_input:
            per_device[device] += t.info.n_bytes // max(1, t.info.shape[-1])  # one row per token
        else:
            per_device[device] += t.info.n_bytes
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
