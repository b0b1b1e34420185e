#!/usr/bin/env bash
# Installs everything bakegen's tests need on a fresh Debian 12 machine (run as root):
# system validators and VM tools from Debian's archive, the Python package with its test extras, and the
# newest cloud-init schema (from Debian's sid cloud-init package) for `bakegen validate`.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt_packages=(
  cloud-init          # its schema validator (bookworm: 22.4)
  packer              # packer fmt / validate (1.6.6, the only one reachable)
  systemd             # systemd-analyze verify for the GPU check unit
  gnupg curl ca-certificates apt-utils dpkg-dev   # key verification, the stand-in mirror
  mmdebstrap          # Debian root filesystems for running generated scripts for real
  gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross   # cgo: the real NVIDIA Container Toolkit, both arches
  dnf rpm createrepo-c   # real dnf 4, rpm (rpmbuild, rpmsign) and createrepo_c: keys against the rpm verifiers
  qemu-system-x86 qemu-utils genisoimage mtools dosfstools e2fsprogs   # VM boots
)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python3 -m pip install -q -e '.[test]'

# Packages from Debian sid, unpacked into the cache without installing anything: sid_unpack DEST PACKAGE...
sid_unpack() {
  local dest=$1 work
  shift
  work=$(mktemp -d)
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$dest"
  printf 'deb http://deb.debian.org/debian sid main\n' >"$work/sources.list"
  local apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
                  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1)
  apt-get "${apt_opts[@]}" update -q
  (cd "$work" && apt-get "${apt_opts[@]}" download "$@")
  local deb
  for deb in "$work"/*.deb; do
    dpkg-deb -x "$deb" "$dest/root"
    dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$dest/VERSION"
  done
  rm -rf "$work"
}

cache=${BAKEGEN_CACHE:-$HOME/.cache/bakegen}

# The newest cloud-init schema Debian offers (sid), which rejects unknown top-level keys.
schema_dir="$cache/cloud-init-schema"
if [ ! -s "$schema_dir/schema-cloud-config-v1.json" ]; then
  rm -rf "$schema_dir.tmp"
  sid_unpack "$schema_dir.tmp" cloud-init
  mkdir -p "$schema_dir"
  cp "$(find "$schema_dir.tmp/root" -name schema-cloud-config-v1.json | head -n 1)" "$schema_dir/"
  sed -n 's/^cloud-init //p' "$schema_dir.tmp/VERSION" >"$schema_dir/VERSION"
  rm -rf "$schema_dir.tmp"
fi
echo "setup done: cloud-init schema $(cat "$schema_dir/VERSION")"

# Go >= 1.25 for building the real NVIDIA Container Toolkit from its vendored source (tests/support/toolkit/):
# sid's static toolchain runs on Debian 12 as it is (cgo: gcc above).
go_dir="$cache/go-1.26"
if [ ! -x "$go_dir/root/usr/lib/go-1.26/bin/go" ]; then
  rm -rf "$go_dir"
  sid_unpack "$go_dir.tmp" golang-1.26-go golang-1.26-src
  mv "$go_dir.tmp" "$go_dir"
fi
echo "setup done: $(tr '\n' ';' <"$go_dir/VERSION")"
