"""`katcall validate -f PATH`: check a bundle directory, a .kat file or a .tar.gz offline.

A directory and a tar.gz go through the same pack/unpack path as `katcall apply` and the
leader, so whatever validates here is what the leader will accept.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from internal.manifests import bundle, resources

_GZIP_MAGIC = b"\x1f\x8b"
_USTAR_START, _USTAR_END = 257, 262  # where a tar header says "ustar"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="check a bundle directory, .kat file or .tar.gz bundle (offline)",
        description="Validate resources offline: a bundle directory, a single .kat file "
        "(any kind, cluster.kat included) or a .tar.gz bundle. Prints a one-line summary "
        "and exits 0 when valid; lists every problem on stderr and exits 1 otherwise.",
    )
    p.add_argument(
        "-f", "--filename", dest="path", required=True, metavar="PATH", help="what to check"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    try:
        summary = validate_path(path)
    except resources.ValidationError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    except bundle.BundleError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:
        print(f"katcall: {args.path}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"valid: {summary}")
    return 0


def validate_path(path: str | os.PathLike[str]) -> str:
    """A one-line summary of what `path` holds; raises ValidationError or BundleError."""
    p = Path(path)
    if p.is_dir():
        return _validate_archive(bundle.pack_dir(p))
    with p.open("rb") as f:
        head = f.read(_USTAR_END)
    is_archive = head.startswith(_GZIP_MAGIC) or head[_USTAR_START:_USTAR_END] == b"ustar"
    if is_archive or p.name.endswith((".tar.gz", ".tgz", ".tar")):
        with p.open("rb") as f:
            # Reading one byte past the cap lets unpack() refuse an oversized archive.
            data = f.read(bundle.DEFAULT_LIMITS.max_compressed + 1)
        return _validate_archive(data)
    return resources.describe(resources.load_file(p))


def _validate_archive(data: bytes) -> str:
    return resources.describe(resources.load_apply_payload(bundle.unpack(data)))
