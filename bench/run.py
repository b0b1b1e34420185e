"""bakegen's benchmarks: CLI cold start, rendering the whole matrix, and the generated script run for real.

    python3 bench/run.py                 # cold start + matrix; rootfs figures from the last test run
    python3 bench/run.py --rootfs        # also bake debian12 in a bookworm root filesystem now (root, minutes)
    python3 bench/run.py --runs 30 --json bench.json

Cold start: median wall time of `bakegen <distro> --format cloud-init --stdout` (the installed console script,
run directly by its interpreter, not through a pyenv shim) against `python -c pass` with the same interpreter.
Matrix: median of `bakegen all --format all --out <tmp>` (every distro x arch x format, validated and written).
Root filesystem: first and second (no-op) run of the generated debian12/debian13 script, and the DKMS build,
as recorded by tests/test_rootfs_e2e.py in its timings file, or measured now with --rootfs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def bakegen_command() -> list[str]:
    """The console script next to this interpreter (what `pip install` made), else `python -m generator`."""
    script = Path(sys.executable).parent / "bakegen"
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "generator"]


# Targets of issue 14, as ratios measured in one run: a cold single render within 5x of `python -c pass`, the whole
# matrix within 1.5 s.
COLD_START_TARGET_RATIO = 5.0
MATRIX_TARGET_S = 1.5
# Measured as an installed bakegen runs: Python may keep compiled modules (.pyc), which this environment's
# PYTHONDONTWRITEBYTECODE would otherwise forbid, recompiling bakegen's modules at every start.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(cmd: list[str], *, cwd: Path = REPO) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU (user + system) is what a shared, loaded machine distorts least."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_of(cmd: list[str], runs: int, *, warmup: int = 2) -> dict[str, float]:
    """Median, min and max wall seconds and median CPU seconds over `runs` runs, after `warmup` unmeasured ones
    (page cache, .pyc files)."""
    for _ in range(warmup):
        measure(cmd)
    samples = [measure(cmd) for _ in range(runs)]
    walls = [w for w, _ in samples]
    return {
        "median": statistics.median(walls),
        "min": min(walls),
        "max": max(walls),
        "cpu_median": statistics.median(c for _, c in samples),
    }


def bench_cold_start(distro: str, runs: int) -> dict[str, Any]:
    baseline = median_of([sys.executable, "-c", "pass"], runs)
    cli = median_of([*bakegen_command(), distro, "--format", "cloud-init", "--stdout"], runs)
    return {
        "runs": runs,
        "python_c_pass": baseline,
        "bakegen_cloud_init": cli,
        "command": " ".join([Path(bakegen_command()[-1]).name, distro, "--format cloud-init --stdout"]),
    }


def bench_matrix(runs: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bakegen-bench-"))
    try:
        out = tmp / "out"
        # Each run writes a fresh folder: the first write of the whole matrix, as in a clean checkout.
        figures = median_of([*bakegen_command(), "all", "--format", "all", "--out", str(out)], runs, warmup=0)
        files = sum(1 for p in out.rglob("*") if p.is_file())
        return {"runs": runs, **figures, "files": files}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bake_now(releases: list[str]) -> dict[str, Any]:
    """Bake in root filesystems now, with the test suite's own code (needs root, mmdebstrap, minutes)."""
    from tests.support.mirror import Mirror
    from tests.test_rootfs_e2e import baking, record_timings

    results: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bakegen-bench-mirror-"))
    try:
        with Mirror.start(workdir) as mirror:
            for release in releases:
                with baking(release, mirror) as bake:  # type: ignore[arg-type]
                    first = bake.first_run()
                    if first.rc != 0:
                        raise SystemExit(f"{release}: first run failed (exit {first.rc}):\n{first.output[-3000:]}")
                    second = bake.second_run()
                    if second.rc != 0:
                        raise SystemExit(f"{release}: second run failed (exit {second.rc}):\n{second.output[-3000:]}")
                    results[release] = bake.timings()
                    record_timings(results[release])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def recorded_bakes() -> dict[str, Any]:
    from tests.test_rootfs_e2e import timings_file

    path = timings_file()
    return json.loads(path.read_text()) if path.exists() else {}


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 100:
        return f"{value:.1f} s"
    return f"{value:.0f} s ({value / 60:.0f} min)"


def spread(figures: dict[str, float]) -> str:
    return f"{fmt_s(figures['median'])} ({fmt_s(figures['min'])}-{fmt_s(figures['max'])})"


def table(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows as aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="runs per cold-start figure (default 15)")
    parser.add_argument("--matrix-runs", type=int, default=3, help="runs of the whole matrix (default 3)")
    parser.add_argument("--distro", default="debian12", help="the distribution of the cold-start figure")
    parser.add_argument("--rootfs", action="store_true", help="bake in root filesystems now (root; minutes)")
    parser.add_argument(
        "--release",
        action="append",
        choices=["bookworm", "trixie"],
        help="with --rootfs: which release (repeatable; default bookworm)",
    )
    parser.add_argument("--skip-cli", action="store_true", help="skip the cold-start and matrix figures")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()

    report: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_1min_at_start": round(os.getloadavg()[0], 1)}
    rows = [("measure", "median (min-max)", "note")]
    if not args.skip_cli:
        cold = bench_cold_start(args.distro, args.runs)
        matrix = bench_matrix(args.matrix_runs)
        report.update(cold_start=cold, matrix=matrix)
        base, cli = cold["python_c_pass"], cold["bakegen_cloud_init"]
        rows += [
            ("python -c pass", spread(base), f"{args.runs} runs; CPU {fmt_s(base['cpu_median'])}"),
            (
                cold["command"],
                spread(cli),
                f"{args.runs} runs; CPU {fmt_s(cli['cpu_median'])}; {fmt_s(cli['median'] - base['median'])} "
                "over the interpreter",
            ),
            (
                "bakegen all --format all --out tmp",
                spread(matrix),
                f"{args.matrix_runs} runs; CPU {fmt_s(matrix['cpu_median'])}; {matrix['files']} files",
            ),
        ]
        ratio = cli["median"] / base["median"]
        report["targets"] = {
            "cold_start_ratio": round(ratio, 2),
            "cold_start_met": ratio <= COLD_START_TARGET_RATIO,
            "matrix_s": round(matrix["median"], 2),
            "matrix_met": matrix["median"] <= MATRIX_TARGET_S,
        }
        rows += [
            (
                "  cold start / python -c pass",
                f"{ratio:.1f}x",
                f"target <= {COLD_START_TARGET_RATIO:g}x: {'met' if ratio <= COLD_START_TARGET_RATIO else 'NOT met'}",
            ),
            (
                "  whole matrix",
                fmt_s(matrix["median"]),
                f"target <= {MATRIX_TARGET_S:g} s: {'met' if matrix['median'] <= MATRIX_TARGET_S else 'NOT met'}",
            ),
        ]
    bakes = bake_now(args.release or ["bookworm"]) if args.rootfs else recorded_bakes()
    report["rootfs"] = bakes
    for release, t in sorted(bakes.items()):
        when = "measured now" if args.rootfs else f"recorded {t.get('date', '?')}"
        when += f", load {t.get('loadavg_1min_at_end')}"
        rows += [
            (
                f"{t['distro']} script, first run ({release})",
                fmt_s(t["first_run_s"]),
                f"{when}; {t.get('debian_debs_cached_before_first_run', 0)} .debs cached",
            ),
            ("  of which the driver step", fmt_s(t.get("driver_step_s")), "headers, driver, DKMS, initramfs"),
            ("  of which the DKMS build", fmt_s(t.get("dkms_build_s")), f"kernel {t.get('image_kernel')}"),
            (
                f"{t['distro']} script, second run ({release})",
                fmt_s(t["second_run_s"]),
                "no-op: nothing changed"
                + (f"; {t['first_run_s'] / t['second_run_s']:.0f}x faster" if t.get("second_run_s") else ""),
            ),
        ]
    if not bakes:
        rows.append(
            (
                "root filesystem runs",
                "-",
                "none recorded: run pytest -m rootfs tests/test_rootfs_e2e.py or bench/run.py --rootfs",
            )
        )
    print(f"{report['cpus']} CPUs, 1-minute load average {report['loadavg_1min_at_start']} at the start")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
