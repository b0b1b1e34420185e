"""Where bakegen's own data lives: the source checkout's folders, or their copies inside an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """`distros` or `templates`: top-level folders in a checkout, `generator/_<name>` once installed."""
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    return _PACKAGE / f"_{name}"


def cache_dir() -> Path:
    """bakegen's cache: $BAKEGEN_CACHE, else ~/.cache/bakegen."""
    return Path(os.environ.get("BAKEGEN_CACHE", Path.home() / ".cache" / "bakegen"))
