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

# The newest cloud-init schema Debian offers (sid), which rejects unknown top-level keys.
cache=${BAKEGEN_CACHE:-$HOME/.cache/bakegen}
schema_dir="$cache/cloud-init-schema"
if [ ! -s "$schema_dir/schema-cloud-config-v1.json" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$schema_dir"
  printf 'deb http://deb.debian.org/debian sid main\n' >"$work/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1)
  apt-get "${apt_opts[@]}" update -q
  (cd "$work" && apt-get "${apt_opts[@]}" download cloud-init)
  dpkg-deb -x "$work"/cloud-init_*.deb "$work/root"
  schema=$(find "$work/root" -name schema-cloud-config-v1.json | head -n 1)
  cp "$schema" "$schema_dir/schema-cloud-config-v1.json"
  dpkg-deb -f "$work"/cloud-init_*.deb Version >"$schema_dir/VERSION"
fi
echo "setup done: cloud-init schema $(cat "$schema_dir/VERSION")"
