"""The copies user-data carries without comments (generator/embed.py) are the same programs."""

from __future__ import annotations

import pytest

from generator import embed
from generator.render import embedded_files
from tests.helpers import REPO

CHECK = REPO / "templates" / "files" / "bakegen-gpu-check.py"


def test_the_embedded_gpu_check_is_the_same_program() -> None:
    source = CHECK.read_text()
    stripped = embedded_files()["gpu_check_program"]
    assert embed.same_program(source, stripped)
    assert "#" not in "".join(line.split('"')[0] for line in stripped.splitlines()[2:] if line.lstrip().startswith("#"))
    assert len(stripped) < len(source) * 0.9, "nothing was left out"
    assert stripped.splitlines()[0] == "#!/usr/bin/python3 -I"


@pytest.mark.parametrize(
    ("source", "changed"),
    [
        ("x = 1  # one\n", "x = 2\n"),
        ('def f():\n    """doc"""\n    return 1\n', "def f():\n    return 2\n"),
        ('s = """\n# not a comment\n"""\n', 's = """\n"""\n'),
    ],
)
def test_same_program_catches_a_change(source: str, changed: str) -> None:
    assert not embed.same_program(source, changed)
    assert embed.same_program(
        source, embed.strip_python("#!/usr/bin/python3\n" + source)[len("#!/usr/bin/python3\n") :]
    )


def test_strip_keeps_strings_and_code_drops_comments() -> None:
    source = (
        '#!/usr/bin/python3\n# a comment\n"""Module doc."""\n\nimport os\n\n\n'
        'def f():\n    """Doc."""\n    text = """\n# kept: inside a string\n\n"""  # dropped\n    return text\n'
    )
    stripped = embed.strip_python(source)
    assert stripped == (
        '#!/usr/bin/python3\nimport os\ndef f():\n    text = """\n# kept: inside a string\n\n"""\n    return text\n'
    )
    assert embed.same_program(source, stripped)


def test_shell_keeps_heredocs_header_and_shellcheck_directives() -> None:
    script = (
        "#!/bin/sh\n# usage: kept\nset -e\n# dropped\n\n  # dropped too\n"
        "# shellcheck disable=SC2086 # kept\necho $x  # trailing: kept\n"
        "cat <<'END'\n# in a heredoc: kept\n\nEND\necho done\n"
    )
    assert embed.strip_shell(script, "END", keep_until="set -e") == (
        "#!/bin/sh\n# usage: kept\nset -e\n# shellcheck disable=SC2086 # kept\necho $x  # trailing: kept\n"
        "cat <<'END'\n# in a heredoc: kept\n\nEND\necho done\n"
    )
