"""Placements: the device llama.cpp gives every tensor for -ngl, --n-cpu-moe and -ot (`_Where`),
the flags that express a placement, and the compact picture of one for a `Plan`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from moecli.errors import BadInput
from moecli.facts import GpuFacts, Role
from moecli.params import ALL_LAYERS, CPU, LlamaParams, TensorOverride, layer_tensor_pattern
from moecli.planner.memory import _Setup
from moecli.planner.model import _Model
from moecli.planner.types import GPU, LoadIntoRam, MemoryBreakdown, MmapRamShort, Placement, TensorPlacement


@dataclass(frozen=True)
class _Where:
    """A placement: the device of every tensor (None = not loaded) and of every layer."""

    devices: tuple[str | None, ...]  # per _Model.tensors
    n_gpu_layers: int  # effective, 0 .. n_layer_all + 1

    def layer_on_gpu(self, m: _Model, layer: int) -> bool:
        return layer >= m.n_layer_all + 1 - self.n_gpu_layers

    def output_on_gpu(self) -> bool:
        return self.n_gpu_layers >= 1


_Partial = tuple[int, tuple[str, ...]]  # one layer split by tensor: (layer, its expert tensors on the GPU)


def _expert_subsets(m: _Model, layer: int) -> list[tuple[str, ...]]:
    """The ways to split one layer's expert tensors, the most bytes first (then the fewest kinds):
    each proper, non-empty subset of its pattern kinds (up / gate / down / gate_up; one -ot pattern
    catches a kind's weight and its bias, gpt-oss, alike), as the names of its tensors. The rule of
    the layer split by tensor, for one GPU (search.fill_experts) and several (devices.partial)."""
    by_kind: dict[str, list] = {}
    for t in m.tensors:
        if t.kind and t.layer == layer and t.loaded:
            by_kind.setdefault(t.kind, []).append(t)
    kinds = sorted(by_kind)
    subsets = []
    for mask in range(1, 2 ** len(kinds) - 1):  # proper, non-empty subsets: the whole layer did not fit
        chosen = [k for i, k in enumerate(kinds) if mask >> i & 1]
        names = tuple(t.info.name for k in chosen for t in by_kind[k])
        subsets.append((-sum(t.info.n_bytes for k in chosen for t in by_kind[k]), len(chosen), names))
    return [names for _, _, names in sorted(subsets)]


def _where(m: _Model, n_gpu_layers: int, *, gpu_experts: Iterable[int] | None = None, partial: _Partial | None = None,
           overrides: Sequence[tuple[re.Pattern[str], str]] = (), has_gpu: bool = True) -> _Where:
    """The one way to build a `_Where`: the device llama.cpp gives each loaded tensor, by the first
    rule that applies:
    1. `overrides` (`-ot`, and --cpu-moe / --n-cpu-moe, which llama.cpp turns into overrides):
       (pattern, device) pairs, the first pattern that matches the name wins;
    2. the input tensors (token embedding) stay on the CPU;
    3. the expert placement the search works with: `gpu_experts` lists the layers whose routed
       experts are on the GPU, the others' on the CPU (None: experts follow their layer), and
       `partial` adds some expert tensors of one more layer;
    4. the layer's device: the last n_gpu_layers - 1 layers and the output layer on the GPU."""
    ngl = min(max(n_gpu_layers, 0), m.n_layer_all + 1) if has_gpu else 0
    start = m.n_layer_all + 1 - ngl
    gpu_layers = None if gpu_experts is None else frozenset(gpu_experts)
    partial_layer, partial_gpu = (partial[0], frozenset(partial[1])) if partial is not None else (None, frozenset())
    devices: list[str | None] = []
    for t in m.tensors:
        name = t.info.name
        if not t.loaded:
            devices.append(None)
            continue
        device = next((d for pattern, d in overrides if pattern.search(name)), None) if overrides else None
        if device is not None:
            devices.append(device)
        elif t.is_input:
            devices.append(CPU)
        elif (t.kind and gpu_layers is not None and t.layer not in gpu_layers
              and not (t.layer == partial_layer and name in partial_gpu)):
            devices.append(CPU)
        else:
            layer = m.n_layer_all if t.layer is None else t.layer
            devices.append(GPU if layer >= start else CPU)
    return _Where(tuple(devices), ngl)


def _where_from_params(m: _Model, params: LlamaParams, gpu: GpuFacts | None) -> _Where:
    """llama.cpp's placement for the flags: -ngl, and the overrides they amount to."""
    ngl = m.n_layer_all + 1 if params.n_gpu_layers < 0 else params.n_gpu_layers
    overrides = tuple((re.compile(o.pattern), _buffer_device(o.buffer_type, gpu)) for o in params.overrides())
    return _where(m, ngl, overrides=overrides, has_gpu=gpu is not None)


def _buffer_device(buffer_type: str, gpu: GpuFacts | None) -> str:
    name = buffer_type.strip().upper()
    if name.startswith("CPU") or name == "CUDA_HOST":
        return CPU
    match = re.fullmatch(r"CUDA(\d+)", name)
    if not match:
        raise BadInput(f"buffer type {buffer_type!r} is not one llama.cpp knows here", "use CPU or CUDA0")
    if gpu is None:
        raise BadInput(f"-ot ...={buffer_type} names a GPU, but the machine has none", "use =CPU, or drop --cpu-only")
    if int(match.group(1)) != gpu.index:
        raise BadInput(f"-ot ...={buffer_type} names another GPU than CUDA{gpu.index}, the one planned for",
                       f"use =CUDA{gpu.index} or =CPU")
    return GPU


def _params_for(m: _Model, setup: _Setup, n_gpu_layers: int, gpu_expert_layers: tuple[int, ...],
                partial: _Partial | None, load_mode: str, threads: int) -> LlamaParams:
    """llama.cpp flags for: the first layers' experts on the CPU (--n-cpu-moe keeps llama.cpp's
    meaning: experts of layers 0..N-1), one partial layer as -ot overrides of its CPU tensors."""
    overrides: tuple[TensorOverride, ...] = ()
    cpu_moe = False
    n_cpu_moe = 0
    if m.is_moe:
        if not gpu_expert_layers and partial is None:
            cpu_moe = True
        else:
            first_gpu = gpu_expert_layers[0] if gpu_expert_layers else None
            if partial is not None:
                layer, on_gpu = partial
                n_cpu_moe = layer
                cpu_kinds = dict.fromkeys(t.kind for t in m.tensors
                                          if t.kind and t.layer == layer and t.info.name not in on_gpu)
                overrides = tuple(TensorOverride(layer_tensor_pattern(layer, kind)) for kind in cpu_kinds)
            elif set(gpu_expert_layers) != set(m.expert_layers):
                n_cpu_moe = first_gpu or 0
    ngl = ALL_LAYERS if n_gpu_layers >= m.n_layer_all + 1 else n_gpu_layers
    return LlamaParams(
        n_gpu_layers=ngl, cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe, tensor_overrides=overrides,
        n_ctx=setup.n_ctx, n_batch=setup.n_batch, n_ubatch=setup.n_ubatch, type_k=setup.type_k,
        type_v=setup.type_v, flash_attn=setup.flash_attn, load_mode=load_mode, n_threads=threads,
    )


def _describe(m: _Model, where: _Where, gpu: GpuFacts | None) -> tuple[Placement, tuple[TensorPlacement, ...]]:
    gpu_name = f"CUDA{gpu.index}" if gpu is not None else None
    rows = []
    layers_gpu = tuple(layer for layer in range(m.n_layer_all) if gpu is not None and where.layer_on_gpu(m, layer))
    by_layer_gpu: dict[int, list[str]] = {}
    by_layer_cpu: dict[int, list[str]] = {}
    other_cpu = []
    for t, device in zip(m.tensors, where.devices):
        name = None if device is None else (gpu_name if device == GPU else CPU)
        rows.append(TensorPlacement(t.info.name, t.info.layer, t.info.role.value, t.info.ggml_type, t.info.n_bytes, name))
        if t.kind and t.layer is not None and device is not None:
            (by_layer_gpu if device == GPU else by_layer_cpu).setdefault(t.layer, []).append(t.info.name)
        elif device == CPU and not t.is_input and gpu is not None:
            other_cpu.append(t.info.name)
    if m.tied_output is not None and gpu is not None and where.output_on_gpu():
        t = m.tied_output
        rows.append(TensorPlacement(t.name, None, Role.OUTPUT.value, t.ggml_type, t.n_bytes, gpu_name, copy=True))
    gpu_exp = tuple(sorted(layer for layer in by_layer_gpu if layer not in by_layer_cpu))
    cpu_exp = tuple(sorted(layer for layer in by_layer_cpu if layer not in by_layer_gpu))
    split = sorted(set(by_layer_gpu) & set(by_layer_cpu))
    partial = split[0] if split else None
    placement = Placement(
        n_layer=m.n_layer_all, gpu_layers=layers_gpu, output_on_gpu=gpu is not None and where.output_on_gpu(),
        expert_layers=m.expert_layers, expert_layers_gpu=gpu_exp, expert_layers_cpu=cpu_exp, partial_layer=partial,
        partial_gpu=tuple(by_layer_gpu.get(partial, ())) if partial is not None else (),
        partial_cpu=tuple(by_layer_cpu.get(partial, ())) if partial is not None else (),
        other_cpu=tuple(other_cpu),
    )
    return placement, tuple(rows)


def _load_mode(m: _Model, devices: Sequence[str | None], cpu: MemoryBreakdown, wished: str | None) -> tuple[str, list]:
    """-lm as wished; else read into RAM (-lm none) when weights other than the embedding stay on
    the CPU and RAM holds them: the GPU then copies them for prompts from pinned memory, ~5x faster
    prompts (see MmapExpertsSlowPrompt for the measured figures). Otherwise mmap. `devices`: each
    tensor's device, in m.tensors' order."""
    if wished:
        return wished, []
    if not any(d == CPU and not t.is_input for t, d in zip(m.tensors, devices)):
        return "mmap", []
    if cpu.fits:
        return "none", [LoadIntoRam()]
    return "mmap", [MmapRamShort(cpu.total, cpu.budget)]
