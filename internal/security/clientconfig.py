"""katcall's client configuration: several clusters ("contexts") in one file.

Looked up as `--katconfig PATH`, else `$KATCONFIG`, else `~/.kat/config`.
The file holds the client's private key, so it is always written 0600.

    apiVersion: kat.dws.rip/v1alpha1
    kind: KatConfig
    currentContext: home
    contexts:
    - name: home
      endpoints: [10.0.0.1:9115]
      ca: |
        -----BEGIN CERTIFICATE-----
      cert: |
        ...
      key: |
        ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from internal.host.files import write_private

DEFAULT_PATH = Path("~/.kat/config")


class ConfigError(Exception):
    pass


@dataclass
class Context:
    name: str
    endpoints: list[str]
    ca: bytes
    cert: bytes
    key: bytes


@dataclass
class ClientConfig:
    contexts: dict[str, Context] = field(default_factory=dict)
    current: str = ""

    def context(self, name: str | None = None) -> Context:
        wanted = name or self.current
        if not wanted:
            raise ConfigError(
                "no current context: pass --context or run `katcall config use-context`"
            )
        try:
            return self.contexts[wanted]
        except KeyError:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise ConfigError(f"no context named {wanted!r} (known: {known})") from None

    def upsert(self, ctx: Context, make_current: bool = True) -> None:
        self.contexts[ctx.name] = ctx
        if make_current or not self.current:
            self.current = ctx.name

    def to_yaml(self) -> str:
        doc = {
            "apiVersion": "kat.dws.rip/v1alpha1",
            "kind": "KatConfig",
            "currentContext": self.current,
            "contexts": [
                {
                    "name": c.name,
                    "endpoints": list(c.endpoints),
                    "ca": c.ca.decode(),
                    "cert": c.cert.decode(),
                    "key": c.key.decode(),
                }
                for c in self.contexts.values()
            ],
        }
        return yaml.safe_dump(doc, sort_keys=False)


def resolve_path(explicit: str | None = None) -> Path:
    raw = explicit or os.environ.get("KATCONFIG") or str(DEFAULT_PATH)
    return Path(raw).expanduser()


def parse(text: str, source: str = "katconfig") -> ClientConfig:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping at the top")
    cfg = ClientConfig(current=str(doc.get("currentContext") or ""))
    for i, raw in enumerate(doc.get("contexts") or []):
        try:
            ctx = Context(
                name=str(raw["name"]),
                endpoints=[str(e) for e in raw["endpoints"]],
                ca=str(raw["ca"]).encode(),
                cert=str(raw["cert"]).encode(),
                key=str(raw["key"]).encode(),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{source}: contexts[{i}]: missing or bad field {exc}") from None
        cfg.contexts[ctx.name] = ctx
    return cfg


def load(path: Path) -> ClientConfig:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"no katcall config at {path} (set KATCONFIG or pass --katconfig; "
            "`kat-agent init` writes one as <data-dir>/admin.katconfig)"
        ) from None
    return parse(text, str(path))


def load_or_empty(path: Path) -> ClientConfig:
    return load(path) if path.exists() else ClientConfig()


def save(cfg: ClientConfig, path: Path) -> None:
    write_private(path, cfg.to_yaml().encode())
