"""The size of every distribution's cloud-init user-data per cloud form, in bytes, against each cloud's limit.

    python3 bench/user_data_sizes.py            # a Markdown table (the README's "User-data per cloud" table)
    python3 bench/user_data_sizes.py --json     # every figure, per distribution and arch

Measured on the bytes bakegen writes (default options, x86_64; aarch64 differs by a few bytes): the generic YAML
(and what `gzip -9` would make of it), Azure's MIME form, the full user-data gzip-compressed as AWS would take it
(refused while over 16,384 bytes), and the bootstrap form (--script-url) with the script it downloads.

The AWS floor is what no shrinking short of removing code can get under: the user-data's script (GPU check
included) with every message left out (each double-quoted string of over 20 characters with a space in it
becomes ""), no indentation, compressed by xz at its best, without the YAML, base64 and decompression command a
real xz form would need. Above 16,384, the full provisioning and GPU check cannot fit EC2's user-data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from generator.errors import BakegenError  # noqa: E402
from generator.model import Arch, Format  # noqa: E402
from generator.plan import Options, make_plan  # noqa: E402
from generator.render import make_environment, render, render_script  # noqa: E402
from generator.resolve import descriptor_set, load_all  # noqa: E402
from generator.userdata import USER_DATA_FORMS, pack  # noqa: E402

SCRIPT_URL = "https://example-bucket.s3.amazonaws.com/bakegen/debian12/install.sh"
QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def floor(script: str) -> int:
    """The xz-compressed size of the script's code alone (see the module's doc)."""
    code = QUOTED.sub(lambda m: '""' if len(m.group(0)) > 20 and " " in m.group(0) else m.group(0), script)
    code = "\n".join(line.strip() for line in code.split("\n"))
    return len(lzma.compress(code.encode(), preset=9 | lzma.PRESET_EXTREME))


def size(content: str | bytes) -> int:
    return len(content if isinstance(content, bytes) else content.encode())


def measure(arch: Arch = Arch.X86_64) -> list[dict[str, Any]]:
    env = make_environment()
    rows = []
    for distro in load_all(descriptor_set()):
        if arch not in distro.arches:
            continue
        base = Options(arch=arch)
        row: dict[str, Any] = {"distro": distro.id, "arch": arch.value}
        (generic,) = render(make_plan(distro, base), Format.CLOUD_INIT, env)
        row["generic"] = size(generic.content)
        row["generic_gzip"] = len(pack(str(generic.content)))
        embedded = render_script(env, make_plan(distro, base), embedded=True)
        row["embedded_script"] = size(embedded)
        row["aws_floor"] = floor(embedded)
        row["script"] = size(render_script(env, make_plan(distro, base)))
        for cloud in ("azure", "gcp", "aws"):
            plan = make_plan(distro, dataclasses.replace(base, user_data_cloud=cloud))
            try:
                (user_data,) = render(plan, Format.CLOUD_INIT, env)
                row[cloud] = size(user_data.content)
            except BakegenError:  # over the limit: what it would have been
                row[cloud] = None
        row["aws_full_gzip"] = row["generic_gzip"]
        plan = make_plan(distro, dataclasses.replace(base, user_data_cloud="aws", script_url=SCRIPT_URL))
        bootstrap, _ = render(plan, Format.CLOUD_INIT, env)
        row["bootstrap"] = size(bootstrap.content)
        rows.append(row)
    return rows


def kb(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def table(rows: list[dict[str, Any]]) -> str:
    limits = {cloud: f"{form.limit:,}" for cloud, form in USER_DATA_FORMS.items() if form.limit}
    lines = [
        f"| distribution | generic (gzip) | Azure, MIME (<= {limits['azure']}) | Google Cloud (<= {limits['gcp']}) "
        f"| AWS, gzip (<= {limits['aws']}) | AWS floor: code only, xz | bootstrap, any cloud |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        aws = kb(row["aws"]) if row["aws"] is not None else f"{row['aws_full_gzip']:,}: over, refused"
        lines.append(
            f"| {row['distro']} | {row['generic']:,} ({row['generic_gzip']:,}) | {kb(row['azure'])} | {kb(row['gcp'])} "
            f"| {aws} | {row['aws_floor']:,} | {row['bootstrap']:,} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="every figure as JSON, x86_64 and aarch64")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(Arch.X86_64) + measure(Arch.AARCH64), indent=2))
    else:
        print(table(measure()), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
