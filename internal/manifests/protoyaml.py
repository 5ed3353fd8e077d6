"""YAML <-> protobuf, driven by the message descriptors.

Field names are the proto JSON names (camelCase, or the `json_name` option); enum values are
written by name and parsed case-insensitively, the zero `*_UNSPECIFIED` value is never
accepted. Every mismatch is reported with its field path, and walking goes on so that all
problems of a document are found in one pass. Input is treated as hostile: YAML is read by
internal/yamlsafe (no recursion, depth limit), and the walk has a node budget so that YAML
aliases cannot make it do exponential work.
"""

from __future__ import annotations

import base64
import datetime
import difflib
from typing import Any

import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from internal.manifests.problems import Reporter, index_path, join_path, key_path
from internal.manifests.yamlsafe import YamlError, load_document

MAX_NODES = 100_000

_TIMESTAMP = "google.protobuf.Timestamp"
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


# ------------------------------------------------------------------ YAML reading


def parse_yaml(data: bytes | str, rep: Reporter) -> Any:
    """Parse one YAML document; on failure report it and return None."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            rep.add("", f"not valid UTF-8 (byte {e.start})")
            return None
    else:
        text = data
    if not text.strip():
        rep.add("", "file is empty")
        return None
    try:
        doc = load_document(text)
    except YamlError as e:
        rep.add("", f"invalid YAML{_where(e.mark)}: {e.message}")
        return None
    except yaml.MarkedYAMLError as e:
        why = e.problem or e.context or "syntax error"
        rep.add("", f"invalid YAML{_where(e.problem_mark or e.context_mark)}: {why}")
        return None
    except yaml.YAMLError as e:
        rep.add("", f"invalid YAML: {e}")
        return None
    if doc is None:
        rep.add("", "file is empty")
    return doc


def _where(mark: Any) -> str:
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"


# ------------------------------------------------------------------ YAML -> proto


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, datetime.datetime | datetime.date):
        return "date"
    return type(value).__name__


def _json_names(desc: Descriptor) -> dict[str, FieldDescriptor]:
    return {f.json_name: f for f in desc.fields}


def enum_choices(field: FieldDescriptor) -> list[str]:
    return [v.name for v in field.enum_type.values if v.number != 0]


class Walker:
    """Fills a message from a parsed YAML mapping, reporting every problem."""

    def __init__(self, rep: Reporter, numeric_strings: frozenset[str] = frozenset()) -> None:
        self.rep = rep
        # Full names of string fields that also accept a YAML number (quantities, maxSurge).
        self.numeric_strings = numeric_strings
        self.present: set[str] = set()
        self._nodes = 0
        self.exhausted = False

    def _spend(self) -> bool:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            if not self.exhausted:
                self.rep.add("", f"document too large (more than {MAX_NODES} values)")
                self.exhausted = True
            return False
        return True

    def fill(self, value: Any, msg: Message, path: str = "") -> None:
        if not self._spend():
            return
        if not isinstance(value, dict):
            self.rep.add(path, f"expected a mapping, got {type_name(value)}")
            return
        desc = msg.DESCRIPTOR
        if desc.full_name == _TIMESTAMP:
            self.rep.add(path, "expected a timestamp string, got mapping")
            return
        fields = _json_names(desc)
        self._duplicates(value, path)
        oneof_seen: dict[str, str] = {}
        for key, item in value.items():
            if not self._spend():
                return
            if not isinstance(key, str):
                self.rep.add(path, f"field names must be strings, got {type_name(key)} {key!r}")
                continue
            sub_path = join_path(path, key)
            field = fields.get(key)
            if field is None:
                self.rep.add(sub_path, "unknown field" + _hint(key, fields))
                continue
            oneof = field.containing_oneof
            if oneof is not None and len(oneof.fields) > 1:
                other = oneof_seen.get(oneof.name)
                if other is not None:
                    self.rep.add(sub_path, f"cannot be set together with {other}")
                    continue
                oneof_seen[oneof.name] = key
            self.present.add(sub_path)
            self._field(item, msg, field, sub_path)
            if self.exhausted:
                return

    def _duplicates(self, value: dict[Any, Any], path: str) -> None:
        for key in getattr(value, "duplicates", ()):
            self.rep.add(key_path(path, str(key)), "duplicate key")

    def _field(self, value: Any, msg: Message, field: FieldDescriptor, path: str) -> None:
        is_map = (
            field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
        )
        if is_map:
            self._map(value, msg, field, path)
        elif field.is_repeated:
            self._list(value, msg, field, path)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = getattr(msg, field.name)
            if field.message_type.full_name == _TIMESTAMP:
                self._timestamp(value, sub, path)
            elif value is None:
                sub.SetInParent()
            else:
                sub.SetInParent()
                self.fill(value, sub, path)
        else:
            ok, converted = self.scalar(value, field, path)
            if ok:
                setattr(msg, field.name, converted)

    def _list(self, value: Any, msg: Message, field: FieldDescriptor, path: str) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            self.rep.add(path, f"expected a list, got {type_name(value)}")
            return
        target = getattr(msg, field.name)
        for i, item in enumerate(value):
            if not self._spend():
                return
            item_path = index_path(path, i)
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                self.present.add(item_path)
                self.fill(item, target.add(), item_path)
            else:
                ok, converted = self.scalar(item, field, item_path)
                if ok:
                    target.append(converted)

    def _map(self, value: Any, msg: Message, field: FieldDescriptor, path: str) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            self.rep.add(path, f"expected a mapping, got {type_name(value)}")
            return
        self._duplicates(value, path)
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        target = getattr(msg, field.name)
        for key, item in value.items():
            if not self._spend():
                return
            if not isinstance(key, str):
                self.rep.add(path, f"keys must be strings, got {type_name(key)} {key!r}")
                continue
            item_path = key_path(path, key)
            ok, k = self.scalar(key, key_field, item_path)
            if not ok:
                continue
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                self.fill(item, target[k], item_path)
            else:
                ok, converted = self.scalar(item, value_field, item_path)
                if ok:
                    target[k] = converted

    def _timestamp(self, value: Any, ts: Timestamp, path: str) -> None:
        if isinstance(value, datetime.datetime):
            aware = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
            ts.FromDatetime(aware)
            return
        if isinstance(value, str):
            try:
                ts.FromJsonString(value)
                return
            except ValueError:
                pass
        self.rep.add(path, "expected an RFC 3339 timestamp (2024-01-02T03:04:05Z)")

    def scalar(self, value: Any, field: FieldDescriptor, path: str) -> tuple[bool, Any]:
        t = field.type
        if value is None:
            self.rep.add(path, "missing value")
            return False, None
        if t == FieldDescriptor.TYPE_STRING:
            if isinstance(value, str):
                return True, value
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if numeric and field.full_name in self.numeric_strings:
                return True, str(value)
            hint = ""
            if isinstance(value, bool | int | float):
                hint = f' (quote it: "{_yaml_scalar_text(value)}")'
            self.rep.add(path, f"expected a string, got {type_name(value)}{hint}")
            return False, None
        if t in _INT_RANGES:
            if not isinstance(value, int) or isinstance(value, bool):
                self.rep.add(path, f"expected an integer, got {type_name(value)}")
                return False, None
            low, high = _INT_RANGES[t]
            if not low <= value <= high:
                self.rep.add(path, f"{value} is out of range ({low} to {high})")
                return False, None
            return True, value
        if t == FieldDescriptor.TYPE_BOOL:
            if not isinstance(value, bool):
                self.rep.add(path, f"expected true or false, got {type_name(value)}")
                return False, None
            return True, value
        if t == FieldDescriptor.TYPE_ENUM:
            choices = enum_choices(field)
            if isinstance(value, str):
                wanted = value.strip().upper()
                for name in choices:
                    if name == wanted:
                        return True, field.enum_type.values_by_name[name].number
                self.rep.add(path, f'invalid value "{value}": must be one of {", ".join(choices)}')
            else:
                self.rep.add(path, f"expected one of {', '.join(choices)}, got {type_name(value)}")
            return False, None
        if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return True, float(value)
            self.rep.add(path, f"expected a number, got {type_name(value)}")
            return False, None
        self.rep.add(path, "field type not supported in YAML")
        return False, None


def _yaml_scalar_text(value: bool | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _hint(key: str, fields: dict[str, FieldDescriptor]) -> str:
    squashed = key.replace("_", "").lower()
    for f in fields.values():
        if key == f.name or squashed == f.json_name.replace("_", "").lower():
            return f' (did you mean "{f.json_name}"?)'
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.7)
    return f' (did you mean "{close[0]}"?)' if close else ""


# ------------------------------------------------------------------ proto -> plain data


def to_plain(msg: Message) -> dict[str, Any]:
    """A message as plain dicts/lists/scalars: JSON names, enum names, defaults omitted."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        out[field.json_name] = _plain_field(field, value)
    return out


def _plain_field(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {k: _plain_value(value_field, value[k]) for k in sorted(value)}
    if field.is_repeated:
        return [_plain_value(field, v) for v in value]
    return _plain_value(field, value)


def _plain_value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == _TIMESTAMP:
            return value.ToJsonString()
        return to_plain(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def dump_yaml(data: Any) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(
        data, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
