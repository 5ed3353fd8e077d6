"""Benchmark: a typical bundle (examples/web) from packed tar.gz bytes through unpack,
YAML loading, validation and defaults, as the leader does on every apply.

    python3 benchmarks/bench_validate.py [--runs N]

Prints one line with the median and p99 latency; the target is under 20 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from internal.manifests import bundle, resources  # noqa: E402 - needs the path set above

TARGET_MS = 20.0


def one_apply(data: bytes) -> None:
    files = bundle.unpack(data)
    loaded = resources.load_bundle_files(files)
    resources.apply_defaults(loaded)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    data = bundle.pack_dir(ROOT / "examples" / "web")
    for _ in range(50):  # warm-up: imports, caches
        one_apply(data)
    samples: list[float] = []
    for _ in range(args.runs):
        start = time.perf_counter()
        one_apply(data)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    median = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    verdict = "OK" if p99 < TARGET_MS else "OVER TARGET"
    print(
        f"bench_validate: examples/web ({len(data)} B tar.gz) unpack+load+validate+defaults: "
        f"median {median:.3f} ms, p99 {p99:.3f} ms over {args.runs} runs "
        f"(target < {TARGET_MS:.0f} ms: {verdict})"
    )
    return 0 if p99 < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
