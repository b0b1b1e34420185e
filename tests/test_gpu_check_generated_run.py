"""The GPU check as bakegen's generated script installs it, run by hand on a real H200 (outputs committed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema

FIXTURES = Path(__file__).parent / "fixtures" / "gpu-check"
RUN = FIXTURES / "generated-run" / "nvidia-h200"


def test_result_is_a_valid_pass_on_one_h200() -> None:
    result = json.loads((RUN / "result.json").read_text())
    jsonschema.validate(result, json.loads((FIXTURES / "result.schema.json").read_text()))
    assert (result["status"], result["exit_code"], result["gpu_count"]) == ("pass", 0, 1)
    assert result["gpus"][0]["name"] == "NVIDIA H200"
    assert result["driver"]["kernel_module"] == result["driver"]["nvml"] == "580.159.04"
    # The generated config reached the program: branch 580, docker runtime (absent there, so skipped).
    checks = {check["name"]: check["status"] for check in result["checks"]}
    assert checks["driver_branch"] == "pass" and checks["runtime_docker"] == "skip"


def test_console_shows_the_installed_copy_ran_and_the_failure_path() -> None:
    console = (RUN / "console.txt").read_text()
    digests = re.findall(r"^([0-9a-f]{64})  \S+bakegen-gpu-check$", console, re.M)
    assert len(digests) == 2 and digests[0] == digests[1]
    codes = re.findall(r"^rc=(\d+)$", console, re.M)
    assert codes == ["0", "0", "1"]  # human run, --json run, --expected-gpus 2
    assert "FAIL  gpu_count             1 GPU found, 2 expected" in console
    assert (RUN / "motd").read_text().startswith("bakegen GPU check PASS at ")


def test_dry_run_of_the_generated_script_changed_nothing() -> None:
    text = (RUN / "dry-run.txt").read_text()
    assert text.rstrip().endswith("rc=0")
    assert "dry run done: nothing was changed" in text
    assert "would download https://nvidia.github.io/libnvidia-container/gpgkey, verify it is " in text
    assert "not loading kernel modules here (no running system)" in text
