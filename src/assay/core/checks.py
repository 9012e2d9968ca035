"""The generic pieces of the checks that run before any work (``fail``, ``one_of``, ``at_least``, ...).

A pipeline runs minutes of stages before the one whose section has a typo starts, so every
pipeline checks all of its sections first, and every command checks its own config before it
reads a file. Each stage's own check is a ``check(cfg, key, skip, files)`` function next to its
config in the stage module, found through the command registry (``assay.commands.check_stage``);
this module holds only what those checks share, and imports no stage module, so it stays at the
bottom of the import graph. Names are checked against the registries the code runs with
(templates, backends, models, reasoning-gym tasks), so a check cannot drift from what would run.
A failure is a ``ConfigError`` naming the dotted key; the CLI and the recipe loader turn it into
the flag, the override or the file:line the value came from.
"""

from __future__ import annotations

from typing import Any, Callable, Collection

from assay.core.config import ConfigError
from assay.core.io import InputError
from assay.core.registry import did_you_mean


def keyed(key: str) -> Callable[[str], str]:
    """``name -> "section.name"`` for a config checked as section ``key`` of a pipeline (plain name at top level)."""
    return lambda name: f"{key}.{name}" if key else name


def fail(key: str, detail: str) -> ConfigError:
    return ConfigError(key, key, detail)


def one_of(key: str, value: Any, options: Collection[str], kind: str) -> None:
    if value not in options:
        raise fail(key, f"'{value}' is not a known {kind}{did_you_mean(str(value), sorted(options))}")


def at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise fail(key, f"must be at least {low:g}, got {value!r}")


def unit_interval(key: str, value: float, zero_ok: bool = False) -> None:
    if not ((0 <= value if zero_ok else 0 < value) and value <= 1):
        raise fail(key, f"must be in {'[' if zero_ok else '('}0, 1], got {value!r}")


def passes(key: str, fn: Callable, *args: Any) -> Any:
    """Run a parser or registry lookup that raises InputError, naming ``key`` on failure."""
    try:
        return fn(*args)
    except ConfigError:
        raise
    except InputError as exc:
        raise fail(key, str(exc)) from None


