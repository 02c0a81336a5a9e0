"""Byte sizes as users type them (`6GiB`, `512MiB`, `24GB`) and as we print them."""

from __future__ import annotations

import re

from moecli.errors import BadInput

KiB = 1024
MiB = 1024**2
GiB = 1024**3

_UNITS = {
    "b": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": GiB, "gib": GiB, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, what: str = "size") -> int:
    """`6GiB` -> 6442450944. Binary units (KiB, MiB, GiB, and the bare K/M/G of llama.cpp and
    nvidia-smi) and decimal ones (KB, MB, GB). A bare number is refused: 6 what?"""
    match = _SIZE.match(text)
    if not match:
        raise BadInput(f"{what} {text!r} is not a size", "write it like 6GiB, 512MiB or 24GB")
    number, unit = match.groups()
    if not unit:
        raise BadInput(f"{what} {text!r} has no unit", f"write it with one, e.g. {number if float(number) > 0 else 6}GiB")
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise BadInput(f"{what} {text!r} has an unknown unit {unit!r}", "use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
    return int(float(number) * factor)


def fmt_bytes(n: float) -> str:
    """Binary units, about three significant figures: `5.50 GiB`, `812 MiB`, `96.00 KiB`."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            value = n / size
            return f"{sign}{value:.0f} {unit}" if value >= 100 else f"{sign}{value:.2f} {unit}"
    return f"{sign}{int(n)} B"


def fmt_mib(n: float) -> str:
    """Whole MiB, the unit nvidia-smi and llama.cpp's load log use."""
    return f"{n / MiB:,.0f} MiB"
