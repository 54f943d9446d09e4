"""Which GPU architectures a CUDA library carries code for, read from its `.nv_fatbin` section.

    python -m loadtest.gpu_archs faiss_gpu-1.15.1-...whl        # a wheel: every shared library in it
    python -m loadtest.gpu_archs path/to/libfaiss.so

A GPU runs a library's kernels only if it holds machine code (SASS) for the GPU's architecture or PTX
of an older one for the driver to compile: faiss-gpu-cu12 carries sm_70 and sm_80 and no PTX, so an
H100/H200 (sm_90) aborts at its first search. This reads the fatbin's entry headers (no CUDA needed),
the same list `cuobjdump --list-elf --list-ptx` prints, so the choice of a GPU wheel can be checked on a
machine without a GPU. It reads entry headers only; whether the code runs is for a GPU to say.
"""

from __future__ import annotations

import argparse
import struct
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KINDS = {1: "ptx", 2: "sass"}


def _section(elf: bytes, name: str) -> bytes | None:
    """The bytes of one section of a 64-bit little-endian ELF file, or None."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        sh_name, _type, _flags, _addr, sh_offset, sh_size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return sh_name, sh_offset, sh_size

    _, str_off, _ = header(shstrndx)
    for i in range(shnum):
        sh_name, off, size = header(i)
        end = elf.index(b"\0", str_off + sh_name)
        if elf[str_off + sh_name : end].decode() == name:
            return elf[off : off + size]
    return None


def fatbin_archs(elf: bytes) -> Counter[tuple[str, int]]:
    """(kind, architecture) -> entries, e.g. ("sass", 90): 182 for sm_90 machine code."""
    data = _section(elf, ".nv_fatbin")
    found: Counter[tuple[str, int]] = Counter()
    if data is None:
        return found
    off = 0
    while off + 16 <= len(data):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, off)
        if magic != FATBIN_MAGIC:
            off += 8  # fatbins are 8-byte aligned, with padding between them
            continue
        p, end = off + header_size, off + header_size + fat_size
        while p < end:
            kind, _flags, entry_header, size = struct.unpack_from("<HHIQ", data, p)
            arch = struct.unpack_from("<I", data, p + 28)[0]
            found[(KINDS.get(kind, str(kind)), arch)] += 1
            p += entry_header + size
        off = end
    return found


def archs_of(path: Path) -> dict[str, Counter[tuple[str, int]]]:
    """Per shared library (of a wheel, or the one file given) with a fatbin: its architectures."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            libs = [n for n in z.namelist() if ".so" in Path(n).name]
            found = {n: fatbin_archs(z.read(n)) for n in libs}
    else:
        found = {str(path): fatbin_archs(path.read_bytes())}
    return {name: archs for name, archs in found.items() if archs}


def describe(archs: Counter[tuple[str, int]]) -> str:
    sass = sorted({a for k, a in archs if k == "sass"})
    ptx = sorted({a for k, a in archs if k == "ptx"})

    def names(archs: list[int]) -> str:
        return ", ".join(f"sm_{a}" for a in archs) or "none"

    return f"machine code for {names(sass)}; PTX for {names(ptx)}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.gpu_archs", description="GPU architectures a CUDA wheel or library carries code for."
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="WHEEL_OR_LIBRARY")
    paths = parser.parse_args(argv).paths
    for path in paths:
        if not path.is_file():
            parser.error(f"{path} is not a file")
        try:
            found = archs_of(path)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            parser.error(f"cannot read {path}: {e}")
        for name, archs in found.items():
            print(f"{path.name}: {name}: {describe(archs)}")
        if not found:
            print(f"{path.name}: no CUDA fatbin found")


if __name__ == "__main__":
    main()
