"""Align HCL attribute assignments as `packer fmt` (hclwrite) does, so generated files are fmt-clean."""

from __future__ import annotations

import re

_ATTRIBUTE = re.compile(r'^(?P<indent>[ ]*)(?P<key>[A-Za-z_][A-Za-z0-9_-]*|"[^"]*")[ ]*=[ ]*(?P<value>\S.*)$')
_OPENERS = {"{": "}", "[": "]", "(": ")"}


def _single_line(value: str) -> bool:
    """True when the value's brackets close on the same line (strings skipped)."""
    depth = 0
    in_string = False
    escaped = False
    for ch in value:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in _OPENERS:
            depth += 1
        elif ch in _OPENERS.values():
            depth -= 1
    return depth == 0 and not in_string


def align(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    group: list[tuple[str, str, str]] = []

    def flush() -> None:
        if group:
            width = max(len(key) for _, key, _ in group)
            out.extend(f"{indent}{key.ljust(width)} = {value}" for indent, key, value in group)
            group.clear()

    for line in lines:
        match = _ATTRIBUTE.match(line)
        if match and _single_line(match["value"]):
            if group and group[0][0] != match["indent"]:
                flush()
            group.append((match["indent"], match["key"], match["value"].rstrip()))
            continue
        flush()
        out.append(line)
    flush()
    return "\n".join(out)
