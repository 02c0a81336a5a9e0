"""What the machine is: GPUs (pynvml), RAM and cores (psutil), RAM bandwidth; or a profile of a
machine the user does not have, with overrides (`--vram 6GiB`, `--ram 24GiB`, `--cpu-only`).

The planner never probes: it gets a `MachineFacts` from here. `source` says where every number came
from ("probed", "profile gtx1060-6gb", "+ --vram 6GiB", "RAM bandwidth measured ...").
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from moecli import paths
from moecli.cpu import logical_cores, physical_cores  # noqa: F401 - machine.physical_cores is this module's too
from moecli.errors import BadInput
from moecli.facts import GpuFacts, MachineFacts, RpcFacts
from moecli.units import MiB, fmt_bytes, parse_size

try:  # Python 3.11+; 3.10 reads profiles with the tomli backport
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - only on 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# Share of RAM the OS, the desktop and other programs keep when the user only says how much RAM
# the machine has (`--ram 24GiB`, or a profile without `ram_available`).
OS_RAM_SHARE = 0.10

# The CUDA primary context costs ~2.9 MiB per streaming multiprocessor: 107 MiB on an RTX 4060 Ti
# (34 SMs), 555 MiB on an RTX PRO 6000 (188 SMs) (llama.cpp PR #23604; PR #20595 quotes 120-550 MB
# "depending on GPU"). On top of it come cuBLAS/MMQ workspaces and llama.cpp's CUDA memory pool:
# on an H100 (132 SMs) the peak was 690-730 MiB above llama.cpp's own estimate (the H100 runs
# described in moecli/planner/__init__.py), i.e. ~310 MiB beyond the context at n_ubatch 512.
_CONTEXT_PER_SM = 2.9 * MiB
_CONTEXT_BASE = 8 * MiB
_WORKSPACES = 320 * MiB


def cores_per_sm(major: int, minor: int) -> int:
    """CUDA cores per streaming multiprocessor by compute capability (CUDA programming guide):
    64 on GP100 (6.0), Volta/Turing (7.x) and GA100 (8.0); 128 on the rest since Pascal."""
    if (major, minor) in ((6, 0), (8, 0)) or major == 7:
        return 64
    return 128


def runtime_overhead_for(n_sm: int) -> int:
    """An estimate of the CUDA runtime's own memory (context + workspaces + pool) for a card with
    n_sm streaming multiprocessors, rounded up to 16 MiB."""
    raw = _CONTEXT_BASE + _CONTEXT_PER_SM * n_sm + _WORKSPACES
    step = 16 * MiB
    return int(-(-raw // step) * step)


# ---------------------------------------------------------------------------------------------
# probing


def probe_gpus() -> tuple[GpuFacts, ...]:
    """NVIDIA GPUs through NVML. No library, no driver or no device -> no GPUs (not an error).

    Memory bandwidth = 2 x max memory clock x bus width / 8. NVML's NVML_CLOCK_MEM maximum is the
    same figure CUDA reports as memoryClockRate (e.g. 4004 MHz for a GTX 1060's 8 Gbps GDDR5,
    10501 MHz for a 4090's 21 Gbps GDDR6X, 2619 MHz for an H100 SXM's HBM3), and the factor 2 gives
    the vendor's peak for GDDR5/6/6X/7 and HBM2/3 alike (CUDA samples' deviceQuery uses the same
    formula): GTX 1060 192 GB/s, RTX 4090 1008 GB/s, H100 SXM 3.35 TB/s.
    """
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return ()
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            bandwidth = None
            try:
                bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
                clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
                if bus_bits and clock_mhz:
                    bandwidth = 2.0 * clock_mhz * 1e6 * bus_bits / 8
            except pynvml.NVMLError:
                pass
            overhead = None
            try:
                cores = pynvml.nvmlDeviceGetNumGpuCores(handle)
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                if cores:
                    overhead = runtime_overhead_for(max(1, cores // cores_per_sm(major, minor)))
            except (pynvml.NVMLError, AttributeError, TypeError, ValueError):
                pass  # unknown: the planner uses its documented default
            gpus.append(GpuFacts(index, name, int(memory.total), int(memory.free), bandwidth, overhead))
        return tuple(gpus)
    except pynvml.NVMLError:
        return ()
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def vram_used_probe(index: int) -> Callable[[], int | None] | None:
    """A function that reads how much memory of GPU `index` this process uses (for peak sampling
    while a benchmark runs), or None when NVML cannot be used.

    It reports this process's own use from NVML's list of compute processes, which is what the
    plan's GPU total predicts; where that list does not show our PID (PID namespaces in
    containers), the device's used memory minus what was used when the probe was made."""
    try:
        import pynvml

        pynvml.nvmlInit()  # reference-counted by NVML; left initialised for the probe's lifetime
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        baseline = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # no library, no driver, no such device: nothing to sample
        return None
    pid = os.getpid()

    def used() -> int | None:
        try:
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == pid and process.usedGpuMemory is not None:
                    return int(process.usedGpuMemory)
            return max(0, int(pynvml.nvmlDeviceGetMemoryInfo(handle).used) - baseline)
        except pynvml.NVMLError:
            return None

    return used


def measure_ram_bandwidth(n_threads: int | None = None, total_bytes: int = 128 * MiB) -> float:
    """Bytes/s of a multi-threaded numpy copy (read + write counted, as STREAM's "copy" does):
    one thread per physical core, each copying its own slice (numpy releases the GIL while it
    copies). 128 MiB read and written per pass, beyond any CPU cache: ~0.1-0.3 s on an idle
    desktop, mostly first-touch page faults. One thread alone reaches a fraction of what all cores reach (24.6 vs
    158 GB/s on a 16-core H100 host, measured with this function), and decoding uses all of them."""
    import numpy as np

    n = max(1, n_threads or physical_cores())
    per_thread = max(1 * MiB, total_bytes // n) // 8
    sources = [np.ones(per_thread, dtype=np.float64) for _ in range(n)]
    targets = [np.empty_like(s) for s in sources]

    def copy(i: int) -> None:
        np.copyto(targets[i], sources[i])

    best = float("inf")
    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(copy, range(n)))  # first touch: page faults, not bandwidth
        for _ in range(2):
            start = time.perf_counter()
            list(pool.map(copy, range(n)))
            best = min(best, time.perf_counter() - start)
    moved = 2 * per_thread * 8 * n
    return moved / best


def _bandwidth_cache() -> Path:
    return paths.cache_dir() / "ram-bandwidth.json"


def ram_bandwidth(*, refresh: bool = False) -> tuple[float, str]:
    """The machine's RAM bandwidth and how we know it: measured once, then cached (per core count
    and RAM size, so a changed machine is measured again)."""
    import psutil

    key = f"{physical_cores()}c-{psutil.virtual_memory().total}"
    cache = _bandwidth_cache()
    if not refresh:
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key and float(data["bytes_per_s"]) > 0:
                return float(data["bytes_per_s"]), f"RAM bandwidth measured {data['bytes_per_s'] / 1e9:.1f} GB/s (cached)"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    value = measure_ram_bandwidth()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "bytes_per_s": value}))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only cache costs one measurement per run, nothing more
    return value, f"RAM bandwidth measured {value / 1e9:.1f} GB/s"


def probe_host(*, measure_bandwidth: bool = True) -> MachineFacts:
    """RAM, cores and RAM bandwidth of this machine, without GPUs."""
    import psutil

    memory = psutil.virtual_memory()
    bandwidth, note = ram_bandwidth() if measure_bandwidth else (None, "RAM bandwidth not measured")
    return MachineFacts((), int(memory.total), int(memory.available), physical_cores(), bandwidth,
                        source=f"probed ({note})", logical_cores=logical_cores())


def probe(*, measure_bandwidth: bool = True) -> MachineFacts:
    """This machine: GPUs through NVML (none without a driver), RAM and cores through psutil."""
    host = probe_host(measure_bandwidth=measure_bandwidth)
    return replace(host, gpus=probe_gpus())


# ---------------------------------------------------------------------------------------------
# profiles


def profile_dirs() -> list[Path]:
    """Where profiles are looked up, the user's first (theirs win over the shipped ones)."""
    return [paths.config_dir() / "machines", paths.shipped_configs_dir() / "machines"]


def profile_names() -> list[str]:
    names = set()
    for directory in profile_dirs():
        if directory.is_dir():
            names.update(p.stem for p in directory.glob("*.toml"))
    return sorted(names)


def _size(value, what: str, where: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadInput(f"{where}: {what} = {value!r} is not a size", 'write it like "6GiB"')
    if isinstance(value, int):
        raise BadInput(f"{where}: {what} = {value} has no unit", f'write it with one, e.g. "{value}MiB"')
    return parse_size(value, what)


def _rate(value, what: str, where: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BadInput(f"{where}: {what} = {value!r} is not a positive number of GB/s", f"e.g. {what} = 192.2")
    return float(value) * 1e9


def read_profile(path: Path) -> tuple[tuple[GpuFacts, ...], dict]:
    """The GPUs of a profile file, and its host section as MachineFacts fields (may be empty)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read machine profile {path}: {exc}", "check the file") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"machine profile {path} is not valid TOML: {exc}", "fix the file") from None
    gpus = []
    for index, gpu in enumerate(data.get("gpus", [])):
        if not isinstance(gpu, dict) or "memory" not in gpu:
            raise BadInput(f"{path}: every [[gpus]] entry needs a memory size", 'e.g. memory = "6GiB"')
        total = _size(gpu["memory"], "memory", path)
        free = _size(gpu["free"], "free", path) if "free" in gpu else total
        bandwidth = _rate(gpu["bandwidth_gbs"], "bandwidth_gbs", path) if "bandwidth_gbs" in gpu else None
        overhead = _size(gpu["runtime_overhead"], "runtime_overhead", path) if "runtime_overhead" in gpu else None
        gpus.append(GpuFacts(index, str(gpu.get("name", f"GPU {index}")), total, min(free, total), bandwidth, overhead))
    host: dict = {}
    section = data.get("host")
    if section is not None:
        if not isinstance(section, dict) or "ram" not in section or "physical_cores" not in section:
            raise BadInput(f"{path}: [host] needs ram and physical_cores", 'e.g. ram = "32GiB", physical_cores = 8')
        total = _size(section["ram"], "ram", path)
        cores = section["physical_cores"]
        if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
            raise BadInput(f"{path}: physical_cores = {cores!r} must be a positive integer", "e.g. physical_cores = 8")
        host = {
            "ram_total": total,
            "ram_available": (_size(section["ram_available"], "ram_available", path) if "ram_available" in section
                              else int(total * (1 - OS_RAM_SHARE))),
            "physical_cores": cores,
            "ram_bandwidth": (_rate(section["ram_bandwidth_gbs"], "ram_bandwidth_gbs", path)
                              if "ram_bandwidth_gbs" in section else None),
        }
    return tuple(gpus), host


def profile_descriptions() -> dict[str, str]:
    """Every profile's name and the `description` line of its file (for listing them)."""
    out = {}
    for name in profile_names():
        try:
            data = tomllib.loads(find_profile(name).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            data = {}
        out[name] = str(data.get("description", ""))
    return out


def find_profile(name: str) -> Path:
    for directory in profile_dirs():
        candidate = directory / f"{name}.toml"
        if candidate.is_file():
            return candidate
    known = profile_names()
    raise BadInput(f"unknown machine profile {name!r}",
                   f"known profiles: {', '.join(known) or 'none'}; or write "
                   f"{paths.config_dir() / 'machines' / (name + '.toml')}")


def load_profile(name: str, *, host: MachineFacts | None = None, measure_bandwidth: bool = True) -> MachineFacts:
    """A machine from `configs/machines/<name>.toml` (or the user's config dir). A profile without
    a [host] section describes only the card: RAM, cores and RAM bandwidth come from `host`
    (a probe of this machine when not given)."""
    gpus, host_fields = read_profile(find_profile(name))
    if host_fields:
        return MachineFacts(gpus, source=f"profile {name}", **host_fields)
    base = host if host is not None else probe_host(measure_bandwidth=measure_bandwidth)
    return replace(base, gpus=gpus, source=f"profile {name} + {base.source}")


# ---------------------------------------------------------------------------------------------
# overrides


def vram_bytes(vram: str | int) -> int:
    """--vram as bytes; zero (with a unit or without) is refused with the flag that means it."""
    if isinstance(vram, str) and re.fullmatch(r"\s*0*\.?0*\s*[A-Za-z]*\s*", vram) and re.search(r"0", vram):
        size = 0
    else:
        size = parse_size(vram, "--vram") if isinstance(vram, str) else int(vram)
    if size <= 0:
        raise BadInput(f"--vram {vram}: a GPU with no memory is no GPU",
                       "plan without one with --cpu-only, or give the card's memory, e.g. --vram 6GiB")
    return size


def apply_overrides(facts: MachineFacts, *, vram: str | int | None = None, ram: str | int | None = None,
                    cpu_only: bool = False) -> MachineFacts:
    """Plan for a machine a little different from this one.

    - vram: "this is my card's memory": the first GPU gets that total and free memory (a GPU
      is assumed when none was probed); the CUDA runtime's overhead still has to fit inside it.
      Several sizes (`6GiB,8GiB`) are one per GPU, in order (GPUs are assumed where fewer were probed).
    - ram: the machine's RAM; OS_RAM_SHARE of it is assumed taken by the OS and other programs.
    - cpu_only: no GPU is used.
    """
    if cpu_only and vram is not None:
        raise BadInput("--cpu-only and --vram contradict each other", "give one of them")
    notes = []
    if vram is not None:
        sizes = [vram_bytes(v.strip()) for v in vram.split(",")] if isinstance(vram, str) else [vram_bytes(vram)]
        gpus = list(facts.gpus)
        for i, size in enumerate(sizes):
            if i < len(gpus):
                gpus[i] = replace(gpus[i], total_bytes=size, free_bytes=size)
            else:
                gpus.append(GpuFacts(i, "GPU (from --vram)", size, size))
        facts = replace(facts, gpus=tuple(gpus))
        notes.append(f"--vram {vram if isinstance(vram, str) else fmt_bytes(sizes[0])}")
    if ram is not None:
        size = parse_size(ram, "--ram") if isinstance(ram, str) else int(ram)
        if size <= 0:
            raise BadInput(f"--ram {ram!r} must be more than zero", "e.g. --ram 32GiB")
        facts = replace(facts, ram_total=size, ram_available=int(size * (1 - OS_RAM_SHARE)))
        notes.append(f"--ram {ram if isinstance(ram, str) else fmt_bytes(size)}")
    if cpu_only:
        facts = replace(facts, gpus=())
        notes.append("--cpu-only")
    if notes:
        facts = replace(facts, source=f"{facts.source} + {' '.join(notes)}")
    return facts


def parse_endpoints(text: str | None) -> tuple[str, ...]:
    """`--rpc HOST:PORT[,HOST:PORT...]`, llama.cpp's syntax."""
    if not text:
        return ()
    out = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadInput(f"--rpc {item.strip()!r} is not HOST:PORT", "e.g. --rpc 192.168.1.20:50052,192.168.1.21:50052")
        out.append(f"{host}:{int(port)}")
    if len(set(out)) != len(out):
        raise BadInput(f"--rpc {text!r} names a worker twice", "name each worker once")
    return tuple(out)


def rpc_devices(endpoints: tuple[str, ...], mem: str | None = None,
                reported: dict[str, tuple[int, int]] | None = None,
                round_trips: dict[str, float] | None = None) -> tuple[RpcFacts, ...]:
    """The RPC workers' devices (one per worker; llama.cpp numbers them RPC0, RPC1, ... in --rpc
    order): their memory from `--rpc-mem` (one size, or one per worker: a worker not started yet),
    else as each running server reported it (`reported`: endpoint -> (free, total)); with the round
    trip measured to each running one (`round_trips`: endpoint -> seconds)."""
    sizes: list[int] = []
    if mem:
        sizes = [parse_size(v.strip(), "--rpc-mem") for v in mem.split(",")]
        if len(sizes) == 1:
            sizes *= len(endpoints)
        if len(sizes) != len(endpoints) or any(s <= 0 for s in sizes):
            raise BadInput(f"--rpc-mem {mem!r}: give one size, or one per --rpc worker ({len(endpoints)})",
                           "e.g. --rpc-mem 32GiB or --rpc-mem 32GiB,16GiB")
    out = []
    for i, endpoint in enumerate(endpoints):
        trip = (round_trips or {}).get(endpoint)
        if sizes:
            out.append(RpcFacts(endpoint, i, 0, sizes[i], sizes[i], round_trip=trip))
        elif reported and endpoint in reported:
            free, total = reported[endpoint]
            out.append(RpcFacts(endpoint, i, 0, total, free, reported=True, round_trip=trip))
        else:
            raise BadInput(f"how much memory does RPC worker {endpoint} have?",
                           "start it (moecli rpc-server) so moecli can ask it, or say it: --rpc-mem 32GiB")
    return tuple(out)


def with_rpc(facts: MachineFacts, rpc: tuple[RpcFacts, ...]) -> MachineFacts:
    if not rpc:
        return facts
    what = ", ".join(f"{d.name_llama} {d.endpoint} {fmt_bytes(d.free_bytes)}"
                     + (" reported" if d.reported else " (--rpc-mem)") for d in rpc)
    return replace(facts, rpc=rpc, source=f"{facts.source} + RPC {what}")


def resolve(*, profile: str | None = None, vram: str | int | None = None, ram: str | int | None = None,
            cpu_only: bool = False, measure_bandwidth: bool = True,
            rpc: tuple[RpcFacts, ...] = ()) -> MachineFacts:
    """What `moecli plan` plans for: a profile or this machine, then the user's overrides, then
    RPC workers' devices (`rpc_devices`)."""
    if profile:
        base = load_profile(profile, measure_bandwidth=measure_bandwidth)
    elif cpu_only:
        base = probe_host(measure_bandwidth=measure_bandwidth)  # no need to wake NVML
    else:
        base = probe(measure_bandwidth=measure_bandwidth)
    return with_rpc(apply_overrides(base, vram=vram, ram=ram, cpu_only=cpu_only), rpc)
