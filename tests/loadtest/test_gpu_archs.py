"""loadtest.gpu_archs on a hand-built ELF file whose .nv_fatbin holds known entries."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from loadtest.gpu_archs import FATBIN_MAGIC, archs_of, describe, fatbin_archs, main


def _entry(kind: int, arch: int, payload: bytes) -> bytes:
    header = bytearray(64)
    struct.pack_into("<HHIQ", header, 0, kind, 0x0101, len(header), len(payload))
    struct.pack_into("<I", header, 28, arch)
    return bytes(header) + payload


def _fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body


def _elf(sections: dict[str, bytes]) -> bytes:
    """A 64-bit little-endian ELF file with these sections (and the null and name-table sections)."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    blobs = [*sections.values(), names]
    data, offsets = b"", []
    for blob in blobs:
        offsets.append(64 + len(data))
        data += blob + b"\0" * (-len(blob) % 8)
    shoff = 64 + len(data)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, len(blobs) + 1, len(blobs))
    table = bytes(64)  # the null section
    name_at = 1
    for name, blob, off in zip([*sections, ".shstrtab"], blobs, offsets, strict=True):
        table += struct.pack("<IIQQQQ", name_at, 1, 0, 0, off, len(blob)) + bytes(24)
        name_at += len(name) + 1
    return bytes(header) + data + table


def test_entries_of_every_fatbin_are_counted_by_kind_and_architecture(tmp_path: Path) -> None:
    fatbins = (
        _fatbin(_entry(2, 80, b"x" * 24), _entry(2, 90, b"y" * 8))
        + b"\0" * 16  # padding between fatbins
        + _fatbin(_entry(2, 90, b"z" * 16), _entry(1, 90, b"ptx!" * 4))
    )
    elf = _elf({".text": b"\x90" * 40, ".nv_fatbin": fatbins})
    archs = fatbin_archs(elf)
    assert archs == {("sass", 80): 1, ("sass", 90): 2, ("ptx", 90): 1}
    assert describe(archs) == "machine code for sm_80, sm_90; PTX for sm_90"

    # in a wheel: its shared libraries with a fatbin, named by their path in the wheel
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/libgpu.so", elf)
        z.writestr("demo/libcpu.so.1", _elf({".text": b"\x90" * 8}))
        z.writestr("demo/__init__.py", "")
    assert archs_of(wheel) == {"demo/libgpu.so": archs}


def test_a_library_without_a_fatbin_has_no_architectures() -> None:
    assert not fatbin_archs(_elf({".text": b"\x90" * 8}))


def test_the_command_names_a_missing_or_unreadable_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_elf = tmp_path / "notes.txt"
    not_elf.write_text("not a library")
    for path, problem in ((tmp_path / "missing.whl", "is not a file"), (not_elf, "not a 64-bit little-endian ELF")):
        with pytest.raises(SystemExit) as e:
            main([str(path)])
        assert e.value.code == 2 and problem in capsys.readouterr().err
