"""The host's CPU cores as llama.cpp counts them: below both `machine` (which reports them) and
`engine` (whose default -t they are), so neither imports the other."""

from __future__ import annotations


def physical_cores() -> int:
    """llama.cpp's default -t: the physical cores (cpu_get_num_math in common/common.cpp)."""
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def logical_cores() -> int:
    """Hardware threads: more compute threads than this only wait for each other."""
    import os

    return os.cpu_count() or 1
