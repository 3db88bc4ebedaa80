"""Reading TOML files and checking their values: one reader and one checker for every file.

Configs (`experiments/*.toml`) and study specs (`studies/*.toml`) are read by `read_toml` and
their values checked by `typed` (the TOML type) and `check_range` (finite, within bounds), so a
bad value is worded the same way wherever it is written: `<file>: <key> = <value> must be ...`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from polypseg.errors import PolypsegError

# A numeric value's bounds: (low, high, low excluded).
Bounds = tuple[float, float, bool]


def read_toml(path: Path, noun: str, examples: str) -> dict[str, Any]:
    """The table in `path`; a bad file is a one-line PolypsegError naming it as `noun`."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PolypsegError(f"{noun} {path} not found; see {examples}") from None
    except IsADirectoryError:
        raise PolypsegError(f"{noun} {path} is a folder; pass a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise PolypsegError(f"{noun} {path} is not valid TOML: {err}") from None
    except OSError as err:
        raise PolypsegError(f"cannot read {noun} {path}: {err.strerror}") from None


def parse_value(text: str) -> Any:
    """A TOML value (`1e-3`, `true`, `"x"`, `[1, 2]`), or the text itself when it is none."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def typed(value: Any, kind: Any, where: str) -> Any:
    """`value` as `kind` (ints become floats, lists tuples), else a PolypsegError. A tuple of
    strings may be one comma-separated string (`"hflip,rot90"`), as `--set` gives it."""
    if kind is float:
        ok = _is_number(value)
        value = float(value) if ok else value
    elif kind in (bool, int, str):
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    elif str(kind) == "tuple[str, ...]":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise PolypsegError(f"{where} = {value!r} is not a valid list of names")
        return tuple(value)
    elif str(kind) == "dict[str, str]":
        return _names_to_text(value, where)
    elif str(kind).startswith("tuple"):
        ok = isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)
        value = tuple(float(v) for v in value) if ok else value
    else:  # pragma: no cover - a programming error, not a user's
        raise TypeError(f"unsupported TOML type {kind}")
    if not ok:
        text = "list of numbers" if str(kind).startswith("tuple") else kind.__name__
        raise PolypsegError(f"{where} = {value!r} is not a valid {text}")
    return value


def _names_to_text(value: Any, where: str) -> dict[str, str]:
    """A table of names to strings, or the `--set` form `"kvasir=/data/kvasir,clinicdb=DIR"`."""
    if isinstance(value, str):
        items = [part.partition("=") for part in value.split(",") if part.strip()]
        if all(sep and name.strip() for name, sep, _ in items):
            value = {name.strip(): text.strip() for name, _, text in items}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise PolypsegError(
            f'{where} = {value!r} is not a valid table of names to folders, like {{kvasir = "DIR"}}'
        )
    return dict(value)


def _number(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)  # seeds' 2**32 - 1 exactly


def check_range(value: float, bounds: Bounds, where: str) -> None:
    low, high, open_low = bounds
    below = value <= low if open_low else value < low
    if not math.isfinite(value) or below or value > high:
        if not math.isinf(high):
            valid = f"in {'(' if open_low else '['}{_number(low)}, {_number(high)}]"
        elif (low, open_low) in ((0, True), (1, False)):
            valid = "positive"
        else:
            valid = f"{'>' if open_low else '>='} {_number(low)}"
        finite = "" if math.isfinite(value) else "a finite number, "
        raise PolypsegError(f"{where} = {value} must be {finite}{valid}")
