"""`katcall config view|get-contexts|use-context|current-context|merge`."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from internal.security import clientconfig
from katcall import output


def _path(args: argparse.Namespace) -> Path:
    return clientconfig.resolve_path(getattr(args, "katconfig", None))


def cmd_get_contexts(args: argparse.Namespace) -> int:
    cfg = clientconfig.load(_path(args))
    rows = [
        ["*" if n == cfg.current else "", n, ",".join(c.endpoints)]
        for n, c in sorted(cfg.contexts.items())
    ]
    print(output.table(["CURRENT", "NAME", "ENDPOINTS"], rows))
    return 0


def view(cfg: clientconfig.ClientConfig, raw: bool = False) -> str:
    """The config as YAML; certificates and keys shown as REDACTED unless `raw`."""
    doc = yaml.safe_load(cfg.to_yaml())
    if not raw:
        for ctx in doc.get("contexts") or []:
            for key in ("ca", "cert", "key"):
                if ctx.get(key):
                    ctx[key] = "REDACTED"
    return yaml.safe_dump(doc, sort_keys=False).rstrip()


def cmd_view(args: argparse.Namespace) -> int:
    cfg = clientconfig.load(_path(args))
    if args.minify:
        ctx = cfg.context(getattr(args, "context", None))
        cfg = clientconfig.ClientConfig(contexts={ctx.name: ctx}, current=ctx.name)
    print(view(cfg, raw=args.raw))
    return 0


def cmd_use_context(args: argparse.Namespace) -> int:
    path = _path(args)
    cfg = clientconfig.load(path)
    cfg.context(args.name)
    cfg.current = args.name
    clientconfig.save(cfg, path)
    print(f"switched to context {args.name!r}")
    return 0


def cmd_current(args: argparse.Namespace) -> int:
    print(clientconfig.load(_path(args)).current)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Add the contexts of another config file (e.g. a node's admin.katconfig)."""
    path = _path(args)
    cfg = clientconfig.load_or_empty(path)
    other = clientconfig.load(Path(args.file))
    for ctx in other.contexts.values():
        cfg.upsert(ctx, make_current=args.use)
    clientconfig.save(cfg, path)
    print(f"merged {len(other.contexts)} context(s) into {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="manage cluster contexts in the katcall config")
    csub = p.add_subparsers(dest="config_cmd", required=True)
    v = csub.add_parser("view", help="print the config (certificates and keys redacted)")
    v.add_argument("--raw", action="store_true", help="show certificates and keys too")
    v.add_argument("--minify", action="store_true", help="only the context in use")
    v.set_defaults(func=cmd_view)
    csub.add_parser("get-contexts", help="list contexts").set_defaults(func=cmd_get_contexts)
    csub.add_parser("current-context", help="print the current context").set_defaults(
        func=cmd_current
    )
    u = csub.add_parser("use-context", help="make a context current")
    u.add_argument("name")
    u.set_defaults(func=cmd_use_context)
    m = csub.add_parser("merge", help="add the contexts of another katcall config file")
    m.add_argument("file")
    m.add_argument("--use", action="store_true", help="make the merged context current")
    m.set_defaults(func=cmd_merge)
