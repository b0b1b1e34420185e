"""Embedded copies: the install script and its files without comments, for user-data that clouds cap in size.

The standalone shell output keeps every comment: people read it. Copies that a machine only runs (the script
inside cloud-init user-data, the GPU check inside that script) leave out comment lines, docstrings and blank
lines. Nothing else changes: for Python, same_program() proves it (the syntax tree without docstrings is the
same; tests/test_embed.py, for the GPU check bakegen embeds), for shell the trace tests run the embedded script
against the standalone script's fixtures.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize

from .errors import BakegenError

COMMENT_LINE = re.compile(r"^\s*#(?! shellcheck )")  # shellcheck's directives are kept


def heredoc_lines(lines: list[str], heredoc_end: str | None) -> set[int]:
    """Indexes of the lines inside heredocs ending in `heredoc_end` (each body and its end line): files a script
    writes, not its code. A heredoc opens at a line that ends in `<<'END'` and is not a comment."""
    if heredoc_end is None:
        return set()
    opener = f"<<'{heredoc_end}'"
    inside: set[int] = set()
    in_heredoc = False
    for number, line in enumerate(lines):
        if in_heredoc:
            inside.add(number)
            in_heredoc = line != heredoc_end
        else:
            in_heredoc = line.rstrip().endswith(opener) and not COMMENT_LINE.match(line)
    if in_heredoc:
        raise BakegenError(f"a heredoc is not closed by {heredoc_end}")
    return inside


def strip_shell(text: str, heredoc_end: str | None = None, keep_until: str | None = None) -> str:
    """Leave out comment lines and blank lines of a shell script, keeping the first line (`#!`).

    Heredoc bodies ending in `heredoc_end` are files the script writes: they are kept as they are. Lines up to
    and including the first one equal to `keep_until` are kept too (the script's usage text is its header).
    Trailing comments are kept: telling them from a `#` inside a word or string needs a shell parser.
    """
    lines = text.rstrip("\n").split("\n")
    kept = lines[:1]
    start = 1
    if keep_until is not None:
        try:
            start = lines.index(keep_until) + 1
        except ValueError:
            raise BakegenError(f"embedding: no line {keep_until!r} to keep the header up to") from None
        kept = lines[:start]
    files = heredoc_lines(lines, heredoc_end)
    kept += [
        line
        for n, line in enumerate(lines[start:], start)
        if n in files or (line.strip() and not COMMENT_LINE.match(line))
    ]
    return "\n".join(kept) + "\n"


def strip_systemd_unit(text: str) -> str:
    """A unit file without its comment lines (`#` and `;` start comments in systemd's syntax) and blank lines."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", ";"))]
    return "\n".join(lines) + "\n"


def _docstring_lines(tree: ast.Module) -> set[int]:
    """Line numbers of docstrings that are not a body's only statement (removing those would change the code)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if _has_docstring(node):
            first = node.body[0]  # type: ignore[attr-defined]
            lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def _has_docstring(node: ast.AST) -> bool:
    """A module, class or function whose body starts with a string and has more in it."""
    if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return False
    first = node.body[0] if node.body else None
    return (
        len(node.body) > 1
        and isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )


def _without_docstrings(tree: ast.Module) -> str:
    for node in ast.walk(tree):
        if _has_docstring(node):
            node.body = node.body[1:]  # type: ignore[attr-defined]
    return ast.dump(tree)


def same_program(source: str, stripped: str) -> bool:
    """Whether two Python programs have the same syntax tree once docstrings are left out."""
    return _without_docstrings(ast.parse(stripped)) == _without_docstrings(ast.parse(source))


@functools.lru_cache(maxsize=8)
def strip_python(source: str, note: str = "") -> str:
    """A Python program without comments, docstrings and blank lines; `note` becomes its second line (the first,
    `#!`, is kept). Comments are found by Python's own tokenizer, docstrings by its parser."""
    tree = ast.parse(source)
    drop = _docstring_lines(tree)
    cut: dict[int, int] = {}  # line -> column where its comment starts
    in_string: set[int] = set()  # lines inside a multi-line string, after its first: kept as they are
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            cut[token.start[0]] = token.start[1]
        elif token.type == tokenize.STRING and token.end[0] > token.start[0]:
            in_string.update(range(token.start[0] + 1, token.end[0] + 1))
    lines = source.rstrip("\n").split("\n")
    kept = [lines[0]] + ([f"# {note}"] if note else [])
    for number, line in enumerate(lines[1:], start=2):
        if number in drop:
            continue
        if number in cut:  # the tokenizer's comment: never inside a string
            line = line[: cut[number]].rstrip()
        if number in in_string:  # a string's own lines stay, blank or not
            kept.append(line)
            continue
        if line.strip():
            kept.append(line)
    return "\n".join(kept) + "\n"
