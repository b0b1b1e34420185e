"""Leave out the shell functions a generated script can never call.

The templates hold every code path of a package-manager family; a plan uses some of them (Debian's archive
components, Ubuntu's precompiled modules, DKMS, CDI...). The templates choose the call sites with Jinja
conditions on the plan; this module then drops each function that nothing reachable from the script's top level
names, with the comment block above it. A name counts as a call wherever it appears as a word in code, in or out of
a string (`retry 3 apt_update_once`, `trap cleanup EXIT`): when in doubt a function stays. Heredoc bodies are files
the script writes, not its code: they are neither searched nor pruned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .embed import heredoc_lines
from .errors import BakegenError

FUNCTION_START = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\(\) \{(.*)$")
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
COMMENT = re.compile(r"^\s*#")


@dataclass(frozen=True)
class _Function:
    name: str
    first: int  # first line: its comment block's, else its own
    start: int  # the `name() {` line
    end: int  # the closing `}` line (the same line for a one-line function)


def _scan(lines: list[str], heredoc: set[int]) -> list[_Function]:
    """The script's top-level functions, outside the heredoc lines `heredoc`."""
    functions: list[_Function] = []
    current = None
    for number, line in enumerate(lines):
        if number in heredoc:
            continue
        if current is None:
            match = FUNCTION_START.match(line)
            if match is None:
                continue
            first = number
            while first > 0 and lines[first - 1].startswith("#") and not lines[first - 1].startswith("#!"):
                first -= 1
            if match.group(2).strip():  # name() { ...; } on one line
                if not match.group(2).rstrip().endswith("}"):
                    raise BakegenError(f"script line {number + 1}: cannot tell where function {match.group(1)} ends")
                functions.append(_Function(match.group(1), first, number, number))
            else:
                current = (match.group(1), first, number)
        elif line == "}":
            functions.append(_Function(current[0], current[1], current[2], number))
            current = None
    if current is not None:
        raise BakegenError(f"script: function {current[0]} is not closed")
    return functions


def _words(lines: list[str], numbers: range, skip: set[int]) -> set[str]:
    return {word for n in numbers if n not in skip and not COMMENT.match(lines[n]) for word in WORD.findall(lines[n])}


def drop_unused_functions(script: str, heredoc_end: str) -> str:
    """The script without the functions its top-level code can never reach (nor their comment blocks)."""
    lines = script.split("\n")
    heredoc = heredoc_lines(lines, heredoc_end)
    functions = _scan(lines, heredoc)
    by_name = {function.name: function for function in functions}
    if len(by_name) != len(functions):
        raise BakegenError("script: a function is defined twice")
    inside = {n for function in functions for n in range(function.first, function.end + 1)}
    top_level = _words(lines, range(len(lines)), inside | heredoc)
    reached: set[str] = set()
    pending = [name for name in by_name if name in top_level]
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        function = by_name[name]
        called = _words(lines, range(function.start, function.end + 1), heredoc)
        # `name() {` names the function itself: that is no call.
        pending.extend(other for other in by_name if other in called and other != name)
    dropped: set[int] = set()
    for function in functions:
        if function.name not in reached:
            dropped.update(range(function.first, function.end + 1))
            if function.end + 1 < len(lines) and not lines[function.end + 1].strip():
                dropped.add(function.end + 1)  # the blank line that separated it from the next
    return "\n".join(line for n, line in enumerate(lines) if n not in dropped)
