"""Number formatting used throughout the report, so every table reads the same way:
metric points with 2 decimals, fractions as percentages, p-values with 4 decimals, "—" for no value."""

from __future__ import annotations

import math
from typing import Any, Sequence

NONE = "—"


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if _ok(x) else NONE


def pts(x: Any) -> str:
    """A metric in points (0–100): 2 decimals."""
    return num(x, 2)


def pct(frac: Any, digits: int = 1) -> str:
    """A fraction (0.3) as a percentage ("30.0%")."""
    return f"{100 * frac:.{digits}f}%" if _ok(frac) else NONE


def ci(bounds: Sequence[Any] | None, fn=pts) -> str:
    if not bounds or len(bounds) != 2 or not all(_ok(b) for b in bounds):
        return NONE
    return f"[{fn(bounds[0])}, {fn(bounds[1])}]"


def est_ci(est: Any, bounds: Sequence[Any] | None, fn=pts) -> str:
    """"61.46 [60.10, 62.80]"; the estimate alone when there is no interval."""
    if not _ok(est):
        return NONE
    band = ci(bounds, fn)
    return fn(est) if band == NONE else f"{fn(est)} {band}"


def pval(p: Any) -> str:
    if not _ok(p):
        return NONE
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def lr(x: Any) -> str:
    return f"{x:g}" if _ok(x) else NONE


def ms(seconds: Any) -> str:
    return f"{1e3 * seconds:.1f}" if _ok(seconds) else NONE


def mib(nbytes: Any) -> str:
    return f"{nbytes / 2**20:.1f}" if _ok(nbytes) else NONE


def yes_no(x: Any) -> str:
    return NONE if x is None else ("yes" if x else "no")


def plain(x: Any) -> str:
    """A config value as short text: floats in shortest form (1e-05, 0.05), lists and dicts joined."""
    if x is None:
        return NONE
    if isinstance(x, bool):
        return yes_no(x)
    if isinstance(x, float):
        return f"{x:g}"
    if isinstance(x, (list, tuple)):
        return ", ".join(plain(v) for v in x)
    if isinstance(x, dict):
        return ", ".join(f"{k} {plain(v)}" for k, v in x.items())
    return str(x)
