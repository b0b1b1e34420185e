"""Descriptors found valid are remembered by content (issue 14: a cold `bakegen` no longer imports jsonschema)."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import pytest

from generator.descriptors import schema_problems, validity_cache
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
