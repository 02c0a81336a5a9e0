"""llama.cpp's load and context parameters, with the flag names and meanings its users know.

`LlamaParams` is what the planner decides, what a user may type instead (`-ngl`, `--n-cpu-moe`,
`-ot`, `-c`, `-ctk/-ctv`, `-lm`, `-t`, `-ub`), what the engine loads with, and what `plan
--llama-args` prints. Semantics follow the llama.cpp that llama-cpp-python 0.3.36 vendors
(`common/arg.cpp`, `common/common.h`): they are repeated here, not reinvented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from moecli.errors import BadInput

# `LLM_FFN_EXPS_REGEX` in llama.cpp's common/common.h: the routed-expert tensors. Shared experts
# (`ffn_*_shexp`) and the router (`ffn_gate_inp`) do not match: they stay where their layer is.
EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"

CPU = "CPU"
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
LOAD_MODES = ("auto", "none", "mmap", "mlock", "mmap+mlock", "dio")
FLASH_ATTN = ("auto", "on", "off")
ALL_LAYERS = -1  # n_gpu_layers: a negative value means every layer (llama_model_params)


def layer_exps_pattern(layer: int) -> str:
    """The pattern `--n-cpu-moe` adds for one layer (`llm_ffn_block_regex` in common/common.h)."""
    return rf"blk\.{layer}{EXPS_REGEX}"


def layer_tensor_pattern(layer: int, kind: str) -> str:
    """One expert tensor of one layer, e.g. kind='down' -> `blk\\.7\\.ffn_down_exps`."""
    return rf"blk\.{layer}\.ffn_{kind}_(ch|)exps"


@dataclass(frozen=True)
class TensorOverride:
    """One `-ot PATTERN=BUFFER_TYPE`: tensors whose name the regex finds go to that buffer type."""

    pattern: str
    buffer_type: str = CPU

    def __str__(self) -> str:
        return f"{self.pattern}={self.buffer_type}"

    @classmethod
    def parse_list(cls, text: str) -> tuple[TensorOverride, ...]:
        """`-ot` syntax: `PATTERN=BUFT[,PATTERN=BUFT...]` (parse_tensor_buffer_overrides)."""
        out = []
        for item in text.split(","):
            pattern, sep, buft = item.partition("=")
            if not sep or not pattern or not buft:
                raise BadInput(f"-ot {item!r} is not PATTERN=BUFFER_TYPE", r"e.g. -ot 'blk\.1[0-9]\.ffn_.*_exps=CPU'")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise BadInput(f"-ot pattern {pattern!r} is not a valid regex: {exc}", "check the escaping") from None
            out.append(cls(pattern, buft))
        return tuple(out)


def parse_gpu_layers(text: str) -> int | None:
    """`-ngl` as llama.cpp reads it: a number of layers (99 means 99: llama.cpp caps it at the
    model's layers + the output layer), `all` or `-1` for every layer, `auto` for llama.cpp's own
    choice (here: moecli's plan). None means `auto`."""
    value = text.strip().lower()
    if value in ("all", "-1"):
        return ALL_LAYERS
    if value == "auto":
        return None
    if value.isdigit():
        return int(value)
    raise BadInput(f"-ngl {text!r} is not a number of layers", "give a number, 'all' or 'auto'")


@dataclass(frozen=True)
class PlacementFlags:
    """The placement a user typed with llama.cpp's flags (`-ngl`, `--cpu-moe`, `--n-cpu-moe`,
    `-ot`), put on top of a plan's other choices (context, KV types, batch, threads)."""

    n_gpu_layers: int | None = None  # None: the plan's
    cpu_moe: bool = False
    n_cpu_moe: int = 0
    tensor_overrides: tuple[TensorOverride, ...] = ()

    @classmethod
    def parse(cls, ngl: str | None = None, n_cpu_moe: int | None = None, cpu_moe: bool = False,
              overrides: list[str] | tuple[str, ...] | None = None) -> PlacementFlags | None:
        """The flags as typed; None when the user left placement to the plan."""
        if ngl is None and n_cpu_moe is None and not cpu_moe and not overrides:
            return None
        if n_cpu_moe is not None and n_cpu_moe < 0:
            raise BadInput(f"--n-cpu-moe {n_cpu_moe} is negative", "give the number of layers whose experts stay on the CPU")
        return cls(n_gpu_layers=None if ngl is None else parse_gpu_layers(ngl), cpu_moe=cpu_moe,
                   n_cpu_moe=n_cpu_moe or 0,
                   tensor_overrides=tuple(o for text in overrides or () for o in TensorOverride.parse_list(text)))

    @property
    def moves_experts(self) -> bool:
        return self.cpu_moe or bool(self.n_cpu_moe)

    def gpu_flags(self) -> list[str]:
        """The flags given that only mean something with a GPU."""
        return [name for name, given in (("-ngl", self.n_gpu_layers not in (None, 0)), ("--n-cpu-moe", bool(self.n_cpu_moe)),
                                         ("--cpu-moe", self.cpu_moe)) if given]

    def apply(self, base: LlamaParams) -> LlamaParams:
        return base.with_(n_gpu_layers=base.n_gpu_layers if self.n_gpu_layers is None else self.n_gpu_layers,
                          cpu_moe=self.cpu_moe, n_cpu_moe=self.n_cpu_moe, tensor_overrides=self.tensor_overrides)


@dataclass(frozen=True)
class LlamaParams:
    """What llama.cpp is loaded with. Defaults are llama.cpp's own, except where noted."""

    n_gpu_layers: int = ALL_LAYERS  # -ngl; llama.cpp's default is "auto" (its fitter): we plan instead
    cpu_moe: bool = False  # --cpu-moe: every routed expert on the CPU
    n_cpu_moe: int = 0  # --n-cpu-moe N: the experts of the FIRST N layers on the CPU
    tensor_overrides: tuple[TensorOverride, ...] = ()  # -ot, in order; earlier ones win
    n_ctx: int = 4096  # -c; llama.cpp's 0 means the training context, which rarely fits a small GPU
    n_batch: int = 2048  # -b
    n_ubatch: int = 512  # -ub
    type_k: str = "f16"  # -ctk
    type_v: str = "f16"  # -ctv
    flash_attn: str = "auto"  # -fa
    load_mode: str = "auto"  # -lm: auto = mmap where the devices allow; none = read into RAM (--no-mmap)
    n_threads: int | None = None  # -t; None = physical cores
    n_threads_batch: int | None = None  # -tb; None = same as -t
    main_gpu: int = 0  # -mg
    # several devices (empty: llama.cpp's defaults): -ts, one weight per device in llama.cpp's order
    # (RPC devices first), -dev (device names: RPC0, CUDA0, ...), --rpc (the workers, host:port)
    tensor_split: tuple[float, ...] = ()
    devices: tuple[str, ...] = ()
    rpc_servers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("-ctk", self.type_k, KV_TYPES),
            ("-ctv", self.type_v, KV_TYPES),
            ("-lm", self.load_mode, LOAD_MODES),
            ("-fa", self.flash_attn, FLASH_ATTN),
        ):
            if value not in allowed:
                raise BadInput(f"{name} {value!r} is not one of llama.cpp's values", "use one of: " + ", ".join(allowed))
        if self.n_cpu_moe < 0:
            raise BadInput(f"--n-cpu-moe {self.n_cpu_moe} is negative", "give the number of layers whose experts stay on the CPU")
        if self.n_ctx < 0 or self.n_batch < 1 or self.n_ubatch < 1:
            raise BadInput("context and batch sizes must be positive", "e.g. -c 4096 -b 2048 -ub 512")
        if self.n_threads is not None and self.n_threads < 1:
            raise BadInput(f"-t {self.n_threads} must be at least 1", "e.g. -t 4")

    def with_(self, **changes) -> LlamaParams:
        return replace(self, **changes)

    @property
    def use_mmap(self) -> bool:
        return self.load_mode in ("auto", "mmap", "mmap+mlock")

    @property
    def use_mlock(self) -> bool:
        return self.load_mode in ("mlock", "mmap+mlock")

    def overrides(self) -> tuple[TensorOverride, ...]:
        """Every tensor override in the order llama.cpp applies them (the first match wins):
        the explicit `-ot` ones, then `--cpu-moe`, then the `--n-cpu-moe` layers."""
        out = list(self.tensor_overrides)
        if self.cpu_moe:
            out.append(TensorOverride(EXPS_REGEX))
        out.extend(TensorOverride(layer_exps_pattern(i)) for i in range(self.n_cpu_moe))
        return tuple(out)

    def buffer_type_of(self, tensor_name: str) -> str | None:
        """The buffer type an override sends this tensor to, or None if no override matches
        (std::regex_search semantics, which Python's re.search shares for these patterns)."""
        for override in self.overrides():
            if re.search(override.pattern, tensor_name):
                return override.buffer_type
        return None

    def to_llama_args(self, tool: str = "server") -> list[str]:
        """The same configuration as flags of llama-server/llama-cli (`tool="server"`) or
        llama-bench (`tool="bench"`, whose -ot separates overrides with `;`)."""
        bench = tool == "bench"
        ngl = self.n_gpu_layers
        args = ["-ngl", ("999" if bench else "all") if ngl < 0 else str(ngl)]
        sep = "/" if bench else ","  # llama-bench separates a list inside one value with "/"
        if self.rpc_servers:
            args += ["-rpc" if bench else "--rpc", ",".join(self.rpc_servers)]
        if self.devices:
            args += ["-dev", sep.join(self.devices)]
        if self.tensor_split:
            args += ["-ts", sep.join(f"{w:g}" for w in self.tensor_split)]
        explicit = [str(o) for o in self.tensor_overrides]
        if self.cpu_moe and bench:  # llama-bench has no --cpu-moe; its -ot comes before -ncmoe
            explicit.append(str(TensorOverride(EXPS_REGEX)))
        elif self.cpu_moe:
            args += ["--cpu-moe"]
        if self.n_cpu_moe:
            args += ["--n-cpu-moe", str(self.n_cpu_moe)]
        if explicit:
            args += ["-ot", (";" if bench else ",").join(explicit)]
        if not bench:
            args += ["-c", str(self.n_ctx)]
        if self.type_k != "f16":
            args += ["-ctk", self.type_k]
        if self.type_v != "f16":
            args += ["-ctv", self.type_v]
        if self.flash_attn != "auto":
            args += ["-fa", self.flash_attn]
        if self.load_mode != "auto":
            args += ["-lm", self.load_mode]
        if self.n_batch != 2048:
            args += ["-b", str(self.n_batch)]
        if self.n_ubatch != 512:
            args += ["-ub", str(self.n_ubatch)]
        if self.n_threads:
            args += ["-t", str(self.n_threads)]
        if self.n_threads_batch and self.n_threads_batch != self.n_threads:
            args += ["-tb", str(self.n_threads_batch)]
        if self.main_gpu:
            args += ["-mg", str(self.main_gpu)]
        if not bench:
            args += ["--fit", "off"]  # our plan already fits; llama.cpp's fitter would change it
        return args
