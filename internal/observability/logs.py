"""kat-agent's logging: text or JSON lines, size-rotated files, and a cap on
repeated identical warnings.

JSON: one object per line and nothing else: `time` (UTC RFC 3339 with
milliseconds), `level`, `component` (the logger), `msg`, and `node`, `workload`,
`instance` where known (`log.info(..., extra={"workload": ..., "instance": ...})`;
`node` is set once per process). gRPC's C core writes its own `I1201 ...` lines
straight to stderr, past Python's logging; with JSON it is silenced through
GRPC_VERBOSITY=NONE, which must be set before grpc is imported
(`quiet_grpc_core_logging`, called first thing by the command line).

Repeats: the same warning (same logger and format string, e.g. "refused join
from %s") is written at most once per REPEAT_WINDOW seconds; the next one that
gets through says how many were held back.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from internal.observability.rotation import LOG_KEEP, LOG_MAX_BYTES, rotate

REPEAT_WINDOW = 60.0
_FIELDS = ("node", "workload", "instance", "namespace")


def quiet_grpc_core_logging(argv: list[str]) -> None:
    """Silence gRPC core's own stderr lines when logging JSON (before grpc is imported)."""
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    if any(a == "--log-format=json" or (a == "--log-format" and b == "json") for a, b in pairs):
        os.environ["GRPC_VERBOSITY"] = "NONE"
        os.environ.pop("GRPC_TRACE", None)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    node = ""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "component": record.name,
            "msg": record.getMessage(),
        }
        if self.node:
            doc["node"] = self.node
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339(record.created)


class RepeatFilter(logging.Filter):
    """Let one of a run of identical WARNING+ records through per window."""

    def __init__(self, window: float = REPEAT_WINDOW, clock: object = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg)
        now = self._clock()  # type: ignore[operator]
        with self._lock:
            last, held = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.window:
                self._seen[key] = (last, held + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 4096:  # bounded: forget the oldest
                for k in sorted(self._seen, key=lambda k: self._seen[k][0])[:1024]:
                    del self._seen[k]
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.window:g}s)"
        return True


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Size-based rotation; every file 0600 (logs can name what runs where). The
    shift of the old files is rotation.rotate, as for every other log of KAT."""

    def doRollover(self) -> None:
        if self.stream:
            self.stream.close()
            self.stream = None  # type: ignore[assignment]
        rotate(Path(self.baseFilename), self.backupCount)
        self.stream = self._open()

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, self.mode, encoding=self.encoding, errors=self.errors)


def setup_logging(level: str, fmt: str, log_file: Path | None = None) -> None:
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = PrivateRotatingFileHandler(
            log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_KEEP, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if log_file is not None:
        # What the agent prints (the join command after init, ...) goes to the file too.
        sys.stdout = _LinesToLog(logging.getLogger("stdout"))  # type: ignore[assignment]
    elif fmt == "json":
        sys.stdout = JsonLines(sys.__stdout__, "stdout", "info")  # type: ignore[assignment]
    if fmt == "json":
        sys.stderr = JsonLines(sys.__stderr__, "stderr", "error")  # type: ignore[assignment]
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    # asyncio's "Task exception was never retrieved" and the like come through logging too;
    # Python warnings as well, so that nothing but formatted lines reaches the log.
    logging.captureWarnings(True)


class JsonLines:
    """A text stream that turns every line written to it into a JSON log line (for
    sys.stdout and sys.stderr in JSON mode: prints and tracebacks stay parseable)."""

    def __init__(self, target: object, component: str, level: str) -> None:
        self._target, self._component, self._level = target, component, level
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._buf += text
            *lines, self._buf = self._buf.split("\n")
            for line in lines:
                if line.strip():
                    doc = {
                        "time": rfc3339(time.time()),
                        "level": self._level,
                        "component": self._component,
                        "msg": line,
                    }
                    if JsonFormatter.node:
                        doc["node"] = JsonFormatter.node
                    self._target.write(json.dumps(doc, ensure_ascii=False) + "\n")  # type: ignore[attr-defined]
            self._target.flush()  # type: ignore[attr-defined]
        return len(text)

    def flush(self) -> None:
        self._target.flush()  # type: ignore[attr-defined]

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._target.fileno()  # type: ignore[attr-defined]


class _LinesToLog:
    """A text stream that logs every line written to it at INFO."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log, self._buf = logger, ""

    def write(self, text: str) -> int:
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if line.strip():
                self._log.info("%s", line)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def set_node(name: str) -> None:
    """Name the node in every JSON line from now on."""
    JsonFormatter.node = name
