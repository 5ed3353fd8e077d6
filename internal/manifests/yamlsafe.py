"""Reading one YAML document from hostile input.

PyYAML's composer recurses per nesting level (libyaml's C composer segfaults on a few ten
thousand levels; the Python one hits RecursionError), so documents are built here from the
parser's event stream with an explicit stack and a depth limit. Only the YAML 1.1 core
types are produced (no Python object tags). Mappings remember keys written twice, so that
callers can report them; merge keys (`<<`) work as in PyYAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

MAX_DEPTH = 64
MAX_EVENTS = 100_000  # a real .kat file has a few hundred; bounds the parse time
# Aliases share one parsed value, but everything after (proto conversion,
# validation, storage) copies it once per reference: a document counts as if its
# aliases were written out, against the same 1 MiB a file may have. Every node
# counts at least _NODE_BYTES, so that aliases of containers count too.
MAX_EXPANDED_BYTES = 1024 * 1024
_NODE_BYTES = 8

_MAP_TAGS = (None, "!", "tag:yaml.org,2002:map")
_SEQ_TAGS = (None, "!", "tag:yaml.org,2002:seq")
_SCALAR_TAGS = {
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:binary",
}
_MERGE_TAG = "tag:yaml.org,2002:merge"
_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_resolver = Resolver()
_constructor = SafeConstructor()


class YamlError(Exception):
    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


class YamlMapping(dict[Any, Any]):
    """A mapping that remembers keys written more than once."""

    duplicates: list[Any]

    def __init__(self) -> None:
        super().__init__()
        self.duplicates = []


class _Merge:
    """The `<<` merge key."""


_MERGE = _Merge()
_NO_KEY = object()


@dataclass
class _Frame:
    value: list[Any] | YamlMapping
    mark: Any
    key: Any = _NO_KEY
    key_mark: Any = None
    pairs: list[tuple[Any, Any]] = field(default_factory=list)
    merges: list[YamlMapping] = field(default_factory=list)
    anchor: str | None = None
    start: int = 0  # the document's expanded size when this container began


def load_document(text: str) -> Any:
    """The single document in `text` (None if there is none); raises YamlError or
    yaml.YAMLError (syntax errors, with marks)."""
    stack: list[_Frame] = []
    anchors: dict[str, Any] = {}
    # expanded size of each anchored value, and of the document so far
    weights: dict[str, int] = {}
    expanded = 0
    root: Any = None
    documents = 0

    def grow(n: int, mark: Any) -> None:
        nonlocal expanded
        expanded += n
        if expanded > MAX_EXPANDED_BYTES:
            raise YamlError(
                f"document too large with its aliases expanded (more than "
                f"{MAX_EXPANDED_BYTES // 1024} KiB)",
                mark,
            )

    def add(value: Any, mark: Any) -> None:
        nonlocal root
        if not stack:
            root = value
            return
        top = stack[-1]
        if isinstance(top.value, list):
            top.value.append(value)
        elif top.key is _NO_KEY:
            if isinstance(value, list | dict):
                raise YamlError("a mapping key must be a plain value", mark)
            top.key, top.key_mark = value, mark
        else:
            if top.key is _MERGE:
                top.merges.extend(_merge_sources(value, mark))
            else:
                top.pairs.append((top.key, value))
            top.key = _NO_KEY

    for count, event in enumerate(yaml.parse(text, Loader=_Loader)):
        mark = event.start_mark
        if count >= MAX_EVENTS:
            raise YamlError(f"document too large (more than {MAX_EVENTS} YAML events)", mark)
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise YamlError("expected a single document, found more than one (---)", mark)
        elif isinstance(event, yaml.ScalarEvent):
            value = _scalar(event)
            weight = len(event.value) + _NODE_BYTES
            grow(weight, mark)
            _anchor(anchors, event.anchor, value)
            if event.anchor is not None:
                weights[event.anchor] = weight
            add(value, mark)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise YamlError(f"unknown alias *{event.anchor}", mark)
            grow(weights[event.anchor], mark)
            add(anchors[event.anchor], mark)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            is_map = isinstance(event, yaml.MappingStartEvent)
            if event.tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
                raise YamlError(f"unsupported tag {event.tag}", mark)
            if len(stack) >= MAX_DEPTH:
                raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", mark)
            container: list[Any] | YamlMapping = YamlMapping() if is_map else []
            _anchor(anchors, event.anchor, container)
            grow(_NODE_BYTES, mark)
            stack.append(_Frame(container, mark, anchor=event.anchor, start=expanded))
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            frame = stack.pop()
            if frame.anchor is not None:
                weights[frame.anchor] = expanded - frame.start + _NODE_BYTES
            if isinstance(frame.value, YamlMapping):
                _fill_mapping(frame)
            add(frame.value, frame.mark)
    return root


def _anchor(anchors: dict[str, Any], name: str | None, value: Any) -> None:
    if name is not None:
        anchors[name] = value


def _scalar(event: yaml.ScalarEvent) -> Any:
    tag = event.tag
    if tag is None:
        tag = _resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
    elif tag == "!":
        tag = "tag:yaml.org,2002:str"
    if tag == _MERGE_TAG:
        return _MERGE
    if tag not in _SCALAR_TAGS:
        raise YamlError(f"unsupported tag {tag}", event.start_mark)
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark)
    try:
        return SafeConstructor.yaml_constructors[tag](_constructor, node)
    except (ValueError, TypeError, OverflowError):
        raise YamlError(f'"{event.value}" is not a valid {tag}', event.start_mark) from None


def _merge_sources(value: Any, mark: Any) -> list[YamlMapping]:
    sources = value if isinstance(value, list) else [value]
    if not all(isinstance(s, dict) for s in sources):
        raise YamlError("a merge key (<<) needs a mapping or a list of mappings", mark)
    # Earlier mappings win, as in PyYAML.
    return list(reversed(sources))


def _fill_mapping(frame: _Frame) -> None:
    mapping = frame.value
    assert isinstance(mapping, YamlMapping)
    for source in frame.merges:
        mapping.update(source)
    seen: set[Any] = set()
    for key, value in frame.pairs:
        try:
            if key in seen:
                mapping.duplicates.append(key)
            seen.add(key)
        except TypeError:
            raise YamlError("a mapping key must be a plain value", frame.key_mark) from None
        mapping[key] = value
