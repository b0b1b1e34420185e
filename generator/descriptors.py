"""Load distribution descriptors: parse with line numbers, resolve `extends:`, check the strict schema.

Every problem found in a run is collected and reported at once as `file:line: key.path: message`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import jsonschema

from .errors import DescriptorError
from .paths import data_dir, found_valid, remember_valid, user_cache

KeyPath = tuple[str, ...]
# Where each key of a merged document was last set: the file and line that a message should point at.
Provenance = dict[KeyPath, tuple[str, int]]

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


@dataclass(frozen=True)
class RawDescriptor:
    """One file as written: its data and where each key came from."""

    id: str
    path: Path
    display: str  # the path as shown in messages
    data: dict[str, Any]
    lines: Provenance


@dataclass(frozen=True)
class MergedDescriptor:
    """A descriptor with its `extends:` chain merged in; not yet checked against the schema."""

    id: str
    display: str
    data: dict[str, Any]
    lines: Provenance
    chain: tuple[str, ...]  # this id first, then its ancestors

    @property
    def abstract(self) -> bool:
        return bool(self.data.get("abstract", False))


def builtin_distros_dir() -> Path:
    return data_dir("distros")


@functools.cache
def _schema_text() -> str:
    return resources.files("generator").joinpath("schema/descriptor.schema.json").read_text(encoding="utf-8")


def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(_schema_text())
    return loaded


VALID_DESCRIPTORS = "valid-descriptors"  # the cache folder of descriptors found valid


def validity_cache() -> Path | None:
    """Where descriptors found valid are remembered ($BAKEGEN_CACHE or ~/.cache/bakegen); None: not at all
    (BAKEGEN_NO_CACHE set)."""
    return user_cache(VALID_DESCRIPTORS)


def _validity_key(merged: MergedDescriptor) -> str:
    """What validation depends on, and nothing else: the schema and the merged content. An entry cannot go stale:
    any change to either is another key."""
    content = json.dumps(merged.data, sort_keys=True, default=str)
    return hashlib.sha256(f"{_schema_text()}\0{content}".encode()).hexdigest()


def schema_properties() -> list[tuple[str, str, str]]:
    """Every property of the descriptor schema as (dotted path, type, description), `*` for any key or item and
    a `$ref`'s properties inlined under the property that uses it."""
    schema = _schema()
    rows: list[tuple[str, str, str]] = []

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: dict[str, Any] = schema["$defs"][ref.rsplit("/", 1)[1]]
            return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def kind(node: dict[str, Any]) -> str:
        if "type" in node:
            return str(node["type"])
        if "enum" in node:
            return ", ".join(str(v) for v in node["enum"])
        alternatives = node.get("oneOf") or node.get("anyOf") or []
        return " or ".join(kind(resolve(a)) for a in alternatives) or "any"

    def walk(node: dict[str, Any], path: str, seen: tuple[str, ...]) -> None:
        for name, raw in node.get("properties", {}).items():
            child = resolve(raw)
            dotted = f"{path}.{name}" if path else name
            rows.append((dotted, kind(child), str(child.get("description", ""))))
            ref = raw.get("$ref", "")
            if ref not in seen:
                walk(child, dotted, (*seen, ref) if ref else seen)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(resolve(extra), f"{path}.*", seen)
        items = node.get("items")
        if isinstance(items, dict) and "properties" in resolve(items):
            walk(resolve(items), f"{path}.*", seen)
        for alternative in node.get("oneOf", []):
            walk(resolve(alternative), path, seen)

    walk(schema, "", ())
    return list(dict.fromkeys(rows))


def in_schema_order(data: Mapping[str, Any]) -> dict[str, Any]:
    """A merged descriptor's top-level keys in the schema's order (merging orders them by the root that set them
    first), for people to read."""
    order = {key: i for i, key in enumerate(_schema().get("properties", {}))}
    return dict(sorted(data.items(), key=lambda item: order.get(item[0], len(order))))


def schema_reference() -> str:
    """The descriptor reference (docs/descriptors.md, `bakegen show --schema`), from the schema itself."""
    lines = [
        "# Descriptor reference",
        "",
        "Generated from generator/schema/descriptor.schema.json by `bakegen show --schema` (do not edit by hand).",
        "A descriptor states only what differs from its parent (`extends:`); `null` removes an inherited key, and an",
        "inherited list is edited instead of restated: `base_packages: {append: [x]}`, `{remove: [x]}`,",
        "`{replace: {old: new}}` (in place; applied in the order remove, replace, append).",
        "`*` is any key (or any item of a list).",
        "",
        "| key | type | what it is |",
        "|---|---|---|",
    ]
    for path, kind, description in schema_properties():
        lines.append(f"| `{path}` | {kind} | {description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# libyaml's composer where PyYAML has it (the same nodes and line marks, a fraction of the time).
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str, display: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_COMPOSER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DescriptorError([f"{display}:{line}: not valid YAML: {problem}"]) from None


def _to_python(
    node: yaml.Node, display: str, path: KeyPath, lines: Provenance, problems: list[str], seen: set[int] | None = None
) -> Any:
    """Build plain data from a composed node, recording each mapping key's line. Aliases are refused (a node met
    twice): they state nothing a descriptor needs, and a few bytes of them can expand without bound."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        line = node.start_mark.line + 1
        problems.append(f"{display}:{line}: {_dotted(path) or '(top)'}: YAML anchors and aliases are not allowed")
        return None
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or not isinstance(key, str):
                problems.append(f"{display}:{line}: {_dotted(path) or '(top)'}: keys must be plain strings")
                continue
            if key == "<<":
                problems.append(f"{display}:{line}: {_dotted(path) or '(top)'}: YAML merge keys are not allowed")
                continue
            if key in out:
                problems.append(f"{display}:{line}: {_dotted(path + (key,))}: duplicate key")
                continue
            lines[path + (key,)] = (display, line)
            out[key] = _to_python(value_node, display, path + (key,), lines, problems, seen)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, display, path + (str(i),), lines, problems, seen) for i, item in enumerate(node.value)]
    # Scalars: PyYAML's SafeLoader resolves the tag (YAML 1.1, as cloud-init reads YAML).
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)  # a fresh one: it keeps what it built


def _dotted(path: KeyPath) -> str:
    return ".".join(path)


def parse_file(path: Path, display: str) -> RawDescriptor:
    descriptor_id = path.name.removesuffix(".yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DescriptorError([f"{display}: cannot read: {exc}"]) from None
    node = _compose(text, display)
    problems: list[str] = []
    lines: Provenance = {(): (display, 1)}
    data = _to_python(node, display, (), lines, problems) if node is not None else {}
    if not _ID_RE.match(descriptor_id):
        problems.append(f"{display}:1: file name must be <id>.yaml with a lower-case id such as debian12")
    if not isinstance(data, dict):
        problems.append(f"{display}:1: a descriptor must be a mapping of keys")
    if problems:
        raise DescriptorError(problems)
    return RawDescriptor(descriptor_id, path, display, data, lines)


# A child edits an inherited list instead of restating it: `base_packages: {append: [x]}`. The operations run in
# this order; a mapping can only mean an edit where the parent's value is a list.
LIST_EDITS = ("remove", "replace", "append")


class ListEditError(Exception):
    """An edit of an inherited list that cannot be made, at the key path of the edit."""

    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def deep_merge(parent: Mapping[str, Any], child: Mapping[str, Any], path: KeyPath = ()) -> dict[str, Any]:
    """Child over parent: mappings merge key by key, anything else (lists too) replaces; null deletes; a mapping
    of LIST_EDITS over an inherited list edits it (remove items, replace items in place, append items)."""
    merged = dict(parent)
    for key, value in child.items():
        inherited = merged.get(key)
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(inherited, list):
            merged[key] = _edit_list(inherited, value, (*path, key))
        elif isinstance(value, Mapping) and value and set(value) <= set(LIST_EDITS) and inherited is None:
            raise ListEditError((*path, key), f"edits an inherited list, but no parent sets {key}")
        elif isinstance(value, Mapping) and isinstance(inherited, Mapping):
            merged[key] = deep_merge(inherited, value, (*path, key))
        else:
            merged[key] = value
    return merged


def _edit_list(items: list[Any], edits: Mapping[str, Any], path: KeyPath) -> list[Any]:
    unknown = sorted(set(edits) - set(LIST_EDITS))
    if unknown:
        raise ListEditError((*path, unknown[0]), f"an inherited list is edited with {', '.join(LIST_EDITS)} only")
    removed, replaced, appended = (edits.get(operation) for operation in LIST_EDITS)
    for operation, argument, form in (
        ("remove", removed, list),
        ("replace", replaced, Mapping),
        ("append", appended, list),
    ):
        if argument is not None and not isinstance(argument, form):
            what = "a mapping of old: new items" if form is Mapping else "a list of items"
            raise ListEditError((*path, operation), f"{operation} takes {what}")
        missing = [old for old in argument or () if old not in items] if operation != "append" else []
        if missing:
            raise ListEditError((*path, operation), f"{missing[0]!r} is not in the inherited list {items}")
    replacements: Mapping[str, Any] = replaced or {}
    result = [item for item in items if item not in (removed or ())]
    result = [replacements[item] if isinstance(item, str) and item in replacements else item for item in result]
    return result + list(appended or ())


class DescriptorSet:
    """The descriptors visible to one run: a user's folder (if any) first, then the built-in ones."""

    def __init__(self, dirs: Iterable[Path]) -> None:
        self.dirs = [d for d in dirs]
        self._files: dict[str, tuple[Path, str]] = {}
        for directory in reversed(self.dirs):  # earlier folders win
            for path in sorted(directory.glob("*.yaml")):
                self._files[path.name.removesuffix(".yaml")] = (path, self._display(path))
        self._raw: dict[str, RawDescriptor] = {}

    @staticmethod
    def _display(path: Path) -> str:
        builtin = builtin_distros_dir()
        if path.parent.resolve() == builtin.resolve():
            return f"distros/{path.name}"
        return str(path)

    def ids(self) -> list[str]:
        return sorted(self._files)

    def raw(self, descriptor_id: str) -> RawDescriptor:
        if descriptor_id not in self._raw:
            path, display = self._files[descriptor_id]
            self._raw[descriptor_id] = parse_file(path, display)
        return self._raw[descriptor_id]

    def __contains__(self, descriptor_id: object) -> bool:
        return descriptor_id in self._files

    def merged(self, descriptor_id: str) -> MergedDescriptor:
        chain = self._chain(descriptor_id)
        data: dict[str, Any] = {}
        lines: Provenance = {}
        for ancestor in reversed(chain):
            raw = self.raw(ancestor)
            try:
                data = deep_merge(data, raw.data)
            except ListEditError as exc:
                display, line = raw.lines.get(exc.path, (raw.display, 1))
                raise DescriptorError([f"{display}:{line}: {_dotted(exc.path)}: {exc.message}"]) from None
            lines.update(raw.lines)
        data.pop("extends", None)
        if not self.raw(descriptor_id).data.get("abstract", False):
            data.pop("abstract", None)
        return MergedDescriptor(descriptor_id, self.raw(descriptor_id).display, data, lines, tuple(chain))

    def _chain(self, descriptor_id: str) -> list[str]:
        chain = [descriptor_id]
        current = self.raw(descriptor_id)
        while "extends" in current.data:
            parent = current.data["extends"]
            line = current.lines.get(("extends",), (current.display, 1))[1]
            where = f"{current.display}:{line}: extends"
            if not isinstance(parent, str) or parent not in self:
                raise DescriptorError([f"{where}: {parent!r} is not a known descriptor"])
            if parent in chain:
                cycle = " -> ".join([*chain, parent])
                raise DescriptorError([f"{where}: cycle {cycle}"])
            chain.append(parent)
            current = self.raw(parent)
        return chain


def schema_problems(merged: MergedDescriptor) -> list[str]:
    """Check a merged descriptor against the JSON Schema; each problem as `file:line: key: message`."""
    if merged.abstract:
        return []
    key = _validity_key(merged)
    if found_valid(VALID_DESCRIPTORS, key):
        return []
    import jsonschema  # 50 ms of a cold start: only when a descriptor is new or changed

    validator = jsonschema.Draft202012Validator(_schema())
    problems: list[str] = []
    for error in validator.iter_errors(merged.data):
        path = tuple(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            schema = error.schema if isinstance(error.schema, dict) else {}
            allowed = sorted(schema.get("properties", {}))
            for key in sorted(k for k in error.instance if k not in allowed):
                message = f"unknown key {key!r} (allowed: {', '.join(allowed)})"
                problems.append(locate(merged, (*path, key), message))
            continue
        problems.append(locate(merged, path, _message(error)))
    if not problems:
        remember_valid(VALID_DESCRIPTORS, key)
    return problems


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "pattern":
        return f"{error.instance!r} does not have the expected form"
    if error.validator == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)  # type: ignore[union-attr]
        return f"{error.instance!r} is not one of: {choices}"
    return error.message


def locate(merged: MergedDescriptor, path: KeyPath, message: str) -> str:
    """Point at the deepest key of `path` that some file set."""
    for depth in range(len(path), -1, -1):
        where = merged.lines.get(path[:depth])
        if where is not None:
            display, line = where
            key = _dotted(path) or "(top)"
            return f"{display}:{line}: {key}: {message}"
    return f"{merged.display}:1: {_dotted(path)}: {message}"
