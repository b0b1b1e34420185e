"""Descriptors: every one on disk resolves; broken ones are reported as file:line: key: message, all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from generator.descriptors import DescriptorSet, builtin_distros_dir, deep_merge, schema_properties, schema_reference
from generator.errors import DescriptorError
from generator.model import Family
from generator.resolve import descriptor_set, load_all, load_distro
from tests.helpers import REPO, TOOLKIT_PACKAGES, all_distro_ids

REQUIRED_RELEASES = [
    "ubuntu20.04",
    "ubuntu22.04",
    "ubuntu24.04",
    "debian11",
    "debian12",
    "debian13",
    "rhel8",
    "rhel9",
    "rocky9",
    "almalinux9",
    "amzn2023",
    "sles15",
]


def test_the_required_releases_are_there() -> None:
    ids = all_distro_ids()
    assert set(REQUIRED_RELEASES) <= set(ids)
    assert any(i.startswith("fedora") for i in ids)


@pytest.mark.parametrize("distro_id", all_distro_ids())
def test_descriptor_resolves_with_its_family_data(distro_id: str) -> None:
    distro = load_distro(descriptor_set(), distro_id)
    assert distro.toolkit_repo in distro.repos
    assert distro.default_driver_source in distro.driver_sources
    assert distro.toolkit_packages == TOOLKIT_PACKAGES
    for repo in distro.repos.values():
        assert repo.base.startswith("https://")
        assert len(repo.fingerprint) == 40 or repo.fingerprint == "UNVERIFIED"
    if distro.family is Family.APT:
        assert "stable/deb" in distro.repos[distro.toolkit_repo].path
    else:
        assert "stable/rpm" in distro.repos[distro.toolkit_repo].path


def test_variants_state_only_their_differences() -> None:
    """rocky9 extends rhel9: its file holds identity and cloud images, nothing the parent already says."""
    raw = descriptor_set().raw("rocky9").data
    assert set(raw) <= {"extends", "name", "os_release", "cloud"}
    assert (
        load_distro(descriptor_set(), "rocky9").driver_sources == load_distro(descriptor_set(), "rhel9").driver_sources
    )


def test_deep_merge_replaces_lists_merges_maps_and_null_deletes() -> None:
    parent = {"a": {"x": 1, "y": [1, 2]}, "b": 2, "c": 3}
    child = {"a": {"y": [3]}, "c": None}
    assert deep_merge(parent, child) == {"a": {"x": 1, "y": [3]}, "b": 2}


@pytest.mark.parametrize(
    ("edit", "result"),
    [
        ({"append": ["d"]}, ["a", "b", "c", "d"]),
        ({"remove": ["b"]}, ["a", "c"]),
        ({"replace": {"b": "B"}}, ["a", "B", "c"]),
        ({"append": ["d"], "remove": ["a"], "replace": {"c": "C"}}, ["b", "C", "d"]),  # remove, replace, append
    ],
)
def test_deep_merge_edits_an_inherited_list(edit: dict[str, object], result: list[str]) -> None:
    assert deep_merge({"k": {"items": ["a", "b", "c"]}}, {"k": {"items": edit}}) == {"k": {"items": result}}


def test_no_descriptor_restates_what_its_parent_says() -> None:
    """Every key a file sets changes what its parent's merged descriptor says (abstract is stated per file)."""
    descriptors = descriptor_set()
    restated = []
    for distro_id in descriptors.ids():
        raw = descriptors.raw(distro_id).data
        if "extends" not in raw:
            continue
        parent = descriptors.merged(raw["extends"]).data
        for path, value in _leaves(raw):
            inherited: object = parent
            for key in path:
                inherited = inherited.get(key) if isinstance(inherited, dict) else None
            if inherited == value and path not in {("extends",), ("abstract",)}:
                restated.append(f"{distro_id}: {'.'.join(path)}")
    assert restated == []


def _leaves(data: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    if isinstance(data, dict):
        return [leaf for key, value in data.items() for leaf in _leaves(value, (*path, key))]
    return [(path, data)]


def test_release_placeholders_fill_a_parents_vars_and_cloud_images() -> None:
    """rhel.yaml writes NVIDIA's folder once as rhel{version_id}; ubuntu.yaml as ubuntu{version_nodot}."""
    from generator.model import Arch
    from generator.plan import placeholder_values

    assert descriptor_set().raw("rhel9").data.get("vars") is None
    for distro_id, folder in [("rhel9", "rhel9"), ("rocky9", "rhel9"), ("ubuntu22.04", "ubuntu2204")]:
        distro = load_distro(descriptor_set(), distro_id)
        assert placeholder_values(distro, Arch.X86_64)["cuda_repo"] == folder
        assert distro.repos["cuda"].path.format_map(placeholder_values(distro, Arch.X86_64)) == f"{folder}/x86_64"


def _write(folder: Path, files: dict[str, str]) -> DescriptorSet:
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return DescriptorSet([folder, builtin_distros_dir()])


# (files in a user's --distros-dir, the descriptor to load, messages that must all be in the error)
BAD_DESCRIPTORS = [
    pytest.param(
        {"bad.yaml": "extends: debian12\nname: [unclosed\n"}, "bad", ["bad.yaml:3: not valid YAML"], id="malformed-yaml"
    ),
    pytest.param(
        {"bad.yaml": "extends: debian12\nname: X\nfavourite_colour: blue\n"},
        "bad",
        ["bad.yaml:3: favourite_colour: unknown key 'favourite_colour'"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        {"bad.yaml": "extends: debian12\nrepos:\n  cuda:\n    fingerprint: ABCD\n"},
        "bad",
        ["bad.yaml:4: repos.cuda.fingerprint: 'ABCD' does not have the expected form"],
        id="short-fingerprint",
    ),
    pytest.param(
        {"bad.yaml": "extends: debian12\ndriver:\n  sources:\n    debian-nonfree:\n      default_branch: abc\n"},
        "bad",
        ["bad.yaml:5: driver.sources.debian-nonfree.default_branch: 'abc' does not have the expected form"],
        id="driver-branch-abc",
    ),
    pytest.param(
        {"bad.yaml": "extends: debian12\nrepos:\n  cuda:\n    base: http://example.com/repo\n"},
        "bad",
        ["bad.yaml:4: repos.cuda.base: 'http://example.com/repo' does not have the expected form"],
        id="http-repo",
    ),
    pytest.param(
        {"a.yaml": "extends: b\n", "b.yaml": "extends: a\n"},
        "a",
        ["b.yaml:1: extends: cycle a -> b -> a"],
        id="cyclic-extends",
    ),
    pytest.param(
        {"bad.yaml": "extends: debain12\n"},
        "bad",
        ["bad.yaml:1: extends: 'debain12' is not a known descriptor"],
        id="unknown-parent",
    ),
    pytest.param(
        {"bad.yaml": "extends: debian12\nname: A\nname: B\n"},
        "bad",
        ["bad.yaml:3: name: duplicate key"],
        id="duplicate-key",
    ),
    pytest.param(
        {"bad.yaml": "extends: debian12\ntoolkit:\n  repo: nope\n"},
        "bad",
        ["bad.yaml:3: toolkit.repo: 'nope' is not one of this descriptor's repos"],
        id="dangling-reference",
    ),
    pytest.param(
        {"bad.yaml": "extends: debian12\nrepos:\n  cuda:\n    path: '{nonsense}/x'\n"},
        "bad",
        ["bad.yaml:4: repos.cuda.path: unknown placeholder {nonsense}"],
        id="unknown-placeholder",
    ),
    pytest.param(
        {"bad.yaml": 'extends: debian12\nname: "two\\nlines"\narches: [sparc]\n'},
        "bad",
        ["bad.yaml:2: name:", "bad.yaml:3: arches.0: 'sparc' is not one of: x86_64, aarch64"],
        id="several-problems-at-once",
    ),
    # Hostile descriptors through --distros-dir (issue 16, F8): a line separator became a real line break in the
    # cloud-init copy of the script; a trailing newline passed `$`-anchored patterns; aliases expand unbounded.
    pytest.param(
        {"bad.yaml": 'extends: debian12\nrepos:\n  cuda:\n    description: "CUDA\\u2028deb [trusted=yes] x"\n'},
        "bad",
        ["bad.yaml:4: repos.cuda.description:", "control and line-separator characters are not allowed"],
        id="line-separator-in-free-text",
    ),
    pytest.param(
        {"bad.yaml": 'extends: debian12\nname: "Debian\\x85deb [trusted=yes] x"\n'},
        "bad",
        ["bad.yaml:2: name:", "control and line-separator characters are not allowed"],
        id="next-line-character",
    ),
    pytest.param(
        {"bad.yaml": 'extends: debian12\nretired_keys: ["AE09FE4BBD223A84B2CCFCE3F60F4B3D7FA2AF80\\n"]\n'},
        "bad",
        ["bad.yaml:2: retired_keys.0:"],
        id="trailing-newline-after-a-pattern",
    ),
    pytest.param(
        {"bad.yaml": "extends: rhel9\nrepos:\n  epel:\n    signs: {metadata: false, packages: false}\n"},
        "bad",
        ["bad.yaml:4: repos.epel.signs: a repository is verified through its metadata or its packages: never neither"],
        id="repository-verified-by-nothing",
    ),
    pytest.param(
        {"bad.yaml": "extends: amzn2023\ncloud:\n  aws:\n    kernel_line: '6.6'\n"},
        "bad",
        ["bad.yaml:4: cloud.aws.kernel_line: '6.6' is not among kernel_lines"],
        id="al2023-default-kernel-line-unknown",
    ),
    pytest.param(
        {"bad.yaml": "extends: amzn2023\ncloud:\n  aws:\n    ami_name: al2023-ami-2023.*-kernel-*-x86_64\n"},
        "bad",
        ["bad.yaml:4: cloud.aws.ami_name: kernel_lines needs {kernel_line} in ami_name: one line on purpose"],
        id="al2023-pattern-matching-every-kernel-line",
    ),
    pytest.param(
        {"bad.yaml": "extends: debian12\ncloud:\n  aws:\n    ami_name: debian-12-{kernel_line}-*\n"},
        "bad",
        ["bad.yaml:4: cloud.aws.ami_name: unknown placeholder {kernel_line}"],
        id="kernel-line-placeholder-without-kernel-lines",
    ),
    pytest.param(
        {
            "bad.yaml": "extends: debian12\nvars: {a: &a [x, x, x, x, x, x, x, x, x],"
            " b: &b [*a, *a, *a, *a, *a, *a, *a], c: [*b, *b, *b, *b, *b, *b, *b, *b]}\n"
        },
        "bad",
        ["bad.yaml:2: vars.b.1: YAML anchors and aliases are not allowed"],
        id="alias-bomb",
    ),
    pytest.param(
        {"bad.yaml": "extends: rhel9\nbase_packages:\n  remove: [curl-minimal]\n"},
        "bad",
        ["bad.yaml:3: base_packages.remove: 'curl-minimal' is not in the inherited list"],
        id="list-edit-of-a-missing-item",
    ),
    pytest.param(
        {"bad.yaml": "extends: rhel9\nbase_packages:\n  prepend: [x]\n"},
        "bad",
        ["bad.yaml:3: base_packages.prepend: an inherited list is edited with remove, replace, append only"],
        id="unknown-list-edit",
    ),
    pytest.param(
        {
            "bad.yaml": "extends: rhel9\ndriver:\n  sources:\n    cuda-repo:\n      fabric_manager:\n"
            "        replace: {nvidia-fabricmanager: nvidia-fm}\n"
        },
        "bad",
        ["bad.yaml:6: driver.sources.cuda-repo.fabric_manager.replace: 'nvidia-fabricmanager' is not in the inherited"],
        id="list-edit-replacing-in-a-list-of-mappings",
    ),
    pytest.param(
        {"bad.yaml": "extends: rhel9\nkernel:\n  extra: {append: [kernel-tools]}\n"},
        "bad",
        ["bad.yaml:3: kernel.extra: edits an inherited list, but no parent sets extra"],
        id="list-edit-without-a-list",
    ),
    pytest.param(
        {"bad.yaml": "extends: debian12\nvars: {cuda_repo: 'debian{cuda_arch}{kernel}'}\n"},
        "bad",
        ["bad.yaml:2: vars.cuda_repo: unknown placeholder {kernel}"],
        id="var-with-a-non-builtin-placeholder",
    ),
]


@pytest.mark.parametrize(("files", "distro_id", "messages"), BAD_DESCRIPTORS)
def test_bad_descriptor_is_reported_with_file_line_and_key(
    tmp_path: Path, files: dict[str, str], distro_id: str, messages: list[str]
) -> None:
    descriptors = _write(tmp_path, files)
    with pytest.raises(DescriptorError) as caught:
        load_distro(descriptors, distro_id)
    text = str(caught.value)
    for message in messages:
        assert f"{tmp_path}/{message}" in text or message in text, text


def test_all_problems_of_all_descriptors_come_together(tmp_path: Path) -> None:
    descriptors = _write(
        tmp_path,
        {
            "one.yaml": "extends: debian12\nbogus: 1\n",
            "two.yaml": "extends: rhel9\narches: [mips]\n",
        },
    )
    with pytest.raises(DescriptorError) as caught:
        load_all(descriptors)
    problems = caught.value.problems
    assert any("one.yaml:2" in p for p in problems) and any("two.yaml:2" in p for p in problems)
    assert problems == sorted(set(problems))


def test_a_user_descriptor_adds_a_distribution_without_code(tmp_path: Path) -> None:
    descriptors = _write(tmp_path, {"mydebian.yaml": "extends: debian12\nname: My Debian\n"})
    distro = load_distro(descriptors, "mydebian")
    assert distro.name == "My Debian"
    assert distro.source_file == str(tmp_path / "mydebian.yaml")


# ---- the descriptor reference (issue 14) -------------------------------------------------------------------


def test_every_schema_property_has_a_description() -> None:
    undescribed = [path for path, _, description in schema_properties() if not description.strip()]
    assert undescribed == [], "give these schema properties a description: " + ", ".join(undescribed)
    assert len(schema_properties()) > 80, "the walk reaches the nested properties ($ref, *, oneOf)"


def test_docs_descriptors_md_is_the_schema_reference() -> None:
    """docs/descriptors.md is `bakegen show --schema` (regenerate: bakegen show --schema > docs/descriptors.md)."""
    assert (REPO / "docs" / "descriptors.md").read_text(encoding="utf-8") == schema_reference()
    assert "| `repos.*.signs.metadata` | boolean |" in schema_reference()
