"""Hostile key files against the real verifiers (issue 16, F1): apt with sqv (Debian 13) and gpgv (Debian 12) in
real root filesystems, and dnf 4 (the RHEL 8/9, Rocky, Alma, Amazon Linux package manager) on this machine.

The stand-in mirror serves each file of tests/support/hostile_keys.py as the toolkit repository's key while its
Release is signed by the ATTACKER key. A control first shows each hostile file is worth refusing: stored as it was
downloaded (what the old script did), the verifier accepts the attacker's signature. Then the generated script
refuses it (exit 4) and trusts nothing; files that are the pinned key are accepted and stored as that key alone,
and a keyring an earlier run left poisoned is replaced on the next run.
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TOOLKIT_PACKAGES, canonical_key, script_functions
from tests.support.hostile_keys import KeyFile, build_corpus, packets
from tests.support.mirror import Gpg, Mirror, key_fingerprints
from tests.support.rootfs import Chroot, Release
from tests.test_faults import TRUST, assert_nothing_trusted, prepared
from tests.test_rootfs_e2e import KEYRING, SOURCE_LIST, render_for_mirror, run_script

EX_OK, EX_VERIFY = 0, 4
RELEASES: dict[Release, str] = {"bookworm": "debian12", "trixie": "debian13"}
# A file that carries the attacker in a form the verifier may take as a certificate, and whether that verifier
# then accepted the attacker's signature when the file was stored as downloaded (found by these controls).
CONTROLS = {
    ("trixie", "secret-stub-appended-binary"): True,  # sqv takes the secret-key stub as a certificate
    ("bookworm", "secret-stub-appended-binary"): False,  # gpgv: the keyring holds a secret packet; it fails
    ("trixie", "second-key-binary"): True,
    ("bookworm", "second-key-binary"): True,
}


@pytest.fixture(scope="module")
def corpus(standin_mirror_session: Mirror) -> list[KeyFile]:
    mirror = standin_mirror_session
    return build_corpus(mirror.gpg, mirror.fingerprint, mirror.wrong_fingerprint)


def case(corpus: list[KeyFile], name: str) -> KeyFile:
    return next(k for k in corpus if k.name == name)


def chroot_for(request: pytest.FixtureRequest, release: Release) -> Chroot:
    chroot: Chroot = request.getfixturevalue(f"{release}_chroot")
    return chroot


def apt_update_with(chroot: Chroot, mirror: Mirror, keyring: bytes) -> subprocess.CompletedProcess[str]:
    """apt-get update of the mirror alone, trusting KEYRING as stored (the old script's `cp` of the download)."""
    chroot.install_ca(mirror.ca_pem)
    chroot.host_path(KEYRING).parent.mkdir(parents=True, exist_ok=True)
    chroot.host_path(KEYRING).write_bytes(keyring)
    chroot.write_text(SOURCE_LIST, f"deb [signed-by={KEYRING}] {mirror.base_url}/stable/deb/amd64 /\n")
    return chroot.run(
        ["apt-get", "update", "-o", f"Dir::Etc::sourcelist={SOURCE_LIST}", "-o", "Dir::Etc::sourceparts=-"],
        check=False,
        timeout=300,
    )


def apt_accepted(result: subprocess.CompletedProcess[str]) -> bool:
    output = result.stdout + result.stderr
    return result.returncode == 0 and not any(w in output for w in ("W: GPG error", "NO_PUBKEY", "E:", "Err:"))


@pytest.mark.rootfs
@pytest.mark.parametrize(("release", "name"), sorted(CONTROLS))
def test_control_hostile_file_stored_as_downloaded(
    release: Release, name: str, corpus: list[KeyFile], standin_mirror: Mirror, request: pytest.FixtureRequest
) -> None:
    chroot = chroot_for(request, release)
    standin_mirror.sign_with(standin_mirror.wrong_fingerprint)
    hostile = case(corpus, name)
    # What the old check saw: gpg's listing of primary public keys holds the pinned key alone (or, for two
    # public keys, both: the old check refused those, and F1's rerun path must still replace such a keyring).
    assert standin_mirror.fingerprint in key_fingerprints(hostile.data)
    result = apt_update_with(chroot, standin_mirror, hostile.data)
    assert apt_accepted(result) is CONTROLS[(release, name)], result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.rootfs
@pytest.mark.parametrize("release", sorted(RELEASES))
@pytest.mark.parametrize("name", [
    "secret-stub-appended", "secret-stub-appended-binary", "secret-key-appended", "second-armor-block",
    "second-key-binary", "bad-checksum-block", "v6-key-appended", "other-key", "revoked", "pinned-only-as-subkey",
])  # fmt: skip
def test_generated_script_refuses_hostile_key_and_trusts_nothing(
    release: Release, name: str, corpus: list[KeyFile], standin_mirror: Mirror, request: pytest.FixtureRequest
) -> None:
    hostile = case(corpus, name)
    assert hostile.refusal is not None
    script = render_for_mirror(RELEASES[release], standin_mirror, install_driver=False, fingerprint=hostile.pinned)
    chroot = prepared(chroot_for(request, release), standin_mirror, script)
    before = chroot.snapshot(TRUST)
    standin_mirror.sign_with(standin_mirror.wrong_fingerprint)
    standin_mirror.set_key(hostile.data)
    run = run_script(chroot, timeout=600)
    assert run.rc == EX_VERIFY, run.output[-4000:]
    reasons = [f"is refused: {hostile.refusal}; nothing was trusted"]
    if hostile.refusal == "gpg cannot read all of it":
        # gpg 2.2 lists nothing of an armored file with a bad block, gpg 2.4 nothing of one with a v6 key in it:
        # the script's first look then finds no key at all.
        reasons.append("is not an OpenPGP key; nothing was trusted")
    assert any(reason in run.output for reason in reasons), run.output[-4000:]
    assert_nothing_trusted(chroot, before)
    for package in TOOLKIT_PACKAGES:
        assert package not in chroot.package_state()
    # The repository itself was never asked for: nothing of the attacker's reached apt.
    assert all("/stable/deb/" not in path for path in standin_mirror.downloads())


@pytest.mark.rootfs
@pytest.mark.parametrize("release", sorted(RELEASES))
def test_pinned_key_with_extras_is_stored_alone_and_a_poisoned_keyring_is_replaced(
    release: Release, corpus: list[KeyFile], standin_mirror: Mirror, request: pytest.FixtureRequest
) -> None:
    """The pinned key with an attacker's certification and an unsigned user ID on it is accepted and stored clean;
    apt verifies the mirror with it. Then the keyring is poisoned as the old script left it (the attacker's stub
    appended) and the script runs again: the keyring is replaced by the pinned key alone before apt reads it."""
    script = render_for_mirror(RELEASES[release], standin_mirror, install_driver=False)
    chroot = prepared(chroot_for(request, release), standin_mirror, script)
    standin_mirror.set_key(case(corpus, "foreign-certification").data + b"")
    first = run_script(chroot, timeout=1200)
    assert first.rc == EX_OK, first.output[-4000:]
    stored = chroot.host_path(KEYRING).read_bytes()
    listing = packets(stored)
    assert key_fingerprints(stored) == [standin_mirror.fingerprint]
    assert listing.count(":public key packet:") == 1 and ":secret" not in listing
    assert f"keyid {standin_mirror.wrong_fingerprint[-16:]}" not in listing  # the attacker's certification dropped

    chroot.host_path(KEYRING).write_bytes(stored + case(corpus, "secret-stub-appended-binary").data[len(stored) :])
    poisoned = chroot.host_path(KEYRING).read_bytes()
    assert poisoned != stored and standin_mirror.fingerprint in key_fingerprints(poisoned)
    standin_mirror.set_key(None)
    second = run_script(chroot, timeout=600)
    assert second.rc == EX_OK, second.output[-4000:]
    assert "is not exactly the pinned key" in second.output
    assert "it holds secret-key material" in second.output
    assert chroot.host_path(KEYRING).read_bytes() == stored


# ---------------------------------------------------------------------------------------------------------
# dnf 4: the RHEL family's verifier. A local rpm repository (createrepo_c) whose repomd.xml and package are
# signed by one key, and a .repo file as the generated script writes it (gpgcheck=1, repo_gpgcheck=1,
# gpgkey=file://...); baseurl is a file:// URL here (the script itself refuses anything but https).

DNF_TOOLS = ("dnf", "rpmbuild", "rpmsign", "createrepo_c")
PAYLOAD = "bakegen-standin-payload"


def _have(tool: str) -> bool:
    return subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def rpm_payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A noarch stand-in rpm with no dependencies and no scriptlets (labelled STAND-IN in its summary)."""
    missing = [t for t in DNF_TOOLS if not _have(t)]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (tests/setup.sh installs them)")
    top = tmp_path_factory.mktemp("rpmbuild")
    spec = top / f"{PAYLOAD}.spec"
    spec.write_text(
        textwrap.dedent(f"""\
        Name: {PAYLOAD}
        Version: 1.0
        Release: 1
        Summary: bakegen STAND-IN payload for signature tests (not vendor software)
        License: Apache-2.0
        BuildArch: noarch
        %description
        bakegen STAND-IN payload for signature tests.
        %install
        mkdir -p %{{buildroot}}/usr/share/{PAYLOAD}
        echo stand-in > %{{buildroot}}/usr/share/{PAYLOAD}/marker
        %files
        /usr/share/{PAYLOAD}/marker
        """)
    )
    subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)], check=True, capture_output=True)
    (rpm,) = (top / "RPMS" / "noarch").glob("*.rpm")
    return rpm


def signed_rpm_repo(gpg: Gpg, signer: str, rpm: Path, folder: Path) -> Path:
    """The payload signed by SIGNER, in a repository whose repomd.xml SIGNER signs too."""
    folder.mkdir(parents=True)
    target = folder / rpm.name
    target.write_bytes(rpm.read_bytes())
    subprocess.run(
        [
            "rpmsign",
            "--addsign",
            "--define",
            "__gpg /usr/bin/gpg",
            "--define",
            f"_gpg_path {gpg.home}",
            "--define",
            f"_gpg_name {signer}",
            str(target),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(["createrepo_c", "-q", str(folder)], check=True, capture_output=True)
    repomd = folder / "repodata" / "repomd.xml"
    gpg.sign(signer, repomd, folder / "repodata" / "repomd.xml.asc", clear=False)
    return folder


def dnf_install(root: Path, repo: Path, key: Path) -> subprocess.CompletedProcess[str]:
    """dnf install of the payload into an empty installroot, trusting KEY for that repository only."""
    repos = root / "etc" / "yum.repos.d"
    repos.mkdir(parents=True, exist_ok=True)
    (repos / "standin.repo").write_text(
        f"[standin]\nname=bakegen STAND-IN\nbaseurl=file://{repo}\nenabled=1\n"
        f"gpgcheck=1\nrepo_gpgcheck=1\ngpgkey=file://{key}\n"
    )
    return subprocess.run(
        ["dnf", "-y", f"--installroot={root}", "--releasever=9", f"--setopt=reposdir={repos}",
         f"--setopt=cachedir={root}/var/cache/dnf", "--setopt=install_weak_deps=False", "--disablerepo=*",
         "--enablerepo=standin", "install", PAYLOAD],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def installed(root: Path) -> bool:
    return (root / "usr" / "share" / PAYLOAD / "marker").is_file()


@pytest.fixture(scope="module")
def dnf_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gpg, str, str]]:
    gpg = Gpg()
    try:
        yield gpg, gpg.generate("bakegen PINNED rpm key (throwaway)"), gpg.generate("bakegen ATTACKER (throwaway)")
    finally:
        gpg.close()


def test_dnf_control_trusts_the_attacker_from_a_hostile_key_file(
    dnf_keys: tuple[Gpg, str, str], rpm_payload: Path, tmp_path: Path
) -> None:
    """The armored pinned key with the attacker's secret-key stub appended, given to dnf as it was downloaded:
    dnf verifies the attacker's repository and package with it. This is what F1 closes."""
    gpg, pinned, attacker = dnf_keys
    hostile = case(build_corpus(gpg, pinned, attacker), "secret-stub-appended")
    key = tmp_path / "RPM-GPG-KEY-standin"
    key.write_bytes(hostile.data)
    repo = signed_rpm_repo(gpg, attacker, rpm_payload, tmp_path / "repo")
    result = dnf_install(tmp_path / "root", repo, key)
    assert result.returncode == 0 and installed(tmp_path / "root"), result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("signer", ["pinned", "attacker"])
def test_dnf_with_the_stored_key_verifies_only_the_pinned_signer(
    signer: str, dnf_keys: tuple[Gpg, str, str], rpm_payload: Path, tmp_path: Path
) -> None:
    """The generated rhel9 script's canonical_key refuses the hostile file and stores the pinned key alone from
    one that merely carries an attacker's certification; dnf then installs what the pinned key signed, and
    refuses what the attacker signed."""
    gpg, pinned, attacker = dnf_keys
    corpus = build_corpus(gpg, pinned, attacker)
    functions = script_functions("rhel9", tmp_path)
    stored = tmp_path / "RPM-GPG-KEY-standin"
    hostile = tmp_path / "hostile"
    hostile.write_bytes(case(corpus, "secret-stub-appended").data)
    assert canonical_key(functions, hostile, pinned, 1, stored) == (1, "it holds secret-key material")
    certified = tmp_path / "certified"
    certified.write_bytes(case(corpus, "foreign-certification").data)
    assert canonical_key(functions, certified, pinned, 1, stored) == (0, "")
    repo = signed_rpm_repo(gpg, pinned if signer == "pinned" else attacker, rpm_payload, tmp_path / "repo")
    result = dnf_install(tmp_path / "root", repo, stored)
    assert (result.returncode == 0) is (signer == "pinned"), result.stdout[-3000:] + result.stderr[-3000:]
    assert installed(tmp_path / "root") is (signer == "pinned")
