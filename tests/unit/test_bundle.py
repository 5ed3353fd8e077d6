"""Packing is reproducible; unpacking refuses every kind of hostile archive, quickly."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from tar_builders import (
    WORKLOAD,
    GiB,
    gz,
    gzip_stream,
    header_block,
    member,
    numbered_headers,
    tar_bytes,
    targz,
)

from internal.manifests import bundle
from internal.manifests.bundle import BundleError, Limits, pack_dir, pack_file, pack_files, unpack

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def refused(data: bytes, limits: Limits = bundle.DEFAULT_LIMITS) -> str:
    with pytest.raises(BundleError) as err:
        unpack(data, limits)
    message = str(err.value)
    assert message.startswith("bundle refused: ")
    assert "\n" not in message
    return message


def timed_low_memory(fn: Callable[[], object], seconds: float = 1.0, peak_mib: int = 16) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.2f}s"
    assert peak < peak_mib << 20, f"peak memory {peak >> 20} MiB"


# ------------------------------------------------------------------ packing


def test_pack_is_reproducible(tmp_path: Path) -> None:
    first = pack_dir(EXAMPLES / "web")
    assert pack_dir(EXAMPLES / "web") == first
    copy = tmp_path / "elsewhere"
    shutil.copytree(EXAMPLES / "web", copy)
    for f in copy.iterdir():
        os.utime(f, (1_000_000_000, 1_234_567_890))
        f.chmod(0o600)
    assert pack_dir(copy) == first


def test_pack_contents(tmp_path: Path) -> None:
    data = pack_dir(EXAMPLES / "web")
    assert data[4:8] == b"\0\0\0\0"  # gzip mtime
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["VirtualLoadBalancer.kat", "workload.kat"]  # README skipped
    for i in infos:
        assert (i.mtime, i.uid, i.gid, i.mode, i.uname, i.gname) == (0, 0, 0, 0o644, "", "")
        assert i.isreg()
    files = unpack(data)
    assert files == {n: (EXAMPLES / "web" / n).read_bytes() for n in files}


def test_pack_dir_refuses_unknown_kat_file(tmp_path: Path) -> None:
    (tmp_path / "workload.kat").write_bytes(WORKLOAD)
    (tmp_path / "VirtualLoadbalancer.kat").write_bytes(b"x")
    with pytest.raises(BundleError, match='unknown bundle file "VirtualLoadbalancer.kat"'):
        pack_dir(tmp_path)


def test_pack_dir_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match=r"no bundle files \(\*\.kat\)"):
        pack_dir(tmp_path)


def test_pack_file_names_member_by_kind(tmp_path: Path) -> None:
    ns = tmp_path / "team-a.kat"
    ns.write_text("apiVersion: kat.dws.rip/v1alpha1\nkind: Namespace\nmetadata: {name: team-a}\n")
    assert list(unpack(pack_file(ns))) == ["namespace.kat"]
    wl = tmp_path / "workload.kat"
    wl.write_bytes(WORKLOAD)
    assert unpack(bundle.pack(wl)) == {"workload.kat": WORKLOAD}
    odd = tmp_path / "odd.kat"
    odd.write_text("kind: Gadget\n")
    with pytest.raises(BundleError, match="cannot tell which bundle file"):
        pack_file(odd)


def test_pack_files_round_trip() -> None:
    files = {"workload.kat": WORKLOAD, "JobDefinition.kat": b"x" * 5000}
    assert unpack(pack_files(files)) == files
    assert pack_files(files) == pack_files(dict(reversed(files.items())))


# ------------------------------------------------------------------ accepted variants


def test_accepts_leading_dot_slash_and_top_dir() -> None:
    data = targz(member("./", kind=tarfile.DIRTYPE), member("./workload.kat", WORKLOAD))
    assert unpack(data) == {"workload.kat": WORKLOAD}


def test_accepts_pax_and_gnu_formats() -> None:
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        info, data = member("workload.kat", WORKLOAD)
        info.pax_headers = {"comment": "made by hand"} if fmt == tarfile.PAX_FORMAT else {}
        assert unpack(gz(tar_bytes([(info, data)], fmt))) == {"workload.kat": WORKLOAD}


def test_accepts_missing_end_of_archive() -> None:
    raw = tar_bytes([member("workload.kat", WORKLOAD)])
    assert unpack(gz(raw[:1024])) == {"workload.kat": WORKLOAD}


# ------------------------------------------------------------------ hostile archives


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        (
            [member("workload.kat", kind=tarfile.SYMTYPE, linkname="/etc/passwd")],
            'symlink "workload.kat" not allowed',
        ),
        (
            [
                member("workload.kat", WORKLOAD),
                member("JobDefinition.kat", kind=tarfile.LNKTYPE, linkname="workload.kat"),
            ],
            'hard link "JobDefinition.kat" not allowed',
        ),
        ([member("../x", WORKLOAD)], '"../x" escapes the bundle'),
        (
            [member("./a/../../workload.kat", WORKLOAD)],
            '"./a/../../workload.kat" escapes the bundle',
        ),
        ([member("/etc/cron.d/x", WORKLOAD)], '"/etc/cron.d/x" is an absolute path'),
        (
            [member("workload.kat", kind=tarfile.CHRTYPE)],
            'character device "workload.kat" not allowed',
        ),
        ([member("sda", kind=tarfile.BLKTYPE)], 'block device "sda" not allowed'),
        ([member("workload.kat", kind=tarfile.FIFOTYPE)], 'fifo "workload.kat" not allowed'),
        ([member("sub/", kind=tarfile.DIRTYPE)], 'directory "sub/" not allowed'),
        ([member("sub/workload.kat", WORKLOAD)], '"sub/workload.kat" is in a subdirectory'),
        ([member("evil.sh", b"#!/bin/sh")], 'unknown file "evil.sh" (expected workload.kat,'),
        (
            [member("workload.kat", WORKLOAD), member("./workload.kat", WORKLOAD)],
            'duplicate file "workload.kat"',
        ),
        ([member("\x1b[2Jworkload.kat", WORKLOAD)], 'unknown file "\\u001b[2Jworkload.kat"'),
        ([], "the archive contains no bundle files"),
        ([member("./", kind=tarfile.DIRTYPE)], "the archive contains no bundle files"),
    ],
)
def test_refuses(members: list[tuple[tarfile.TarInfo, bytes]], reason: str) -> None:
    assert reason in refused(targz(*members))


def test_refuses_pax_path_escape() -> None:
    info, data = member("workload.kat", WORKLOAD)
    info.pax_headers = {"path": "../../etc/passwd"}
    assert '"../../etc/passwd" escapes the bundle' in refused(
        gz(tar_bytes([(info, data)], tarfile.PAX_FORMAT))
    )


@pytest.mark.parametrize(
    ("size", "reason"), [("-5", "negative size"), ("x", "corrupt pax header (size)")]
)
def test_refuses_bad_pax_size(size: str, reason: str) -> None:
    info, data = member("workload.kat", WORKLOAD)
    info.pax_headers = {"size": size}
    assert reason in refused(gz(tar_bytes([(info, data)], tarfile.PAX_FORMAT)))


def test_refuses_gnu_long_name_escape() -> None:
    name = "../" * 40 + "workload.kat"
    raw = tar_bytes([member(name, WORKLOAD)], tarfile.GNU_FORMAT)
    assert raw[156:157] == b"L"
    assert "escapes the bundle" in refused(gz(raw))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a gzip-compressed tar archive"),
        (b"hello world, definitely not gzip", "not a gzip-compressed tar archive"),
        (
            tar_bytes([member("workload.kat", WORKLOAD)]),
            "not gzip-compressed (expected a .tar.gz, got a plain tar)",
        ),
        (b"\x1f\x8b\x08\x00" + os.urandom(200), "corrupt gzip data"),
        (
            gz(tar_bytes([member("workload.kat", WORKLOAD)]))[:-30],
            "corrupt gzip data: the stream is truncated",
        ),
        (gz(b"x" * 2048), "corrupt tar header (bad checksum field)"),
        (
            gz(b"y" + tar_bytes([member("workload.kat", WORKLOAD)])[1:]),
            "corrupt tar header (checksum mismatch)",
        ),
        (gz(tar_bytes([member("workload.kat", WORKLOAD)])[:700]), "truncated"),
        (
            gz(tar_bytes([member("workload.kat", WORKLOAD)]) + b"junk" + bytes(508)),
            "unexpected data after the end of the tar archive",
        ),
        (
            gz(tar_bytes([member("workload.kat", WORKLOAD)])) + b"trailing",
            "unexpected data after the end of the gzip stream",
        ),
        (
            gz(tar_bytes([member("workload.kat", WORKLOAD)])) + gz(b"second member"),
            "unexpected data after the end of the gzip stream",
        ),
    ],
)
def test_refuses_bad_input(data: bytes, reason: str) -> None:
    assert reason in refused(data)


def test_refuses_bad_crc() -> None:
    data = bytearray(gz(tar_bytes([member("workload.kat", WORKLOAD)])))
    data[-8] ^= 0xFF
    assert "corrupt gzip data" in refused(bytes(data))


def test_refuses_non_utf8_name() -> None:
    block = bytearray(header_block("workload.kat", 0))
    block[0] = 0xFF
    block[148:156] = b"        "
    block[148:155] = f"{sum(block):06o}\0".encode()
    assert "is not UTF-8" in refused(gz(bytes(block) + bytes(1024)))


def test_refuses_oversized_compressed_input() -> None:
    assert refused(b"\x1f\x8b" + bytes(1 << 20)) == "bundle refused: compressed size exceeds 1 MiB"


def test_refuses_file_over_per_file_limit() -> None:
    data = targz(member("workload.kat", b"x" * ((1 << 20) + 1)))
    assert refused(data) == 'bundle refused: "workload.kat" is larger than 1 MiB'


def test_refuses_total_over_uncompressed_limit() -> None:
    big = b"#" * (1000 << 10)
    names = [
        "workload.kat",
        "VirtualLoadBalancer.kat",
        "JobDefinition.kat",
        "BuildDefinition.kat",
        "namespace.kat",
    ]
    data = targz(*(member(n, big) for n in names))
    assert refused(data) == "bundle refused: uncompressed size exceeds 4 MiB"


def test_refuses_huge_extended_header() -> None:
    data = gzip_stream(header_block("././@PaxHeader", GiB, tarfile.XHDTYPE), 0)
    assert "extended header larger than 64 KiB" in refused(data)


def test_entry_limit_counts_every_header() -> None:
    names = ["workload.kat", "VirtualLoadBalancer.kat", "JobDefinition.kat", "BuildDefinition.kat"]
    data = targz(*(member(n, WORKLOAD) for n in names))
    assert refused(data, Limits(max_entries=3)) == "bundle refused: more than 3 entries"
    assert len(unpack(data, Limits(max_entries=4))) == 4


# ------------------------------------------------------------------ bombs: fast, little memory


def test_gzip_bomb_of_zeros_stops_at_uncompressed_limit() -> None:
    bomb = gzip_stream(b"", GiB)  # 1 GiB of zeros, about 1 MiB compressed
    assert len(bomb) <= bundle.DEFAULT_LIMITS.max_compressed
    timed_low_memory(lambda: refused(bomb) == "bundle refused: uncompressed size exceeds 4 MiB")
    assert refused(bomb) == "bundle refused: uncompressed size exceeds 4 MiB"


def test_gzip_bomb_after_a_valid_file_stops_at_uncompressed_limit() -> None:
    valid = tar_bytes([member("workload.kat", WORKLOAD)])[:1024]
    bomb = gzip_stream(valid, GiB)
    assert len(bomb) <= bundle.DEFAULT_LIMITS.max_compressed
    assert refused(bomb) == "bundle refused: uncompressed size exceeds 4 MiB"
    timed_low_memory(lambda: refused(bomb))


def test_gzip_bomb_declared_as_one_huge_file_stops_at_its_header() -> None:
    bomb = gzip_stream(header_block("workload.kat", GiB), GiB)
    assert len(bomb) <= bundle.DEFAULT_LIMITS.max_compressed
    assert refused(bomb) == 'bundle refused: "workload.kat" is larger than 1 MiB'
    timed_low_memory(lambda: refused(bomb))


def test_hundred_thousand_top_dirs_stop_at_the_17th() -> None:
    data = gzip_stream(b"", 0, header_block("./", 0, tarfile.DIRTYPE), 100_000)
    assert len(data) <= bundle.DEFAULT_LIMITS.max_compressed
    assert refused(data) == "bundle refused: more than 16 entries"
    timed_low_memory(lambda: refused(data), seconds=0.5)


def test_hundred_thousand_tiny_files_stop_at_once() -> None:
    data = gz(b"".join(numbered_headers(100_000)))
    # Even with the compressed cap lifted, only the first header is ever looked at.
    lifted = Limits(max_compressed=len(data))
    timed_low_memory(lambda: refused(data, lifted), seconds=0.5)
    assert 'unknown file "f000000"' in refused(data, lifted)
    dup = gzip_stream(b"", 0, header_block("workload.kat", 0), 100_000)
    assert refused(dup) == 'bundle refused: duplicate file "workload.kat"'


def test_unpack_never_touches_the_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pack_dir(EXAMPLES / "web")

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpack tried to open a file")

    monkeypatch.setattr("builtins.open", no_disk)
    monkeypatch.setattr(os, "open", no_disk)
    monkeypatch.setattr(os, "mkdir", no_disk)
    assert set(unpack(data)) == {"workload.kat", "VirtualLoadBalancer.kat"}
