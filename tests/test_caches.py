"""What bakegen remembers between runs, in its cache folder ($BAKEGEN_CACHE, ~/.cache/bakegen), each entry named by a
hash of everything it depends on (issue 14: a fast command line): descriptors found valid (a cold `bakegen` no
longer imports jsonschema), scripts `bash -n` accepted, the GPU check without comments, compiled templates.
A changed input is a new entry, never a stale one; BAKEGEN_NO_CACHE=1 turns all of it off."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from generator import render, selfcheck
from generator.descriptors import schema_problems, validity_cache
from generator.errors import BakegenError
from generator.resolve import descriptor_set


def test_a_valid_descriptor_is_validated_once_and_a_changed_one_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAKEGEN_CACHE", str(tmp_path))
    monkeypatch.delenv("BAKEGEN_NO_CACHE", raising=False)
    merged = descriptor_set().merged("debian12")
    assert schema_problems(merged) == []
    cache = validity_cache()
    assert cache is not None and len(list(cache.iterdir())) == 1
    # Remembered: the second look needs no validator at all.
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    assert schema_problems(merged) == []
    monkeypatch.delitem(sys.modules, "jsonschema")
    # Another content is another key: a broken descriptor is never taken for the valid one.
    changed = dataclasses.replace(merged, data=copy.deepcopy(merged.data))
    changed.data["os_release"]["id"] = "Debian!"
    problems = schema_problems(changed)
    assert problems and "os_release.id" in problems[0], problems
    assert len(list(cache.iterdir())) == 1


def test_no_cache_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKEGEN_CACHE", str(tmp_path))
    monkeypatch.setenv("BAKEGEN_NO_CACHE", "1")
    assert validity_cache() is None
    assert schema_problems(descriptor_set().merged("rhel9")) == []
    assert list(tmp_path.iterdir()) == []


def test_a_script_bash_accepted_is_not_parsed_again_and_a_broken_one_always_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAKEGEN_CACHE", str(tmp_path))
    monkeypatch.delenv("BAKEGEN_NO_CACHE", raising=False)
    good, broken = "#!/bin/bash\necho ok\n", "#!/bin/bash\nif true; then echo\n"
    assert selfcheck._bash_syntax([good, broken]) == {good: None, broken: selfcheck._bash_syntax([broken])[broken]}
    assert selfcheck._bash_syntax([broken])[broken], "bash -n reports the broken script"
    assert len(list((tmp_path / "valid-scripts").iterdir())) == 1  # only the valid one is remembered
    # Remembered: no bash runs for it now; the broken one still goes to bash and is still refused.
    started: list[object] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[str]:
        started.append(args)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    assert selfcheck._bash_syntax([good]) == {good: None}
    assert started == []
    assert selfcheck._bash_syntax([broken])[broken]
    assert len(started) == 1


def test_the_stripped_gpu_check_is_remembered_by_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKEGEN_CACHE", str(tmp_path))
    monkeypatch.delenv("BAKEGEN_NO_CACHE", raising=False)
    first = render.embedded_files()["gpu_check_program"]
    (entry,) = (tmp_path / "embedded").iterdir()
    assert entry.read_text() == first
    # Another program is another key: a check changed in templates/files/ is stripped anew.
    original = render._static
    monkeypatch.setattr(render, "_static", lambda name: original(name) + "\nCHANGED = 1  # a comment\n")
    changed = render.embedded_files()["gpu_check_program"]
    assert changed.endswith("CHANGED = 1\n") and changed != first
    assert len(list((tmp_path / "embedded").iterdir())) == 2


def test_a_template_changed_after_it_was_compiled_renders_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BAKEGEN_NO_CACHE", raising=False)
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "t.j2").write_text("one {{ x }}\n")
    monkeypatch.setattr(render, "data_dir", lambda name: templates)
    assert render.make_environment().get_template("t.j2").render(x=1) == "one 1\n"
    assert list((tmp_path / "cache" / "templates").iterdir()), "compiled and kept"
    (templates / "t.j2").write_text("two {{ x }}\n")
    assert render.make_environment().get_template("t.j2").render(x=1) == "two 1\n"


def test_an_unwritable_cache_is_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BAKEGEN_CACHE", str(blocker / "cache"))
    monkeypatch.delenv("BAKEGEN_NO_CACHE", raising=False)
    assert render.embedded_files()["gpu_check_program"]
    assert render.make_environment().get_template("cloud-init/bootstrap.sh.j2")
    with pytest.raises(BakegenError, match="is broken"):
        selfcheck.check_all([(render.RenderedFile(PurePosixPath("x.sh"), "if\n", render.FileKind.SHELL), "x")])


def test_no_cache_at_all_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKEGEN_CACHE", str(tmp_path))
    monkeypatch.setenv("BAKEGEN_NO_CACHE", "1")
    render.embedded_files()
    render.make_environment().get_template("cloud-init/bootstrap.sh.j2")
    selfcheck._bash_syntax(["#!/bin/bash\ntrue\n"])
    assert list(tmp_path.iterdir()) == []
