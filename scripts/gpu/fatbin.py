#!/usr/bin/env python3
"""Which GPU code a library holds, from its CUDA fat binary's headers (no cuobjdump needed; nvcc
compresses the payloads, not the headers). Used by check_prebuilt.sh on the carried build:

    python scripts/gpu/fatbin.py LIB [--only ELF:90]     (exit 1 unless the images are exactly those)

The layout, as nvcc 13.0 writes it (checked here on libraries built for sm_80 + sm_90 + PTX 90):
a header (magic 0xBA55ED50, u16 version, u16 header size, u64 size of what follows), then entries
(u16 kind: 1 = PTX, 2 = ELF machine code; u16; u32 header size; u64 payload size; ...; u32 SM
version at byte 28 of the entry).
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

MAGIC = struct.pack("<I", 0xBA55ED50)
KINDS = {1: "PTX", 2: "ELF"}


def images(data: bytes) -> list[tuple[str, int]]:
    """(kind, SM version) of every code image in every fat binary in `data`."""
    found = []
    i = data.find(MAGIC)
    while i >= 0:
        _, _, header, size = struct.unpack_from("<IHHQ", data, i)
        j, end = i + header, i + header + size
        while j < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, j)
            found.append((KINDS.get(kind, f"kind{kind}"), struct.unpack_from("<I", data, j + 28)[0]))
            j += entry_header + payload
        i = data.find(MAGIC, end)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library", type=Path)
    ap.add_argument("--only", default="ELF:90", help="the set of KIND:SM the library must hold (default ELF:90)")
    args = ap.parse_args(argv)
    found = images(args.library.read_bytes())
    kinds = sorted(set(found))
    want = sorted((k, int(sm)) for k, sm in (item.split(":") for item in args.only.split(",")))
    print(f"{args.library.name}: {len(found)} GPU code images: " + ", ".join(f"{k} sm_{sm}" for k, sm in kinds))
    return 0 if kinds == want else 1


if __name__ == "__main__":
    sys.exit(main())
