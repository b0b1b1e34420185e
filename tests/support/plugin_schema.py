"""The HCL2 schema of a Packer builder, read from the plugin's own generated spec at a tag.

Packer plugins generate `*.hcl2spec.go` files (packer-sdc mapstructure-to-hcl2): one `func (*FlatX) HCL2Spec()`
per config struct, mapping every HCL name to `&hcldec.AttrSpec{..., Type: cty.T}` or to a nested struct through
`&hcldec.BlockSpec{...}` / `&hcldec.BlockListSpec{...}`. This reads those files from a git checkout of the plugin
at the pinned tag and keeps the builder's config and every struct reachable from it, as the evidence stored in
distros/evidence/packer/ (tests/test_packer_schema.py checks every generated source against it).

Regenerate after changing a pin (generator/packer.py: PACKER_PLUGINS), from a clone of the plugin:
    python3 -m tests.support.plugin_schema REPO_GIT_DIR TAG PLUGIN BUILDER_DIR > PLUGIN-VERSION.json
into distros/evidence/packer/, e.g. `... /path/packer-plugin-qemu.git v1.1.0 qemu builder/qemu`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import date
from typing import Any

_FUNC = re.compile(r"^func \(\*(Flat\w+)\) HCL2Spec\(\) map\[string\]hcldec\.Spec \{$(.*?)^\}$", re.M | re.S)
_ATTR = re.compile(r'^\s*"([\w-]+)":\s*&hcldec\.AttrSpec\{Name: "[\w-]+", Type: (.+?), Required: \w+\},$', re.M)
_BLOCK = re.compile(
    r'^\s*"([\w-]+)":\s*&hcldec\.(BlockSpec|BlockListSpec)\{TypeName: "[\w-]+", '
    r"Nested: hcldec\.ObjectSpec\(\(\*(?:(\w+)\.)?(Flat\w+)\)\(nil\)\.HCL2Spec\(\)\)\},$",
    re.M,
)
_PACKAGE = re.compile(r"^package (\w+)$", re.M)


def _git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=True).stdout


def read_structs(repo: str, tag: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every Flat struct of the plugin at `tag`, keyed `package.FlatName`: {hcl name: spec}; and the file each is
    defined in."""
    structs: dict[str, dict[str, Any]] = {}
    files: dict[str, str] = {}
    for path in _git(repo, "ls-tree", "-r", "--name-only", tag).split():
        if not path.endswith(".hcl2spec.go"):
            continue
        text = _git(repo, "show", f"{tag}:{path}")
        package = _PACKAGE.search(text)
        assert package, path
        for name, body in _FUNC.findall(text):
            fields: dict[str, Any] = {}
            for attr, kind in _ATTR.findall(body):
                fields[attr] = {"attr": kind}
            for block, spec, other, nested in _BLOCK.findall(body):
                fields[block] = {"block": f"{other or package.group(1)}.{nested}", "list": spec == "BlockListSpec"}
            structs[f"{package.group(1)}.{name}"] = fields
            files[f"{package.group(1)}.{name}"] = path
    return structs, files


def schema(repo: str, tag: str, plugin: str, builder_dir: str) -> dict[str, Any]:
    structs, files = read_structs(repo, tag)
    # the builder's own config: the FlatConfig defined directly in builder_dir
    root = next(
        key for key, path in files.items() if key.endswith(".FlatConfig") and path.rsplit("/", 1)[0] == builder_dir
    )
    config_file = files[root].rsplit("/", 1)[1]
    keep: dict[str, dict[str, Any]] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        if name not in structs:  # a struct of a library (packer-plugin-sdk): its fields are not read here
            keep[name] = {"(external)": {"attr": "not read: defined outside the plugin's repository"}}
            continue
        keep[name] = structs[name]
        todo += [spec["block"] for spec in structs[name].values() if "block" in spec]
    return {
        "plugin": plugin,
        "source": f"github:hashicorp/packer-plugin-{plugin}",
        "tag": tag,
        "commit": _git(repo, "rev-parse", f"{tag}^{{commit}}").strip(),
        "files": f"{builder_dir}/{config_file} and the *.hcl2spec.go files its nested structs live in",
        "seen": date.today().isoformat(),
        "root": root,
        "structs": dict(sorted(keep.items())),
    }


if __name__ == "__main__":
    repo_dir, tag_name, plugin_name, builder = sys.argv[1:5]
    json.dump(schema(repo_dir, tag_name, plugin_name, builder), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
