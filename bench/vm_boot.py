"""Time from power-on to the GPU check's result when bakegen's user-data boots in a Debian VM (QEMU, TCG).

    python3 bench/vm_boot.py                       # what tests/test_vm_cloud_init.py recorded last
    python3 bench/vm_boot.py --now                 # boot the cloud-init path now (root; ~10 min per release)
    python3 bench/vm_boot.py --now --release trixie --json vm.json

Per release and path: boot 1 from power-on (QEMU started) to the check's result (the install script ends with the
check: /var/lib/bakegen/gpu-check.json, its start time plus its duration, on the guest's clock, which starts
from the host's), the boot's wall time until the guest powered off, and the same for boot 2 (the harness boots
the same disk again; the check runs as bakegen-gpu-check.service), and the whole run. The tests record these in
tests/test_vm_cloud_init.timings_file() ($BAKEGEN_VM_TIMINGS, else <cache>/timings/vm-cloud-init.json); --now
measures with the same code. Figures depend heavily on the machine's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import table  # noqa: E402  (bench/ is a folder of scripts, not a package)

RELEASES = ("bookworm", "trixie")
KINDS = ("cloud-init", "bootstrap", "changed-script", "wrong-release")


def boot_now(releases: list[str]) -> dict[str, Any]:
    """Boot the cloud-init path (two boots) for each release with the tests' own code; records the timings."""
    from tests.support.mirror import Mirror
    from tests.support.vm_image import RELEASES as KNOWN
    from tests.support.vm_image import build_image
    from tests.test_vm_cloud_init import RELEASE_DISTRO, boot_user_data, cloud_init_user_data, record_timings

    recorded: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bakegen-bench-vm-", dir="/var/tmp"))
    try:
        with Mirror.start(workdir / "mirror") as mirror:
            for release in (r for r in KNOWN if r in releases):
                started = time.monotonic()
                image = build_image(release, extra_ca=[mirror.ca_pem])
                record_timings(f"image/{release}", {"seconds": round(time.monotonic() - started, 1), "key": image.key})
                user_data = cloud_init_user_data(RELEASE_DISTRO[release], mirror, cloud="azure")
                outcome = boot_user_data(
                    image,
                    user_data,
                    mirror,
                    workdir / release,
                    release=release,
                    kind="cloud-init",
                    boots=2,
                )
                if len(outcome.runs) != 2 or not outcome.last.powered_off:
                    raise SystemExit(f"{release}: the run did not end cleanly:\n{outcome.summary()}")
                recorded[f"cloud-init/{release}"] = outcome.timings
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return recorded


def recorded_runs() -> dict[str, Any]:
    from tests.test_vm_cloud_init import timings_file

    path = timings_file()
    return json.loads(path.read_text()) if path.exists() else {}


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--now", action="store_true", help="boot the cloud-init path now (root; minutes)")
    parser.add_argument(
        "--release", action="append", choices=RELEASES, help="with --now: which release (repeatable; default both)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    runs = boot_now(args.release or list(RELEASES)) if args.now else recorded_runs()
    if not runs:
        print("no VM runs recorded: run pytest -m vm tests/test_vm_cloud_init.py, or bench/vm_boot.py --now")
        return 1
    rows: list[tuple[str, ...]] = [
        (
            "path / release",
            "boot 1: on -> check",
            "boot 1 wall",
            "boot 2: on -> check",
            "boot 2 wall",
            "whole run",
            "recorded (UTC), load 1-min start/end",
        )
    ]
    for release in RELEASES:
        image = runs.get(f"image/{release}")
        if image:
            rows.append((f"image / {release}", "-", "-", "-", "-", fmt_s(image["seconds"]), "build or cache hit"))
        for kind in KINDS:
            t = runs.get(f"{kind}/{release}")
            if not t:
                continue
            rows.append(
                (
                    f"{kind} / {release}",
                    fmt_s(t.get("boot1_power_on_to_check_result_s")),
                    fmt_s(t.get("boot1_wall_s")),
                    fmt_s(t.get("boot2_power_on_to_check_result_s")),
                    fmt_s(t.get("boot2_wall_s")),
                    fmt_s(t.get("total_s")),
                    f"{t.get('date', '?')}, {t.get('loadavg_1min_at_start')}/{t.get('loadavg_1min_at_end')}"
                    f" on {t.get('cpus')} cpus",
                )
            )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
