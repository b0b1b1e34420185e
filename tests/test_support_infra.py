"""Proof that the test infrastructure (stand-in mirror, root filesystems, chroots) works."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import TOOLKIT_PACKAGES
from tests.support.mirror import HTML_PAGE, Mirror, key_fingerprints
from tests.support.rootfs import Chroot, Release, build_rootfs
from tests.support.standin.debs import build_debs, load_spec

KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
PINNED = "1.18.1-1"
NEWEST = "1.19.0-1"


def fetch(
    mirror: Mirror, path: str, *, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"{mirror.base_url}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=mirror.client_ssl_context(), timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def dearmor(armored: bytes, target: Path) -> Path:
    subprocess.run(
        ["gpg", "--batch", "--yes", "--dearmor", "-o", str(target)], input=armored, check=True, capture_output=True
    )
    return target


# --- the toolkit packages: NVIDIA's real commands, stand-ins for libnvidia-container ---------------------------


@pytest.fixture(scope="module")
def toolkit_debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    debs = build_debs(tmp_path_factory.mktemp("debs"), architectures=["amd64"])
    return {deb.name: deb for deb in debs}


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def deb_files(deb: Path) -> list[str]:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[-1].removeprefix(".") for line in listing.splitlines() if not line.endswith("/"))


def test_toolkit_packages_have_nvidias_names_files_and_dependencies(toolkit_debs: dict[str, Path]) -> None:
    """The layout of NVIDIA's packaging/debian (control, *.install, maintainer scripts) at every version."""
    spec = load_spec()
    assert {PINNED, NEWEST, "1.17.8-1"} <= set(spec.versions)
    for version in spec.versions:
        debs = {name: toolkit_debs[f"{name}_{version}_amd64.deb"] for name in TOOLKIT_PACKAGES}
        assert deb_field(debs["nvidia-container-toolkit"], "Depends") == (
            f"nvidia-container-toolkit-base (= {version}), libnvidia-container-tools (= {version}), "
            "libnvidia-container-tools (<< 2.0.0)"
        )
        assert deb_field(debs["libnvidia-container-tools"], "Depends") == (f"libnvidia-container1 (= {version})")
        assert deb_files(debs["nvidia-container-toolkit"]) == ["/usr/bin/nvidia-container-runtime-hook"]
        assert deb_files(debs["nvidia-container-toolkit-base"]) == [
            "/etc/nvidia-container-toolkit/nvidia-cdi-refresh.env",
            "/etc/systemd/system/nvidia-cdi-refresh.path",
            "/etc/systemd/system/nvidia-cdi-refresh.service",
            "/usr/bin/nvidia-cdi-hook",
            "/usr/bin/nvidia-container-runtime",
            "/usr/bin/nvidia-ctk",
        ]
        for name in ("nvidia-container-toolkit", "nvidia-container-toolkit-base"):
            assert "built by bakegen's tests from NVIDIA's public" in deb_field(debs[name], "Description")
        for name in ("libnvidia-container-tools", "libnvidia-container1"):
            assert deb_field(debs[name], "Description").startswith("STAND-IN for NVIDIA's ")
            assert debs[name].stat().st_size < 8192


@pytest.fixture(scope="module")
def nvidia_ctk(toolkit_debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ctk-root")
    subprocess.run(
        ["dpkg-deb", "-x", str(toolkit_debs[f"nvidia-container-toolkit-base_{PINNED}_amd64.deb"]), str(root)],
        check=True,
    )
    return root / "usr/bin/nvidia-ctk"


def ctk(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True)


def test_nvidia_ctk_is_the_real_one(nvidia_ctk: Path) -> None:
    result = ctk(nvidia_ctk, "--version")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "NVIDIA Container Toolkit CLI version 1.18.1"
    assert subprocess.run(["file", "-b", str(nvidia_ctk)], capture_output=True, text=True).stdout.startswith("ELF")


def test_nvidia_ctk_docker_merges_and_preserves_keys(nvidia_ctk: Path, tmp_path: Path) -> None:
    config = tmp_path / "daemon.json"
    config.write_text(json.dumps({"log-driver": "journald", "runtimes": {"other": {"path": "/usr/bin/other"}}}))
    config.chmod(0o600)
    result = ctk(
        nvidia_ctk,
        "runtime",
        "configure",
        "--runtime=docker",
        f"--config={config}",
        "--set-as-default",
        "--cdi.enabled",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(config.read_text()) == {
        "log-driver": "journald",
        "runtimes": {"other": {"path": "/usr/bin/other"}, "nvidia": {"args": [], "path": "nvidia-container-runtime"}},
        "default-runtime": "nvidia",
        "features": {"cdi": True},
    }
    assert config.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["daemon.json"]  # no temp file left


def test_nvidia_ctk_docker_creates_missing_config(nvidia_ctk: Path, tmp_path: Path) -> None:
    config = tmp_path / "etc/docker/daemon.json"
    assert ctk(nvidia_ctk, "runtime", "configure", "--runtime", "docker", "--config", str(config)).returncode == 0
    assert json.loads(config.read_text()) == {"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}


def test_nvidia_ctk_docker_refuses_invalid_json(nvidia_ctk: Path, tmp_path: Path) -> None:
    config = tmp_path / "daemon.json"
    config.write_text("{not json")
    result = ctk(nvidia_ctk, "runtime", "configure", "--runtime=docker", f"--config={config}")
    assert result.returncode == 1
    assert "unable to load config for runtime docker" in result.stderr
    assert config.read_text() == "{not json"


@pytest.mark.parametrize(
    "runtime, main_line, expected",
    [
        ("containerd", "imports = [", 'BinaryName = "/usr/bin/nvidia-container-runtime"'),
        ("crio", None, 'runtime_path = "/usr/bin/nvidia-container-runtime"'),
    ],
)
def test_nvidia_ctk_drop_ins(
    nvidia_ctk: Path, tmp_path: Path, runtime: str, main_line: str | None, expected: str
) -> None:
    """containerd and CRI-O get a drop-in; containerd's main config imports the folder."""
    main, dropin = tmp_path / "config.toml", tmp_path / "conf.d/99-nvidia.toml"
    result = ctk(
        nvidia_ctk,
        "runtime",
        "configure",
        f"--runtime={runtime}",
        f"--config={main}",
        f"--drop-in-config={dropin}",
        "--set-as-default",
    )
    assert result.returncode == 0, result.stderr
    text = dropin.read_text()
    assert expected in text and "nvidia" in text
    if main_line:
        assert f'{main_line}"{tmp_path}/conf.d/*.toml"]' in main.read_text()
    assert str(dropin) in result.stderr


def test_nvidia_ctk_needs_a_gpu_for_cdi_and_device_symlinks(nvidia_ctk: Path, tmp_path: Path) -> None:
    """Where there is no NVIDIA driver (this machine), both fail: bakegen runs `cdi generate` only with a driver
    loaded, and the symlinks only from the udev rule that fires when the driver binds."""
    spec = tmp_path / "var/run/cdi/nvidia.yaml"
    result = ctk(nvidia_ctk, "cdi", "generate", f"--output={spec}")
    assert result.returncode == 1 and "failed to initialize NVML" in result.stderr
    assert not spec.exists()
    result = ctk(nvidia_ctk, "system", "create-dev-char-symlinks", "--create-all")
    assert result.returncode == 1 and "no NVIDIA devices found" in result.stderr


@pytest.mark.parametrize("args", [["frobnicate"], ["runtime", "configure", "--runtime=podman"]])
def test_nvidia_ctk_unknown_commands_fail(nvidia_ctk: Path, args: list[str]) -> None:
    assert ctk(nvidia_ctk, *args).returncode != 0


# --- the mirror --------------------------------------------------------------------------------


def test_mirror_repo_verifies_against_served_key(standin_mirror: Mirror, tmp_path: Path) -> None:
    assert re.fullmatch(r"[0-9A-F]{40}", standin_mirror.fingerprint)
    status, _, armored = fetch(standin_mirror, "/gpgkey")
    assert status == 200 and armored.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert key_fingerprints(armored) == [standin_mirror.fingerprint]
    keyring = dearmor(armored, tmp_path / "keyring.gpg")
    repo = "/stable/deb/amd64"
    for name in ("InRelease", "Release", "Release.gpg", "Packages"):
        status, _, body = fetch(standin_mirror, f"{repo}/{name}")
        assert status == 200
        (tmp_path / name).write_bytes(body)
    for args in (["InRelease"], ["Release.gpg", "Release"]):
        result = subprocess.run(
            ["gpgv", "--keyring", str(keyring), *args], cwd=tmp_path, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    packages_sha = subprocess.run(
        ["sha256sum", "Packages"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert packages_sha in (tmp_path / "Release").read_text()
    assert fetch(standin_mirror, "/stable/deb/arm64/InRelease")[0] == 200
    names = re.findall(r"^Package: (.+)$", (tmp_path / "Packages").read_text(), re.M)
    assert sorted(set(names)) == sorted(TOOLKIT_PACKAGES)


def test_mirror_signatures_avoid_sha1(standin_mirror: Mirror) -> None:
    """trixie's apt (sqv) rejects SHA1: the key's self-signatures and InRelease must not use it."""
    repo = standin_mirror.www / "libnvidia-container/stable/deb/amd64"
    assert b"\nHash: SHA512\n" in (repo / "InRelease").read_bytes()
    for blob in ((repo / "Release.gpg").read_bytes(), standin_mirror.key_asc.read_bytes()):
        packets = subprocess.run(
            ["gpg", "--batch", "--list-packets"], input=blob, capture_output=True, check=False
        ).stdout.decode()
        digests = set(re.findall(r"digest algo (\d+)", packets))
        assert digests and digests <= {"8", "9", "10"}, packets  # SHA256/384/512


def test_wrong_key_mode_serves_another_valid_key(standin_mirror: Mirror, tmp_path: Path) -> None:
    standin_mirror.set_mode("wrong_key")
    status, _, armored = fetch(standin_mirror, "/gpgkey")
    assert status == 200
    assert key_fingerprints(armored) == [standin_mirror.wrong_fingerprint]
    assert standin_mirror.wrong_fingerprint != standin_mirror.fingerprint
    keyring = dearmor(armored, tmp_path / "wrong.gpg")
    inrelease = standin_mirror.www / "libnvidia-container/stable/deb/amd64/InRelease"
    assert subprocess.run(["gpgv", "--keyring", str(keyring), str(inrelease)], capture_output=True).returncode != 0
    status, _, _ = fetch(standin_mirror, "/stable/deb/amd64/InRelease")
    assert status == 200  # only the key is wrong


def test_empty_key_mode(standin_mirror: Mirror) -> None:
    standin_mirror.set_mode("empty_key")
    assert fetch(standin_mirror, "/gpgkey")[::2] == (200, b"")


def test_html_mode_answers_every_path_with_html(standin_mirror: Mirror) -> None:
    standin_mirror.set_mode("html")
    for path in ("/gpgkey", "/stable/deb/amd64/InRelease", "/debian12/libnvidia-container.list"):
        assert fetch(standin_mirror, path) == (200, "text/html", HTML_PAGE)
    assert HTML_PAGE.startswith(b"<html>Unsupported distribution!</html>")


def test_down_mode_refuses_connections_then_recovers(standin_mirror: Mirror) -> None:
    standin_mirror.set_mode("down")
    with pytest.raises(urllib.error.URLError) as info:
        fetch(standin_mirror, "/gpgkey")
    assert isinstance(info.value.reason, ConnectionRefusedError)
    standin_mirror.set_mode("normal")
    assert fetch(standin_mirror, "/gpgkey")[0] == 200


def test_error503_and_slow_modes(standin_mirror: Mirror) -> None:
    standin_mirror.set_mode("error503")
    assert fetch(standin_mirror, "/gpgkey")[0] == 503
    standin_mirror.set_mode("slow", delay=0.5)
    started = time.monotonic()
    assert fetch(standin_mirror, "/gpgkey")[0] == 200
    assert time.monotonic() - started >= 0.5


def test_request_log_separates_downloads_from_revalidation(standin_mirror: Mirror) -> None:
    fetch(standin_mirror, "/stable/deb/amd64/InRelease")
    assert standin_mirror.downloads() == ["/libnvidia-container/stable/deb/amd64/InRelease"]
    standin_mirror.clear_requests()
    status, _, _ = fetch(
        standin_mirror, "/stable/deb/amd64/InRelease", headers={"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}
    )
    assert status == 304
    assert [r.status for r in standin_mirror.requests] == [304]
    assert standin_mirror.downloads() == []


def test_list_file_points_at_the_requested_host(standin_mirror: Mirror) -> None:
    status, _, body = fetch(standin_mirror, "/stable/deb/nvidia-container-toolkit.list")
    assert status == 200
    assert body.decode().splitlines()[0] == (f"deb {standin_mirror.base_url}/stable/deb/$(ARCH) /")
    assert standin_mirror.base_url_for("10.0.2.2") == (f"https://10.0.2.2:{standin_mirror.port}/libnvidia-container")


def test_certificate_covers_loopback_qemu_host_and_localhost(standin_mirror: Mirror) -> None:
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(standin_mirror.cert.cert_pem)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for san in ("IP Address:127.0.0.1", "IP Address:10.0.2.2", "DNS:localhost"):
        assert san in text
    context = standin_mirror.client_ssl_context()
    url = f"https://localhost:{standin_mirror.port}/libnvidia-container/gpgkey"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(standin_mirror.key_url, context=ssl.create_default_context(), timeout=10)
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    deadline = time.monotonic() + 5
    while not standin_mirror.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    assert standin_mirror.errors  # recorded, not printed


# --- root filesystems and chroots --------------------------------------------------------------


@pytest.mark.rootfs
def test_rootfs_cache_hit_is_fast(bookworm_rootfs: Path, bakegen_cache_dir: Path) -> None:
    started = time.monotonic()
    assert build_rootfs("bookworm", bakegen_cache_dir) == bookworm_rootfs
    assert time.monotonic() - started < 15


@pytest.mark.rootfs
def test_chroot_is_the_image_bake_case(bookworm_chroot: Chroot) -> None:
    chroot = bookworm_chroot
    assert chroot.run(["uname", "-r"]).stdout == os.uname().release + "\n"
    assert not chroot.exists("/run/systemd/system")  # PID 1 is not systemd in here
    assert "VERSION_CODENAME=bookworm" in chroot.read_text("/etc/os-release")
    state = chroot.package_state()
    assert {"ca-certificates", "curl", "gnupg", "python3"} <= state.keys()
    assert chroot.run("invoke-rc.d --query cron start", check=False).returncode == 101
    # https through the host's intercepting proxy works: its CA was baked in
    chroot.run(["curl", "-fsSI", "https://deb.debian.org/debian/dists/bookworm/InRelease"])
    before = chroot.snapshot(["/etc/apt", "/etc/docker/daemon.json"])
    assert before["/etc/docker/daemon.json"] is None
    assert "/etc/apt/sources.list" in before
    chroot.write_text("/etc/docker/daemon.json", "{}\n")
    after = chroot.snapshot(["/etc/apt", "/etc/docker/daemon.json"])
    assert after["/etc/docker/daemon.json"] is not None
    assert {k: v for k, v in after.items() if k.startswith("/etc/apt")} == {
        k: v for k, v in before.items() if k.startswith("/etc/apt")
    }


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(root))]


@pytest.mark.rootfs
def test_chroot_unmounts_and_deletes_after_an_error(bookworm_rootfs: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), Chroot(bookworm_rootfs) as chroot:
        root = chroot.root
        assert _mounts_under(root)
        chroot.run("sleep 600 >/dev/null 2>&1 &")  # a process left behind is killed too
        raise RuntimeError("boom")
    assert _mounts_under(root) == []
    assert not root.exists()
    assert Path("/dev/null").exists() and Path("/proc/self").exists()


def _add_mirror(chroot: Chroot, mirror: Mirror) -> subprocess.CompletedProcess[str]:
    chroot.install_ca(mirror.ca_pem)
    chroot.run(f"curl -fsSL {mirror.base_url}/gpgkey | gpg --dearmor -o {KEYRING}")
    chroot.write_text("/etc/apt/sources.list.d/nvidia-container-toolkit.list", mirror.apt_source(KEYRING) + "\n")
    return chroot.run(["apt-get", "update"])


@pytest.mark.rootfs
@pytest.mark.parametrize("release", ["bookworm", "trixie"])
def test_pinned_toolkit_installs_from_the_mirror(
    make_chroot: Callable[..., Chroot], standin_mirror: Mirror, release: Release
) -> None:
    chroot = make_chroot(release)
    assert f"VERSION_CODENAME={release}" in chroot.read_text("/etc/os-release")
    update = _add_mirror(chroot, standin_mirror)
    ours = [line for line in update.stderr.splitlines() if "127.0.0.1" in line]
    assert ours == [], ours  # no signature warnings (sqv on trixie, gpgv on bookworm)
    policy = chroot.run(["apt-cache", "policy", "nvidia-container-toolkit"]).stdout
    assert f"Candidate: {NEWEST}" in policy

    install = ["apt-get", "install", "-y", "--no-install-recommends"]
    unpinned = chroot.run([*install, f"nvidia-container-toolkit={PINNED}"], check=False)
    assert unpinned.returncode != 0
    assert f"nvidia-container-toolkit-base (= {PINNED}) but {NEWEST}" in unpinned.stdout
    chroot.run([*install, *(f"{name}={PINNED}" for name in TOOLKIT_PACKAGES)])
    state = chroot.package_state()
    assert {name: state.get(name) for name in TOOLKIT_PACKAGES} == dict.fromkeys(TOOLKIT_PACKAGES, PINNED)
    version = chroot.run(["nvidia-ctk", "--version"]).stdout
    assert version.splitlines()[0] == "NVIDIA Container Toolkit CLI version 1.18.1"
    # NVIDIA's postinst: the runtime's config written, the hook reachable under its old name.
    assert "[nvidia-container-runtime]" in chroot.read_text("/etc/nvidia-container-runtime/config.toml")
    assert chroot.run(["readlink", "/usr/bin/nvidia-container-toolkit"]).stdout.strip() == (
        "/usr/bin/nvidia-container-runtime-hook"
    )

    chroot.write_text("/etc/docker/daemon.json", '{"log-driver": "journald"}\n')
    chroot.run(["nvidia-ctk", "runtime", "configure", "--runtime=docker"])
    assert json.loads(chroot.read_text("/etc/docker/daemon.json")) == {
        "log-driver": "journald",
        "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
    }

    standin_mirror.clear_requests()
    chroot.run(["apt-get", "update"])
    chroot.run([*install, *(f"{name}={PINNED}" for name in TOOLKIT_PACKAGES)])
    assert standin_mirror.downloads() == []  # second run: revalidated (304), nothing fetched
    assert standin_mirror.requests, "apt did not even ask the mirror"
