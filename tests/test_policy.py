"""Security policy over every generated file: every distribution x arch x format, rendered in-process.

- nothing trusts a repository without checking it: no apt-key, no trusted=yes, no gpgcheck=0, no `curl | sh`;
- no plain-http URL (one documented exception: Packer's own HTTP server that serves the NoCloud seed to a local
  QEMU build machine);
- every repository the install script adds is verified against a full 40-hex fingerprint (each `repo_add` call
  carries one), with its own keyring on apt (`signed-by`);
- every value from a descriptor or a flag is quoted for its target language: hostile values are rejected by the
  option parsers (generator/plan.py), and where one is passed straight into Options anyway, it lands only inside
  single quotes or a quoted here-document in shell, and changes nothing in the YAML or HCL structure.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shlex
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from generator.errors import UsageError
from generator.model import Arch, Distro, Format
from generator.plan import (
    CheckOptions,
    Options,
    make_plan,
    parse_branch,
    parse_capabilities,
    parse_container_image,
    parse_driver_version,
    parse_fingerprint,
    parse_gpus,
    parse_https_url,
    parse_name_value,
    parse_toolkit_version,
)
from generator.render import RenderedFile, make_environment, render
from generator.resolve import descriptor_set, load_distro
from generator.selfcheck import check_rendered
from tests.helpers import matrix

FINGERPRINT = re.compile(r"^[0-9A-F]{40}$")
# The NoCloud seed Packer's built-in HTTP server hands a local QEMU build machine (user-mode network, never leaves
# the build host): the one http:// URL allowed, in packer/sources.pkr.hcl only.
HTTP_ALLOWED = {"packer/sources.pkr.hcl": ("http://{{ .HTTPIP }}:{{ .HTTPPort }}/",)}
FORBIDDEN = [
    (re.compile(r"\bapt-key\b"), "apt-key (deprecated global trust)"),
    # apt takes yes and its boolean synonyms (StringToBool: yes/true/with/on/enable/1).
    (
        re.compile(r"\btrusted\s*[=:]\s*[\"']?(yes|true|with|on|enable|1)\b", re.I),
        "trusted=yes (unsigned apt repository)",
    ),
    (re.compile(r"\bgpgcheck\s*=\s*[\"']?(0|no|false|off)\b", re.I), "gpgcheck=0 (unsigned packages)"),
    (re.compile(r"\brepo_gpgcheck\s*=\s*[\"']?(0|no|false|off)\b", re.I), "repo_gpgcheck=0 (unsigned metadata)"),
    (re.compile(r"\bpkg_gpgcheck\s*=\s*[\"']?(0|no|false|off)\b", re.I), "pkg_gpgcheck=0 (unsigned packages)"),
    (re.compile(r"\bsslverify\s*=\s*[\"']?(0|no|false|off)\b", re.I), "sslverify=0 (TLS unchecked)"),
    (re.compile(r"\b(curl|wget)\b[^\n;&]*\|\s*(sudo\s+)?(ba|z|da)?sh\b"), "a download piped into a shell"),
    (
        re.compile(
            r"--no-gpg-checks|--nogpgcheck|--allow-unauthenticated|AllowInsecureRepositories"
            r"|--allow-insecure-repositories|AllowDowngradeToInsecureRepositories|--no-check-certificate",
            re.I,
        ),
        "a package manager or downloader told to skip signatures or certificates",
    ),
    (re.compile(r"(--insecure\b|\bCURL_OPTS=\([^)]*\s-k\b|\bcurl\b[^\n]*\s-k\b)"), "curl told not to check TLS"),
]

CASES = [(d, a, f) for d, a in matrix() for f in Format]


def _ids(case: tuple[str, str, Format]) -> str:
    return f"{case[0]}-{case[1]}-{case[2].value}"


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    return make_environment()  # one compiled set of templates for the whole module (compiling dominates)


def _files(distro: str, arch: str, fmt: Format, hostile_descriptor: bool = False, **options: Any) -> list[RenderedFile]:
    """As tests/helpers.render_files, with the module's one Jinja environment."""
    if not options and not hostile_descriptor:
        return _benign(distro, arch, fmt)
    loaded = load_distro(descriptor_set(), distro)
    if hostile_descriptor:
        loaded = _hostile_descriptor(loaded)
    plan = make_plan(loaded, dataclasses.replace(Options(), arch=Arch(arch), **options))
    return render(plan, fmt, _environment())


def _hostile_descriptor(distro: Distro) -> Distro:
    """A descriptor whose free-text and package values carry shell, YAML and HCL syntax (the schema would refuse
    some of them; the templates must not depend on that)."""
    repos = {
        name: dataclasses.replace(spec, description=f"desc'\"{HOSTILE_MARK}`id`") for name, spec in distro.repos.items()
    }
    return dataclasses.replace(
        distro,
        name=f"Name'\"{HOSTILE_MARK}`id`\n${{x}}%{{y}}",
        repos=repos,
        base_packages=(*distro.base_packages, f"pkg{HOSTILE_MARK}"),
    )


@functools.cache
def _benign(distro: str, arch: str, fmt: Format) -> list[RenderedFile]:
    plan = make_plan(load_distro(descriptor_set(), distro), Options(arch=Arch(arch)))
    files = render(plan, fmt, _environment())
    for file in files:
        check_rendered(file, f"{distro}/{arch}/{file.path}")  # bash -n, YAML parse with #cloud-config, HCL parse
    return files


def _scripts(file: RenderedFile) -> list[str]:
    """The install script(s) in a generated file: the file itself, or the one cloud-init writes."""
    if file.kind == "shell":
        return [file.text]
    if file.kind == "cloud-config":
        data = yaml.safe_load(file.content)
        return [entry["content"] for entry in data.get("write_files", []) if entry["path"].endswith("bakegen-install")]
    return []


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_generated_files_trust_nothing_unchecked(case: tuple[str, str, Format]) -> None:
    distro, arch, fmt = case
    for file in _files(distro, arch, fmt):
        where = f"{distro}/{arch}/{file.path}"
        for pattern, what in FORBIDDEN:
            match = pattern.search(file.text)
            assert match is None, f"{where}: {what}: {match.group(0) if match else ''!r}"
        allowed = HTTP_ALLOWED.get(str(file.path), ())
        for match in re.finditer(r"http://\S*", file.text):
            allowed_here = any(file.text.startswith(a, match.start()) for a in allowed)
            assert allowed_here, f"{where}: plain-http URL {match.group(0)}"


# Every spelling the policy must catch (issue 16, F9): a pattern that misses one of these is a hole in this test.
HOSTILE_SPELLINGS = [
    "apt-key add key.asc",
    "deb [trusted=yes] http://x /",
    "deb [trusted=on] https://x /",
    "deb [trusted=true] https://x /",
    "deb [trusted=enable] https://x /",
    "Trusted: yes",
    'deb [ trusted = "yes" ] https://x /',
    "gpgcheck=0",
    "gpgcheck=off",
    "gpgcheck=no",
    "gpgcheck=false",
    "repo_gpgcheck=0",
    "repo_gpgcheck = off",
    "pkg_gpgcheck=0",
    "sslverify=0",
    "sslverify=false",
    "sslverify=off",
    "curl -fsSL https://x/install.sh | sh",
    "wget -qO- https://x | sudo bash",
    "dnf install --nogpgcheck x",
    "zypper --no-gpg-checks in x",
    "apt-get install --allow-unauthenticated x",
    "apt-get update --allow-insecure-repositories",
    "-o Acquire::AllowInsecureRepositories=true",
    "curl --insecure https://x",
    "curl -fsS -k https://x",
    "readonly CURL_OPTS=(--fail -k --silent)",
    "wget --no-check-certificate https://x",
]


@pytest.mark.parametrize("text", HOSTILE_SPELLINGS)
def test_policy_catches_every_spelling(text: str) -> None:
    assert any(pattern.search(text) for pattern, _ in FORBIDDEN), text


def _logical_lines(script: str) -> list[str]:
    return script.replace("\\\n", " ").splitlines()


def _repo_add_calls(script: str) -> list[list[str]]:
    calls = []
    for line in _logical_lines(script):
        stripped = line.strip()
        if re.match(r"^(if ! have \S+; then )?repo_add ", stripped) and "()" not in stripped.split()[1]:
            call = re.sub(r";\s*fi$", "", stripped.split("then ", 1)[-1] if stripped.startswith("if ") else stripped)
            words = shlex.split(call)
            calls.append(words)
    return calls


@pytest.mark.parametrize("case", [(d, a) for d, a in matrix()], ids=[f"{d}-{a}" for d, a in matrix()])
def test_every_repository_is_pinned_to_a_full_fingerprint(case: tuple[str, str]) -> None:
    distro, arch = case
    loaded = load_distro(descriptor_set(), distro)
    for file in _files(distro, arch, Format.SHELL) + _files(distro, arch, Format.CLOUD_INIT):
        for script in _scripts(file):
            calls = _repo_add_calls(script)
            assert calls, f"{distro}/{arch}/{file.path}: no repo_add call found"
            names = [call[1] for call in calls]
            for call in calls:
                # repo_add NAME DESCRIPTION URL KEY_URL FINGERPRINT [SUITE COMPONENT...]
                _, name, _, url, key_url, fpr = call[:6]
                # UNVERIFIED only where the descriptor says no evidence shows it: the script then refuses the key.
                unverified = fpr == "UNVERIFIED" and loaded.repos[name].fingerprint == "UNVERIFIED"
                assert FINGERPRINT.match(fpr) or unverified, f"{name}: {fpr!r} is not a full 40-hex fingerprint"
                assert url.startswith("https://") and key_url.startswith("https://"), (url, key_url)
            assert sorted(set(names)) == sorted(set(names) & set(loaded.repos)), names
            if loaded.family.value != "apt":
                # rpm: repo_add ... PKG_CHECK METADATA_CHECK: the packages or the metadata verified, never neither.
                for call in calls:
                    assert len(call) == 8 and {call[6], call[7]} <= {"0", "1"} and "1" in call[6:8], call
            if loaded.family.value == "apt":
                # One keyring per repository, named by it, and only that keyring in the repository's line.
                assert 'local keyring="/etc/apt/keyrings/$name.gpg"' in script
                assert 'line="deb [signed-by=$keyring] $url' in script
                assert len(names) == len(set(names)), f"a repository added twice: {names}"


# ---------------------------------------------------------------------------------------------------------
# hostile values


HOSTILE = "x'\"$(touch /tmp/bakegen-pwned)`id`;reboot #\n\\"
PARSER_CASES: list[tuple[Callable[[str], object], str]] = [
    (lambda v: parse_https_url("--mirror cuda", v), "https://mirror.test/a'$(reboot)"),
    (lambda v: parse_https_url("--mirror cuda", v), "https://mirror.test/a b"),
    (lambda v: parse_https_url("--mirror cuda", v), "https://mirror.test/`id`"),
    (lambda v: parse_https_url("--mirror cuda", v), "https://mirror.test/a;reboot"),
    (lambda v: parse_https_url("--mirror cuda", v), "https://mirror.test/?q=$(id)"),
    (lambda v: parse_https_url("--mirror cuda", v), "https://user:pw@mirror.test/"),
    (lambda v: parse_https_url("--mirror cuda", v), "https://mirror.test$(id)/"),
    (lambda v: parse_https_url("--mirror cuda", v), "http://mirror.test/"),
    (lambda v: parse_https_url("--mirror cuda", v), "file:///etc/passwd"),
    (lambda v: parse_fingerprint("--key-fingerprint cuda", v), "EB693B3035CD5710E231E123A4B469963BF863C$"),
    (lambda v: parse_fingerprint("--key-fingerprint cuda", v), "3BF863CC"),
    (lambda v: parse_name_value("--mirror", v), "cu da=https://x"),
    (lambda v: parse_name_value("--mirror", v), "$(id)=https://x"),
    (parse_container_image, "nvidia/cuda:12.9.1; reboot"),
    (parse_container_image, "nvidia/cuda:$(id)"),
    (parse_container_image, "nvidia/cuda 'x'"),
    (parse_gpus, "all; reboot"),
    (parse_gpus, "device=0,$(id)"),
    (parse_gpus, '"device=0,1"'),
    (parse_capabilities, "compute,$(id)"),
    (parse_capabilities, "compute utility"),
    (parse_branch, "580;id"),
    (parse_driver_version, "580.95.05'"),
    (parse_toolkit_version, "1.18.1-1$(id)"),
    (parse_toolkit_version, "1.18.1 "),
]


# parse_https_url rejects tab, CR and LF itself (urlsplit would drop them, and a newline would split the
# `deb ...` or `baseurl=` line in two); the option regexes match the whole value (a `$` would allow a final \n).
PARSER_CASES_CONTROL = [
    pytest.param(lambda v: parse_https_url("--mirror cuda", v), "https://mirror.test/a\nb", id="url-LF"),
    pytest.param(lambda v: parse_https_url("--mirror cuda", v), "https://mirror.test/a\rb", id="url-CR"),
    pytest.param(lambda v: parse_https_url("--mirror cuda", v), "https://mirror.test/a\tb", id="url-TAB"),
    pytest.param(lambda v: parse_https_url("--mirror cuda", v), "https://mirror\n.test/", id="host-LF"),
    pytest.param(parse_container_image, "nvidia/cuda:12.9.1-base-ubuntu24.04\n", id="image-LF"),
    pytest.param(parse_branch, "580\n", id="branch-LF"),
    pytest.param(parse_driver_version, "580.95.05\n", id="driver-version-LF"),
    pytest.param(parse_toolkit_version, "1.18.1\n", id="toolkit-version-LF"),
    pytest.param(parse_gpus, "all\n", id="gpus-LF"),
]


@pytest.mark.parametrize(
    ("parse", "value"), [pytest.param(p, v, id=repr(v)[:40]) for p, v in PARSER_CASES] + PARSER_CASES_CONTROL
)
def test_option_parsers_reject_hostile_values(parse: Callable[[str], object], value: str) -> None:
    with pytest.raises(UsageError):
        parse(value)


def _safe_regions(script: str) -> list[tuple[int, int]]:
    """Spans of a bash script where text is inert: single-quoted strings, comments, quoted here-document bodies.

    A small scanner for what the templates produce; it treats anything it does not understand as unsafe.
    """
    safe: list[tuple[int, int]] = []
    i, n = 0, len(script)
    heredocs: list[tuple[str, bool]] = []
    at_word_start = True
    while i < n:
        ch = script[i]
        if ch == "\n" and heredocs:
            start = i + 1
            for delimiter, quoted in heredocs:
                end = script.find(f"\n{delimiter}\n", start - 1)
                assert end >= 0, f"here-document {delimiter} never ends"
                if quoted:
                    safe.append((start, end + 1))
                start = end + len(delimiter) + 2
            heredocs = []
            i = start
            at_word_start = True
            continue
        if ch == "'":
            end = script.index("'", i + 1)
            safe.append((i + 1, end))
            i = end + 1
            at_word_start = False
            continue
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            j = i + 1
            while script[j] != '"':
                j += 2 if script[j] == "\\" else 1
            i = j + 1
            at_word_start = False
            continue
        if ch == "#" and at_word_start:
            end = script.find("\n", i)
            safe.append((i, end if end >= 0 else n))
            i = end if end >= 0 else n
            continue
        match = re.match(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1", script[i:])
        if match:
            heredocs.append((match.group(2), bool(match.group(1))))
            i += match.end()
            continue
        at_word_start = ch in " \t\n;|&(){}"
        i += 1
    return safe


def _unsafe_occurrences(script: str, needle: str) -> list[str]:
    regions = _safe_regions(script)
    found = []
    for match in re.finditer(re.escape(needle), script):
        if not any(start <= match.start() and match.end() <= end for start, end in regions):
            line = script.count("\n", 0, match.start()) + 1
            found.append(f"line {line}: {script.splitlines()[line - 1][:160]}")
    return found


HOSTILE_MARK = "$(touch /tmp/bakegen-pwned)"


def _hostile_options(distro: str) -> dict[str, Any]:
    """Options as if every parser had let a hostile value through (the templates must still quote them)."""
    loaded = load_distro(descriptor_set(), distro)
    first_repo = sorted(loaded.repos)[0]
    return {
        "mirrors": {first_repo: "https://mirror.test/a'b\"c`id`" + HOSTILE_MARK},
        "toolkit_version": "1.18.1'" + HOSTILE_MARK,
        "check": dataclasses.replace(
            CheckOptions(),
            container_image="img'" + HOSTILE_MARK,
            gpus='"device=0,1"' + HOSTILE_MARK,
            capabilities="compute" + HOSTILE_MARK,
        ),
    }


def _structure(value: Any) -> Any:
    """The shape of parsed YAML/HCL: keys and list lengths, no scalar values."""
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_structure(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_hostile_values_are_only_ever_quoted(case: tuple[str, str, Format]) -> None:
    distro, arch, fmt = case
    benign = {str(f.path): f for f in _files(distro, arch, fmt)}
    hostile = _files(distro, arch, fmt, hostile_descriptor=True, **_hostile_options(distro))
    assert any(HOSTILE_MARK in f.content for f in hostile), "the hostile values reached no file: test is vacuous"
    for file in hostile:
        where = f"{distro}/{arch}/{file.path}"
        check_rendered(file, where)
        for script in _scripts(file):
            assert _unsafe_occurrences(script, HOSTILE_MARK) == [], f"{where}: a hostile value outside quotes"
            assert _unsafe_occurrences(script, "`id`") == [], f"{where}: a hostile value outside quotes"
        if file.kind == "cloud-config":
            expected = _structure(yaml.safe_load(benign[str(file.path)].content))
            assert _structure(yaml.safe_load(file.content)) == expected
        if file.kind == "hcl":
            import pygohcl

            assert _structure(pygohcl.loads(file.content)) == _structure(pygohcl.loads(benign[str(file.path)].content))
            # HCL template sequences from a value must arrive escaped ($${ and %%{), or HCL would interpolate them.
            code = "\n".join(line for line in file.text.splitlines() if not line.lstrip().startswith(("#", "//")))
            assert re.search(r"(?<!\$)\$\{x\}|(?<!%)%\{y\}", code) is None, f"{where}: unescaped HCL template"


def test_the_quote_scanner_finds_unquoted_values() -> None:
    """The scanner above must be able to fail: an unquoted or double-quoted value is reported."""
    assert _unsafe_occurrences(f"echo {HOSTILE_MARK}\n", HOSTILE_MARK)
    assert _unsafe_occurrences(f'echo "{HOSTILE_MARK}"\n', HOSTILE_MARK)
    assert _unsafe_occurrences(f"cat <<EOF\n{HOSTILE_MARK}\nEOF\n", HOSTILE_MARK)
    assert not _unsafe_occurrences(f"echo '{HOSTILE_MARK}'\n", HOSTILE_MARK)
    assert not _unsafe_occurrences(f"cat <<'EOF'\n{HOSTILE_MARK}\nEOF\n", HOSTILE_MARK)
    assert not _unsafe_occurrences(f"# {HOSTILE_MARK}\n", HOSTILE_MARK)
