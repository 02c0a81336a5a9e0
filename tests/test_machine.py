"""Machine facts: probing this machine for real, profiles, and the user's overrides."""

from __future__ import annotations

import pytest

from moecli import machine, paths
from moecli.errors import BadInput
from moecli.facts import GpuFacts, MachineFacts
from moecli.units import GiB, MiB

SHIPPED = ("cpu-only-32gb", "gtx1060-6gb", "h100-80gb", "rtx3060-12gb", "rtx4090-24gb")
HOST = MachineFacts((), 32 * GiB, 28 * GiB, 8, 50e9, source="test host")


def test_shipped_profiles_are_listed_and_load():
    assert set(SHIPPED) <= set(machine.profile_names())
    for name in SHIPPED:
        facts = machine.load_profile(name, host=HOST)
        assert facts.source.startswith(f"profile {name}")
        for gpu in facts.gpus:
            assert gpu.total_bytes == gpu.free_bytes > 0
            assert gpu.bandwidth and gpu.bandwidth > 100e9
            assert gpu.runtime_overhead and 256 * MiB <= gpu.runtime_overhead <= 1 * GiB


def test_gtx1060_profile_numbers():
    facts = machine.load_profile("gtx1060-6gb")
    (gpu,) = facts.gpus
    assert gpu.total_bytes == 6 * GiB
    assert gpu.bandwidth == pytest.approx(192.2e9)
    assert gpu.runtime_overhead == machine.runtime_overhead_for(10) == 368 * MiB
    assert facts.ram_total == 24 * GiB and facts.physical_cores == 4
    assert facts.ram_bandwidth == pytest.approx(38.4e9)
    assert facts.source == "profile gtx1060-6gb"


def test_profiles_describe_themselves():
    described = machine.profile_descriptions()
    assert "GTX 1060" in described["gtx1060-6gb"] and "no GPU" in described["cpu-only-32gb"]


def test_cores_per_sm_by_compute_capability():
    assert machine.cores_per_sm(6, 1) == 128  # GTX 1060
    assert machine.cores_per_sm(7, 0) == 64 and machine.cores_per_sm(8, 0) == 64  # V100, A100
    assert machine.cores_per_sm(8, 6) == 128 and machine.cores_per_sm(9, 0) == 128  # RTX 3060, H100


def test_profile_overheads_follow_the_documented_formula():
    assert machine.load_profile("rtx3060-12gb", host=HOST).gpus[0].runtime_overhead == machine.runtime_overhead_for(28)
    assert machine.load_profile("rtx4090-24gb", host=HOST).gpus[0].runtime_overhead == machine.runtime_overhead_for(128)


def test_card_only_profile_takes_the_host_from_elsewhere():
    facts = machine.load_profile("rtx3060-12gb", host=HOST)
    assert facts.ram_total == HOST.ram_total and facts.physical_cores == 8 and facts.ram_bandwidth == 50e9
    assert facts.source == "profile rtx3060-12gb + test host"
    assert facts.gpus[0].total_bytes == 12 * GiB


def test_cpu_only_profile_has_no_gpu():
    facts = machine.load_profile("cpu-only-32gb")
    assert not facts.has_gpu and facts.ram_total == 32 * GiB and facts.ram_bandwidth == pytest.approx(51.2e9)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(BadInput) as err:
        machine.load_profile("gtx9090-1gb")
    assert "gtx9090-1gb" in err.value.message
    for name in SHIPPED:
        assert name in err.value.hint


def test_user_profiles_are_found_and_win():
    directory = paths.config_dir() / "machines"
    directory.mkdir(parents=True)
    (directory / "mybox.toml").write_text(
        '[[gpus]]\nname = "My card"\nmemory = "8GiB"\nfree = "7GiB"\nbandwidth_gbs = 448\n'
        '[host]\nram = "16GiB"\nphysical_cores = 6\n')
    (directory / "gtx1060-6gb.toml").write_text('[[gpus]]\nmemory = "5GiB"\n[host]\nram = "8GiB"\nphysical_cores = 2\n')
    assert "mybox" in machine.profile_names()
    facts = machine.load_profile("mybox")
    assert facts.gpus == (GpuFacts(0, "My card", 8 * GiB, 7 * GiB, 448e9, None),)
    assert facts.ram_available == int(16 * GiB * (1 - machine.OS_RAM_SHARE))
    assert machine.load_profile("gtx1060-6gb").gpus[0].total_bytes == 5 * GiB


@pytest.mark.parametrize("text, words", [
    ("[[gpus]]\nname = 'x'\n", "memory"),
    ("[[gpus]]\nmemory = 6144\n", "no unit"),
    ("[[gpus]]\nmemory = '6XB'\n", "unknown unit"),
    ("[[gpus]]\nmemory = '6GiB'\nbandwidth_gbs = 'fast'\n", "GB/s"),
    ("[host]\nram = '8GiB'\n", "physical_cores"),
    ("[host]\nram = '8GiB'\nphysical_cores = 0\n", "positive"),
    ("this is = not toml [", "not valid TOML"),
])
def test_bad_profiles_are_bad_input(text, words):
    directory = paths.config_dir() / "machines"
    directory.mkdir(parents=True)
    (directory / "broken.toml").write_text(text)
    with pytest.raises(BadInput) as err:
        machine.load_profile("broken", host=HOST)
    assert words in err.value.message


def test_vram_override_is_the_cards_memory():
    with_gpu = MachineFacts((GpuFacts(0, "Card", 24 * GiB, 20 * GiB, 1e12, 700 * MiB),), 64 * GiB, 60 * GiB, 16, 80e9)
    facts = machine.apply_overrides(with_gpu, vram="6GiB")
    assert facts.gpus == (GpuFacts(0, "Card", 6 * GiB, 6 * GiB, 1e12, 700 * MiB),)
    assert facts.source == "probed + --vram 6GiB"
    planned = machine.apply_overrides(HOST, vram="6GiB")
    assert planned.gpus == (GpuFacts(0, "GPU (from --vram)", 6 * GiB, 6 * GiB),)


def test_ram_and_cpu_only_overrides():
    with_gpu = machine.load_profile("gtx1060-6gb")
    facts = machine.apply_overrides(with_gpu, ram="32GiB", cpu_only=True)
    assert not facts.gpus and facts.ram_total == 32 * GiB
    assert facts.ram_available == int(32 * GiB * (1 - machine.OS_RAM_SHARE))
    assert facts.source == "profile gtx1060-6gb + --ram 32GiB --cpu-only"
    assert machine.apply_overrides(with_gpu) == with_gpu


@pytest.mark.parametrize("kwargs, words", [
    ({"vram": "6XB"}, "unknown unit"),
    ({"vram": "6"}, "no unit"),
    ({"vram": "0GiB"}, "a GPU with no memory is no GPU"),
    ({"ram": "lots"}, "not a size"),
    ({"vram": "6GiB", "cpu_only": True}, "contradict"),
])
def test_bad_overrides_are_bad_input(kwargs, words):
    with pytest.raises(BadInput) as err:
        machine.apply_overrides(HOST, **kwargs)
    assert words in err.value.message


def test_probe_this_machine():
    facts = machine.probe(measure_bandwidth=False)
    assert facts.ram_total > 0 and 0 < facts.ram_available <= facts.ram_total
    assert facts.physical_cores >= 1
    assert facts.ram_bandwidth is None and "not measured" in facts.source
    for gpu in facts.gpus:  # none on CI: no NVIDIA driver is not an error
        assert gpu.total_bytes >= gpu.free_bytes > 0


def test_probe_gpus_without_a_driver_is_empty_not_an_error():
    gpus = machine.probe_gpus()
    assert isinstance(gpus, tuple)


def test_vram_probe_without_a_gpu_is_none_and_with_one_reads_bytes():
    probe = machine.vram_used_probe(0)
    if not machine.probe_gpus():
        assert probe is None
    else:  # on the GPU machine: a number of bytes, or None when NVML cannot tell
        value = probe()
        assert value is None or value >= 0


def test_ram_bandwidth_is_measured_then_cached():
    value = machine.measure_ram_bandwidth(n_threads=2, total_bytes=16 * MiB)
    assert value > 1e8  # any machine copies more than 100 MB/s
    first, note = machine.ram_bandwidth()
    assert first > 1e8 and note.startswith("RAM bandwidth measured") and "cached" not in note
    assert (paths.cache_dir() / "ram-bandwidth.json").is_file()
    again, note = machine.ram_bandwidth()
    assert again == first and note.endswith("(cached)")
    facts = machine.probe_host()
    assert facts.ram_bandwidth == first and "cached" in facts.source


def test_resolve_profile_with_overrides():
    facts = machine.resolve(profile="gtx1060-6gb", vram="8GiB", ram="16GiB")
    assert facts.gpus[0].total_bytes == 8 * GiB and facts.gpus[0].bandwidth == pytest.approx(192.2e9)
    assert facts.ram_total == 16 * GiB
    assert facts.source == "profile gtx1060-6gb + --vram 8GiB --ram 16GiB"
    assert not machine.resolve(profile="h100-80gb", cpu_only=True).gpus
    assert machine.resolve(cpu_only=True, measure_bandwidth=False).gpus == ()
