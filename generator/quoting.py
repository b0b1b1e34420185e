"""Quoting filters, one per target language. Every value from a descriptor or a flag passes through one."""

from __future__ import annotations

import json
import shlex


def shell(value: object) -> str:
    """A POSIX shell word: single-quoted unless it is plainly safe."""
    return shlex.quote(str(value))


def shell_words(values: object) -> str:
    """Several shell words, each quoted, separated by spaces."""
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        raise TypeError("shell_words needs a list")
    return " ".join(shell(v) for v in values)


def yaml(value: object) -> str:
    """A YAML double-quoted scalar. JSON's string escapes are valid YAML escapes."""
    return json.dumps(str(value), ensure_ascii=False)


def hcl(value: object) -> str:
    """An HCL2 quoted string: JSON escapes, with template sequences `${` and `%{` escaped."""
    return json.dumps(str(value), ensure_ascii=False).replace("${", "$${").replace("%{", "%%{")


def hcl_list(values: object) -> str:
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        raise TypeError("hcl_list needs a list")
    return "[" + ", ".join(hcl(v) for v in values) + "]"


def comment(value: object) -> str:
    """Text for a `#` comment line: one line, no control characters."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))
