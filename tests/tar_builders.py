"""Builders for test archives, hostile ones included (shared by bundle and CLI tests)."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections.abc import Iterable

GiB = 1 << 30
WORKLOAD = b"apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata: {name: x}\n"


def member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, data


def tar_bytes(
    members: Iterable[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.USTAR_FORMAT
) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return raw.getvalue()


def gz(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def targz(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    return gz(tar_bytes(members))


def header_block(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    return info.tobuf(format=tarfile.GNU_FORMAT)  # GNU: base-256 sizes above 8 GiB


def numbered_headers(count: int) -> Iterable[bytes]:
    """Headers of empty files f000000, f000001, ...: one template, name and checksum patched."""
    template = bytearray(header_block("f000000", 0))
    base = sum(template[:148]) + 8 * 32 + sum(template[156:]) - sum(b"f000000")
    for i in range(count):
        name = f"f{i:06d}".encode()
        template[0:7] = name
        template[148:156] = b"%06o\0 " % (base + sum(name))
        yield bytes(template)


def gzip_stream(prefix: bytes, zeros: int, repeat_block: bytes = b"", repeat: int = 0) -> bytes:
    """A valid gzip of prefix + repeat_block*repeat + zeros, made without materialising it:
    identical segments compress to identical bytes after a full flush."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff", c.compress(prefix)]
    crc = zlib.crc32(prefix)
    total = len(prefix)
    out.append(c.flush(zlib.Z_FULL_FLUSH))
    group = 1000 if repeat % 1000 == 0 else 1
    segments = ((repeat_block * group, repeat // group), (bytes(8 << 20), zeros // (8 << 20)))
    for seg_data, count in segments:
        if not count:
            continue
        seg = c.compress(seg_data) + c.flush(zlib.Z_FULL_FLUSH)
        out.append(seg * count)
        for _ in range(count):
            crc = zlib.crc32(seg_data, crc)
        total += len(seg_data) * count
    out.append(c.flush(zlib.Z_FINISH))
    out.append(struct.pack("<II", crc, total & 0xFFFFFFFF))
    return b"".join(out)
