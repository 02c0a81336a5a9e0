"""What was measured on this machine: every `bench` row with what decides its speed, and the
fastest configuration a `bench --sweep` found per model (the plan's calibration, and `run`'s tuned
configuration).

One versioned JSON file under moecli's data dir (`measurements.json`), written atomically, at most
MAX_RECORDS rows (the oldest go first). A file that is not ours, of a newer version, or corrupt is
set aside (renamed beside itself) with one line for the user, never a traceback. Each row carries
the machine's fingerprint (CPU, cores, RAM, GPUs, the llama.cpp build): a calibration uses only the
rows of the machine it plans for.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from moecli import paths
from moecli.errors import MoecliError
from moecli.facts import MachineFacts
from moecli.params import LlamaParams, TensorOverride

FORMAT = "moecli-measurements"
VERSION = 1
MAX_RECORDS = 2000  # ~1 KiB each: a file of a couple of MiB at most


def path() -> Path:
    return paths.measurements_file()


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# -- the machine ----------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, platform elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def llama_build() -> str:
    """The llama.cpp build speeds depend on: llama-cpp-python's version (it vendors llama.cpp)."""
    from importlib import metadata

    try:
        return f"llama-cpp-python {metadata.version('llama_cpp_python')}"
    except metadata.PackageNotFoundError:
        return "llama-cpp-python (not installed)"


@dataclass(frozen=True)
class Fingerprint:
    id: str  # a short hash of `describe`
    describe: str  # for people: CPU, cores, RAM, GPUs, build


def fingerprint(machine: MachineFacts, *, build: str | None = None, cpu: str | None = None) -> Fingerprint:
    """What makes this machine this machine for speed: the CPU model and its cores, the RAM's
    size (GiB), each GPU's name and memory, the llama.cpp build. Free memory does not count."""
    gpus = ", ".join(f"{g.name} {round(g.total_bytes / 2**30)} GiB" for g in machine.gpus) or "no GPU"
    text = (f"{cpu or cpu_model()}, {machine.physical_cores} cores, {round(machine.ram_total / 2**30)} GiB RAM; "
            f"{gpus}; {build or llama_build()}")
    return Fingerprint(hashlib.sha256(text.encode()).hexdigest()[:16], text)


# -- the records ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """One bench row (llama-bench's pp or tg test of one configuration)."""

    when: str  # ISO 8601
    machine: str  # Fingerprint.id
    model: str  # planner.model_key
    model_path: str
    label: str  # the configuration's name in the bench ("plan", "-ub 1024", ...)
    test: str  # "tg" | "pp"
    n_prompt: int
    n_gen: int
    n_depth: int
    avg_ts: float
    stddev_ts: float
    samples_ts: tuple[float, ...]
    args: tuple[str, ...]  # llama.cpp's flags of the configuration, the context included
    n_ctx: int
    inputs: dict  # planner.SpeedInputs as a dict: what decides the speed
    sweep: bool = False


@dataclass(frozen=True)
class Tuned:
    """The fastest configuration a sweep found for a model on a machine."""

    when: str
    machine: str
    model: str
    label: str
    params: dict  # LlamaParams' fields (tensor_overrides as strings)
    decode_ts: float | None
    prompt_ts: float | None
    n_ctx: int  # the context it was measured with

    def to_params(self, n_ctx: int | None = None) -> LlamaParams:
        """The configuration, at context `n_ctx` (default: the one it was measured with)."""
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in self.params.items()}  # JSON has lists
        overrides = tuple(o for text in data.pop("tensor_overrides", ()) for o in TensorOverride.parse_list(text))
        return LlamaParams(**{**data, "tensor_overrides": overrides, "n_ctx": n_ctx or self.n_ctx})

    @staticmethod
    def params_dict(params: LlamaParams) -> dict:
        return {**asdict(params), "tensor_overrides": [str(o) for o in params.tensor_overrides]}


@dataclass
class Store:
    measurements: list[Measurement] = field(default_factory=list)
    tuned: list[Tuned] = field(default_factory=list)
    note: str | None = None  # the one line saying the file was set aside

    def of(self, machine: str, model: str | None = None) -> list[Measurement]:
        return [m for m in self.measurements if m.machine == machine and (model is None or m.model == model)]

    def tuned_for(self, machine: str, model: str) -> Tuned | None:
        return next((t for t in reversed(self.tuned) if t.machine == machine and t.model == model), None)


class _Unreadable(Exception):
    pass


def _parse(text: str) -> Store:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _Unreadable(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _Unreadable("not a moecli measurements file")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise _Unreadable(f"version {version!r}, this moecli reads {VERSION}")
    try:
        measurements = [Measurement(**{**m, "samples_ts": tuple(m["samples_ts"]), "args": tuple(m["args"])})
                        for m in data.get("measurements", [])]
        tuned = [Tuned(**t) for t in data.get("tuned", [])]
        for t in tuned:
            t.to_params()
    except (TypeError, KeyError, ValueError, MoecliError) as exc:
        raise _Unreadable(f"a record of another shape ({exc})") from None
    return Store(measurements, tuned)


def read() -> Store:
    """The measurements of every machine; an empty store when there is no file. A file that cannot
    be read is renamed `measurements.json.bad-<time>` and the store's `note` says so in one line."""
    file = path()
    try:
        text = file.read_text()
    except FileNotFoundError:
        return Store()
    except (OSError, UnicodeDecodeError) as exc:
        return _set_aside(file, f"unreadable ({exc.__class__.__name__})")
    try:
        return _parse(text)
    except _Unreadable as exc:
        return _set_aside(file, str(exc))


def _set_aside(file: Path, why: str) -> Store:
    aside = file.with_name(f"{file.name}.bad-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(file, aside)
        where = f"set aside as {aside}"
    except OSError:
        where = "left in place (it could not be renamed)"
    return Store(note=f"the measurements file {file} was {why}: {where}; starting a new one")


def write(store: Store) -> None:
    store.measurements[:] = store.measurements[-MAX_RECORDS:]
    store.tuned[:] = _latest_tuned(store.tuned)
    data = {"format": FORMAT, "version": VERSION,
            "measurements": [asdict(m) for m in store.measurements], "tuned": [asdict(t) for t in store.tuned]}
    file = path()
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, file)


def _latest_tuned(tuned: list[Tuned]) -> list[Tuned]:
    """One tuned configuration per machine and model: the newest."""
    latest: dict[tuple[str, str], Tuned] = {}
    for t in tuned:
        latest[(t.machine, t.model)] = t
    return list(latest.values())[-MAX_RECORDS:]


def add(measurements: list[Measurement], tuned: Tuned | None = None) -> Store:
    """Append rows (and a tuned configuration) to the file; returns the store as written (its
    `note` says when an unreadable file was set aside first)."""
    store = read()
    store.measurements.extend(measurements)
    if tuned is not None:
        store.tuned.append(tuned)
    write(store)
    return store
