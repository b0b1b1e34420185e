"""Every attribute and block of every generated Packer source is one its pinned plugin knows (issue 10).

Packer 1.6.6 (the Packer Debian ships, which tests/test_packer.py runs) validates against its own built-in builders,
older than the plugins the folders pin, so it cannot tell whether a field exists in the plugin that really builds.
The plugins' own generated HCL2 specs, read at the pinned tags, are stored as evidence in distros/evidence/packer/
(tests/support/plugin_schema.py reads them; regenerate with it when a pin changes). This checks each generated
source against them: names, attribute vs block, and literal values against the attribute's type.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pygohcl
import pytest

from generator.model import Cloud
from generator.packer import PACKER_PLUGINS
from tests.helpers import REPO, matrix, render_packer_file
from tests.support.plugin_schema import schema

SCHEMAS = REPO / "distros" / "evidence" / "packer"
MATRIX = matrix()


def pinned_version(cloud: Cloud) -> str:
    pin = PACKER_PLUGINS[cloud].version
    assert pin.startswith("= "), f"{cloud.value}: pins are exact versions ({pin!r})"
    return pin.removeprefix("= ")


def load_schema(cloud: Cloud) -> dict[str, Any]:
    plugin = PACKER_PLUGINS[cloud]
    path = SCHEMAS / f"{plugin.name}-{pinned_version(cloud)}.json"
    assert path.exists(), f"no schema evidence for {plugin.name} {pinned_version(cloud)}: regenerate {path.name}"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _type_problem(kind: str, value: Any) -> str | None:
    """A literal of the wrong type for a cty type (expressions arrive as strings and are not judged)."""
    if isinstance(value, bool):
        return None if kind == "cty.Bool" else f"a bool where the plugin takes {kind}"
    if isinstance(value, (int, float)):
        return None if kind in ("cty.Number", "cty.String") else f"a number where the plugin takes {kind}"
    if isinstance(value, list):
        lists = ("cty.List", "cty.Set", "cty.Tuple")
        return None if kind.startswith(lists) else f"a list where the plugin takes {kind}"
    if isinstance(value, dict):
        return None if kind.startswith(("cty.Map", "cty.Object")) else f"an object where the plugin takes {kind}"
    return None


def schema_problems(schema: dict[str, Any], struct: str, body: dict[str, Any], where: str) -> list[str]:
    fields = schema["structs"][struct]
    problems = []
    for name, value in body.items():
        spec = fields.get(name)
        if spec is None:
            problems.append(f"{where}.{name}: not a field of {schema['plugin']} {schema['tag']} ({struct})")
        elif "attr" in spec:
            problem = _type_problem(spec["attr"], value)
            if problem:
                problems.append(f"{where}.{name}: {problem}")
        else:
            nested = spec["block"]
            if "(external)" in schema["structs"][nested]:
                problems.append(f"{where}.{name}: block {nested} is defined outside the plugin: not checkable here")
                continue
            for i, block in enumerate(value if isinstance(value, list) else [value]):
                if not isinstance(block, dict):
                    problems.append(f"{where}.{name}: a block, written as a value")
                    continue
                problems += schema_problems(schema, nested, block, f"{where}.{name}[{i}]")
    return problems


def test_every_pinned_plugin_has_its_schema_evidence() -> None:
    for cloud in Cloud:
        evidence = load_schema(cloud)
        assert evidence["tag"] == f"v{pinned_version(cloud)}" and len(evidence["commit"]) == 40
        assert evidence["source"] == f"github:hashicorp/packer-plugin-{PACKER_PLUGINS[cloud].name}"
        assert evidence["seen"] and evidence["root"] in evidence["structs"]


@pytest.mark.parametrize(("distro", "arch"), MATRIX, ids=[f"{d}-{a}" for d, a in MATRIX])
def test_every_source_field_is_known_to_its_pinned_plugin(distro: str, arch: str) -> None:
    parsed = pygohcl.loads(render_packer_file(distro, "sources.pkr.hcl", arch=arch))["source"]
    problems: list[str] = []
    for cloud, plugin in PACKER_PLUGINS.items():
        for name, body in parsed.get(plugin.builder, {}).items():
            evidence = load_schema(cloud)
            problems += schema_problems(evidence, evidence["root"], body, f"{plugin.builder}.{name}")
    assert parsed and problems == []


def test_the_check_names_a_field_the_plugin_does_not_have() -> None:
    """The check can fail: a field of a later plugin version, a block written as a value, a wrong literal type."""
    azure = load_schema(Cloud.AZURE)
    body = {
        "public_ip_sku": "Standard",
        "os_disk_size_gb": "var.x",
        "no_such_field": 1,
        "plan_info": "x",
        "async_resourcegroup_delete": "yes",
        "azure_tags": {"a": "b"},
        "spot": {"eviction_policy": "Delete"},
    }
    found = schema_problems(azure, azure["root"], body, "azure-arm.gpu")
    assert found == [
        "azure-arm.gpu.no_such_field: not a field of azure v2.1.7 (arm.FlatConfig)",
        "azure-arm.gpu.plan_info: a block, written as a value",
    ]
    assert schema_problems(azure, azure["root"], {"skip_create_image": "true", "ssh_port": [22]}, "x") == [
        "x.ssh_port: a list where the plugin takes cty.Number"
    ]


def test_the_schema_evidence_is_what_the_reader_makes_of_a_spec(tmp_path: Path) -> None:
    """The reader, on a spec file written as packer-sdc writes them (a git repository made here)."""
    spec = """// Code generated by "packer-sdc mapstructure-to-hcl2"; DO NOT EDIT.

package demo

func (*FlatConfig) HCL2Spec() map[string]hcldec.Spec {
	s := map[string]hcldec.Spec{
		"name":     &hcldec.AttrSpec{Name: "name", Type: cty.String, Required: false},
		"disk":     &hcldec.BlockListSpec{TypeName: "disk", Nested: hcldec.ObjectSpec((*FlatDisk)(nil).HCL2Spec())},
		"tag":      &hcldec.BlockListSpec{TypeName: "tag", Nested: hcldec.ObjectSpec((*sdk.FlatKV)(nil).HCL2Spec())},
	}
	return s
}

func (*FlatDisk) HCL2Spec() map[string]hcldec.Spec {
	s := map[string]hcldec.Spec{
		"size": &hcldec.AttrSpec{Name: "size", Type: cty.Number, Required: false},
	}
	return s
}
"""
    (tmp_path / "builder").mkdir()
    (tmp_path / "builder" / "config.hcl2spec.go").write_text(spec)
    for args in (
        ["init", "-q"],
        ["add", "."],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
        ["tag", "v9.9.9"],
    ):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    read = schema(str(tmp_path), "v9.9.9", "demo", "builder")
    assert read["root"] == "demo.FlatConfig"
    assert read["structs"]["demo.FlatConfig"] == {
        "name": {"attr": "cty.String"},
        "disk": {"block": "demo.FlatDisk", "list": True},
        "tag": {"block": "sdk.FlatKV", "list": True},
    }
    assert read["structs"]["demo.FlatDisk"] == {"size": {"attr": "cty.Number"}}
    assert "(external)" in read["structs"]["sdk.FlatKV"]
