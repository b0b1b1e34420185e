"""Where bakegen's own data lives: the source checkout's folders, or their copies inside an installed wheel."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
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


def user_cache(kind: str) -> Path | None:
    """One folder of bakegen's cache; None where BAKEGEN_NO_CACHE is set (nothing is remembered then)."""
    if os.environ.get("BAKEGEN_NO_CACHE"):
        return None
    return cache_dir() / kind


def remembered(kind: str, key: str, make: Callable[[], str]) -> str:
    """`make()`, kept in the cache under `key`, which must be a hash of everything the text depends on: an entry
    cannot go stale then. A cache that cannot be read or written is no cache."""
    folder = user_cache(kind)
    if folder is None:
        return make()
    path = folder / key
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    text = make()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = folder / f".{key}.{os.getpid()}"
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        pass
    return text


def found_valid(kind: str, key: str) -> bool:
    """Whether a check passed before on the input whose hash is `key` (hashing everything the check depends on)."""
    folder = user_cache(kind)
    return folder is not None and (folder / key).exists()


def remember_valid(kind: str, key: str) -> None:
    """Record that the check passed on `key`'s input: an empty file of that name. Never a failure: a read-only
    home means the check runs again next time."""
    folder = user_cache(kind)
    if folder is not None:
        with contextlib.suppress(OSError):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            (folder / key).touch()
