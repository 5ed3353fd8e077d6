"""Packing bundles into reproducible tar.gz archives, and unpacking them as hostile input.

`unpack` never touches the disk. It reads the archive with its own small tar reader over an
incremental gzip decoder, so each limit is enforced while streaming: a gzip bomb stops once
the uncompressed byte count passes the cap, and an archive of 100,000 entries stops at the
first entry past the entry cap. Only regular files with the known bundle names are
accepted; everything else is refused with a one-line reason.

Choices: a leading "./" on member names is accepted (and a top-level "./" directory entry
ignored, as produced by `tar -C dir -czf x.tar.gz .`); every tar header counts as an entry,
including pax and GNU long-name headers; after the end-of-archive marker only zero padding
may follow, and the gzip stream must end with a valid checksum and nothing after it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

BUNDLE_FILE_NAMES = (
    "workload.kat",
    "VirtualLoadBalancer.kat",
    "JobDefinition.kat",
    "BuildDefinition.kat",
    "namespace.kat",
)
_KIND_FILES = {
    "Workload": "workload.kat",
    "VirtualLoadBalancer": "VirtualLoadBalancer.kat",
    "JobDefinition": "JobDefinition.kat",
    "BuildDefinition": "BuildDefinition.kat",
    "Namespace": "namespace.kat",
}
MiB = 1024 * 1024
_BLOCK = 512
_CHUNK = 64 * 1024
_MAX_META = 64 * 1024  # pax / GNU long-name header payloads


class BundleError(ValueError):
    """A refused bundle; str() is one line: `bundle refused: <reason>`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"bundle refused: {reason}")


@dataclass(frozen=True)
class Limits:
    max_compressed: int = 1 * MiB
    max_uncompressed: int = 4 * MiB
    max_file: int = 1 * MiB
    max_entries: int = 16


DEFAULT_LIMITS = Limits()


def _size_text(n: int) -> str:
    if n % MiB == 0:
        return f"{n // MiB} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


def _quote(name: str) -> str:
    # JSON quoting escapes control characters, so a hostile name cannot mess up a terminal.
    shown = name if len(name) <= 100 else name[:100] + "..."
    return json.dumps(shown, ensure_ascii=False)


# ------------------------------------------------------------------ packing


def pack_files(files: Mapping[str, bytes]) -> bytes:
    """Reproducible tar.gz of name -> content: sorted, mtime 0, uid/gid 0, mode 0644."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def pack_dir(path: str | os.PathLike[str]) -> bytes:
    """Pack the bundle files of a directory. Files not ending in .kat (README.md, ...) are
    skipped; an unknown .kat name is an error rather than silently left behind."""
    root = Path(path)
    files: dict[str, bytes] = {}
    for entry in sorted(root.iterdir()):
        if entry.suffix != ".kat" or not entry.is_file():
            continue
        if entry.name not in BUNDLE_FILE_NAMES:
            raise BundleError(
                f"unknown bundle file {_quote(entry.name)} in {root} "
                f"(expected {', '.join(BUNDLE_FILE_NAMES)})"
            )
        files[entry.name] = _read_limited(entry)
    if not files:
        raise BundleError(f"no bundle files (*.kat) in {root}")
    return pack_files(files)


def pack_file(path: str | os.PathLike[str]) -> bytes:
    """Pack one .kat file. A file not named like a bundle file (e.g. team-a.kat) is stored
    under the name for its kind (namespace.kat, workload.kat, ...)."""
    file = Path(path)
    data = _read_limited(file)
    name = file.name if file.name in BUNDLE_FILE_NAMES else _name_for_kind(data, file)
    return pack_files({name: data})


def pack(path: str | os.PathLike[str]) -> bytes:
    """pack_dir for a directory, pack_file otherwise."""
    return pack_dir(path) if Path(path).is_dir() else pack_file(path)


def _read_limited(file: Path) -> bytes:
    with file.open("rb") as f:
        data = f.read(DEFAULT_LIMITS.max_file + 1)
    if len(data) > DEFAULT_LIMITS.max_file:
        raise BundleError(f"{file} is larger than {_size_text(DEFAULT_LIMITS.max_file)}")
    return data


def file_for_kind(kind: str) -> str | None:
    """The bundle file name a resource of `kind` is stored under (None: not a bundle kind)."""
    return _KIND_FILES.get(kind)


def _name_for_kind(data: bytes, file: Path) -> str:
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError:
        doc = None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if not isinstance(kind, str) or kind not in _KIND_FILES:
        raise BundleError(
            f"cannot tell which bundle file {file} is: kind must be one of "
            + ", ".join(_KIND_FILES)
        )
    return _KIND_FILES[kind]


# ------------------------------------------------------------------ unpacking


class _Inflater:
    """Incremental gunzip that refuses to produce more than `limit` bytes in total."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._limit = limit
        self._out = 0
        self._buf = bytearray()
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _more(self) -> bool:
        """Decompress one more piece into the buffer; False at the end of the stream."""
        if self._z.eof:
            return False
        if self._z.unconsumed_tail:
            src = self._z.unconsumed_tail
        elif self._pos < len(self._data):
            src = self._data[self._pos : self._pos + _CHUNK]
            self._pos += len(src)
        else:
            raise BundleError("corrupt gzip data: the stream is truncated")
        try:
            piece = self._z.decompress(src, _CHUNK)
        except zlib.error as e:
            raise BundleError(f"corrupt gzip data ({e})") from None
        self._out += len(piece)
        if self._out > self._limit:
            raise BundleError(f"uncompressed size exceeds {_size_text(self._limit)}")
        self._buf += piece
        return True

    def read(self, n: int) -> bytes | None:
        """Exactly n bytes; None at a clean end of the stream."""
        while len(self._buf) < n:
            if not self._more():
                if self._buf:
                    raise BundleError("corrupt tar archive: truncated")
                return None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def finish(self) -> None:
        """Consume the rest: only zero padding, then the gzip trailer and nothing after."""
        while True:
            if any(self._buf):
                raise BundleError("unexpected data after the end of the tar archive")
            self._buf.clear()
            if not self._more():
                break
        if self._z.unused_data or self._pos < len(self._data):
            raise BundleError("unexpected data after the end of the gzip stream")


@dataclass
class _Header:
    name: str
    size: int
    type: bytes


def _octal(field: bytes, what: str) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for large values
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise BundleError(f"corrupt tar header (bad {what} field)") from None


def _parse_header(block: bytes) -> _Header:
    stored = _octal(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b >= 128)
    if stored not in (unsigned, signed):
        raise BundleError("corrupt tar header (checksum mismatch)")
    magic = block[257:265]
    if magic not in (b"ustar\x0000", b"ustar  \x00"):
        raise BundleError("not a tar archive in ustar format")
    name = block[0:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0] if magic == b"ustar\x0000" else b""
    if prefix:
        name = prefix + b"/" + name
    return _Header(_decode_name(name), _octal(block[124:136], "size"), block[156:157])


def _decode_name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(
            f"file name {_quote(raw.decode('utf-8', 'replace'))} is not UTF-8"
        ) from None


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise BundleError("corrupt pax header")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise BundleError("corrupt pax header") from None
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise BundleError("corrupt pax header")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise BundleError("corrupt pax header")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos = end
    return records


_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symlink",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory",
    b"6": "fifo",
    b"7": "contiguous file",
    b"S": "sparse file",
}


def _check_path(name: str) -> str:
    """The bundle file name for a member path; "" for the harmless top-level directory."""
    if name.startswith("/"):
        raise BundleError(f"{_quote(name)} is an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise BundleError(f"{_quote(name)} escapes the bundle")
    parts = [p for p in parts if p not in ("", ".")]
    if len(parts) > 1:
        raise BundleError(f"{_quote(name)} is in a subdirectory; bundle files must be top-level")
    return parts[0] if parts else ""


def unpack(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, bytes]:
    """Bundle file name -> content from a tar.gz, refusing anything unexpected (BundleError)."""
    if len(data) > limits.max_compressed:
        raise BundleError(f"compressed size exceeds {_size_text(limits.max_compressed)}")
    if data[:2] != b"\x1f\x8b":
        if len(data) >= 265 and data[257:262] == b"ustar":
            raise BundleError("not gzip-compressed (expected a .tar.gz, got a plain tar)")
        raise BundleError("not a gzip-compressed tar archive")
    stream = _Inflater(data, limits.max_uncompressed)
    files: dict[str, bytes] = {}
    entries = 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        block = stream.read(_BLOCK)
        if block is None or not any(block):
            break  # a missing end-of-archive marker is tolerated
        entries += 1
        if entries > limits.max_entries:
            raise BundleError(f"more than {limits.max_entries} entries")
        header = _parse_header(block)
        size = header.size
        if header.type in (b"x", b"g", b"L", b"K"):
            if size > _MAX_META:
                raise BundleError(f"extended header larger than {_size_text(_MAX_META)}")
            payload = _read_payload(stream, size)
            if header.type == b"x":
                pax = _pax_records(payload)
            elif header.type == b"L":
                long_name = _decode_name(payload.split(b"\0", 1)[0])
            continue
        name = pax.get("path", long_name if long_name is not None else header.name)
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise BundleError("corrupt pax header (size)") from None
            if size < 0:
                raise BundleError("corrupt pax header (negative size)")
        pax, long_name = {}, None
        bundle_name = _check_path(name)
        kind = _TYPE_NAMES.get(header.type)
        if header.type == b"5" and bundle_name == "":
            continue
        if kind is not None:
            raise BundleError(f"{kind} {_quote(name)} not allowed (regular files only)")
        if header.type not in (b"0", b"\0"):
            raise BundleError(f"entry {_quote(name)} has unsupported type {header.type!r}")
        if bundle_name not in BUNDLE_FILE_NAMES:
            raise BundleError(
                f"unknown file {_quote(name)} (expected {', '.join(BUNDLE_FILE_NAMES)})"
            )
        if bundle_name in files:
            raise BundleError(f"duplicate file {_quote(bundle_name)}")
        if size > limits.max_file:
            raise BundleError(f"{_quote(bundle_name)} is larger than {_size_text(limits.max_file)}")
        files[bundle_name] = _read_payload(stream, size)
    stream.finish()
    if not files:
        raise BundleError("the archive contains no bundle files")
    return files


def _read_payload(stream: _Inflater, size: int) -> bytes:
    padded = -(-size // _BLOCK) * _BLOCK
    data = stream.read(padded)
    if data is None:
        raise BundleError("corrupt tar archive: truncated file data")
    return data[:size]
