"""Figures for §9 (RQ3), FT vs LoRA. Inputs are ``weights_report`` dicts keyed by method label
(e.g. ``{"FT": report_ft, "LoRA": report_lora}``) or, for the DARE curves, numbers the caller measured.
Every function writes one PNG (matplotlib, Agg backend) and returns its Path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from lorascope.weights.delta import LLAMA_MODULE_TYPES  # noqa: E402

Report = Mapping[str, Any]
_METHOD_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
_TRANSFORM_STYLES = {"dare": ("-", "o"), "magnitude": ("--", "s")}
_TRANSFORM_LABELS = {"dare": "DARE (random drop + rescale)", "magnitude": "magnitude pruning"}


def _save(fig, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _color(i: int) -> str:
    return _METHOD_COLORS[i % len(_METHOD_COLORS)]


def _mean_normalized_spectrum(spectra: Sequence[Sequence[float]]) -> np.ndarray | None:
    """Mean over modules of σ_i / σ_1 (zero-ΔW modules skipped; truncated to the shortest spectrum)."""
    rows = [np.asarray(s, dtype=np.float64) for s in spectra if len(s) and s[0] > 0]
    if not rows:
        return None
    n = min(len(r) for r in rows)
    return np.mean([r[:n] / r[0] for r in rows], axis=0)


def _group_order(groups: Mapping[Any, Any], by: str) -> list[Any]:
    if by == "layer":
        return sorted(groups, key=lambda g: (g is None, g if g is not None else 0))
    known = {t: i for i, t in enumerate(LLAMA_MODULE_TYPES)}
    return sorted(groups, key=lambda g: (known.get(g, len(known)), str(g)))


def singular_spectra(reports: Mapping[str, Report], path: Path | str, *, by: str = "module_type",
                     floor: float = 1e-12, title: str = "Singular spectra of ΔW") -> Path:
    """One panel per method: normalized singular values σ_i/σ_1 of ΔW against index i (log y), one line per
    module type (mean over layers) or, with ``by="layer"``, per layer (mean over module types).

    Values below ``floor`` (numerically zero, e.g. beyond LoRA's rank r) are not drawn.
    """
    if by not in ("module_type", "layer"):
        raise ValueError(f"by must be 'module_type' or 'layer', got {by!r}")
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4.2), dpi=120, sharey=True,
                             sharex=True, squeeze=False)
    longest = 0  # drawn points: LoRA's curve stops at r on the same axis as FT's
    for ax, (method, report) in zip(axes[0], reports.items()):
        groups: dict[Any, list] = {}
        for m in report["modules"]:
            groups.setdefault(m[by], []).append(m["singular_values"])
        cmap = plt.get_cmap("viridis" if by == "layer" else "tab10")
        for i, key in enumerate(_group_order(groups, by)):
            curve = _mean_normalized_spectrum(groups[key])
            if curve is None:
                continue
            curve = np.where(curve >= floor, curve, np.nan)
            color = cmap(i / max(1, len(groups) - 1)) if by == "layer" else cmap(i % 10)
            ax.plot(np.arange(1, len(curve) + 1), curve, color=color, linewidth=1.2,
                    label=f"layer {key}" if by == "layer" else str(key))
            longest = max(longest, int(np.sum(~np.isnan(curve))))
        ax.set_title(f"{method}")
        ax.grid(True, which="major", alpha=0.3)
        if ax.lines:
            ax.set_yscale("log")
            ax.legend(fontsize=7, ncol=2 if len(groups) > 8 else 1)
        else:  # every ΔW of this model is zero: say so rather than draw empty axes
            ax.text(0.5, 0.5, "ΔW = 0 in every module:\nno spectrum to draw", transform=ax.transAxes,
                    ha="center", va="center", fontsize=11, color="#444")
    for ax in axes[0]:
        if longest > 32:  # log x for long spectra; short ones read better on a linear axis
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel(f"singular value index i (1 = largest{'; log scale' if longest > 32 else ''})")
    axes[0][0].set_ylabel(f"σ_i / σ_1 of ΔW (mean over {'layers' if by == 'module_type' else 'module types'})")
    fig.suptitle(title)
    return _save(fig, path)


def per_layer_metric(reports: Mapping[str, Report], path: Path | str, *, key: str = "mean_effective_rank",
                     ylabel: str = "effective rank of ΔW\n(Roy & Vetterli 2007; mean over modules)",
                     title: str = "Effective rank of ΔW per layer", logy: bool = False) -> Path:
    """A line per method of one per-layer summary field (``report["layers"][*][key]``) against layer."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for i, (method, report) in enumerate(reports.items()):
        rows = [r for r in report["layers"] if r["layer"] is not None]
        ax.plot([r["layer"] for r in rows], [r[key] for r in rows], marker="o", color=_color(i), label=method)
    ax.set_xlabel("decoder layer")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    values = [r[key] for rep in reports.values() for r in rep["layers"] if r["layer"] is not None]
    if logy and any(v > 0 for v in values):
        ax.set_yscale("log")
    if values and not any(v > 0 for v in values):
        ax.text(0.5, 0.5, "zero in every layer (ΔW = 0)", transform=ax.transAxes, ha="center", va="center",
                fontsize=11, color="#444")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def effective_rank_per_layer(reports: Mapping[str, Report], path: Path | str) -> Path:
    """Effective rank of ΔW per layer (mean over the layer's modules), FT vs LoRA, log y (FT's is in the
    hundreds or thousands, LoRA's at most r)."""
    return per_layer_metric(reports, path, logy=True)


def intruder_counts_per_layer(reports: Mapping[str, Report], path: Path | str, *,
                              title: str = "Intruder dimensions per layer") -> Path:
    """Grouped bars: intruders among the top-k left singular vectors, summed over the layer's modules."""
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=120)
    width = 0.8 / max(1, len(reports))
    k = eps = None
    for i, (method, report) in enumerate(reports.items()):
        rows = [r for r in report["layers"] if r["layer"] is not None and "intruders" in r]
        x = np.array([r["layer"] for r in rows], dtype=float) + (i - (len(reports) - 1) / 2) * width
        ax.bar(x, [r["intruders"] for r in rows], width=width, color=_color(i), label=method)
        k = report.get("settings", {}).get("intruder_k", k)
        eps = report.get("settings", {}).get("epsilon", eps)
    ax.set_xlabel("decoder layer")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("intruder dimensions (sum over modules)")
    detail = f"top-{k} left singular vectors with max |cos| < {eps} vs W_base" if k is not None else ""
    ax.set_title(f"{title}\n{detail} (Shuttleworth et al. 2024)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    total = sum(r.get("intruders", 0) for rep in reports.values() for r in rep["layers"] if r["layer"] is not None)
    if total == 0:  # an empty chart would look like a rendering fault: say what it shows
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no intruder dimension in any layer, for any method", transform=ax.transAxes,
                ha="center", va="center", fontsize=11, color="#444")
    else:
        ax.legend()
    return _save(fig, path)


def _point(v: Any) -> tuple[float, float | None, float | None]:
    """A value or (mean, low, high) — the latter drawn as an error bar (e.g. a 95% CI over seeds)."""
    if isinstance(v, (tuple, list)):
        return float(v[0]), float(v[1]), float(v[2])
    return float(v), None, None


def dare_curves(curves: Mapping[str, Mapping[str, Mapping[float, Any]]], path: Path | str, *,
                metric_name: str = "validation metric", baselines: Mapping[str, float] | None = None,
                title: str = "Task metric after dropping ΔW entries") -> Path:
    """Metric against the fraction of ΔW entries dropped, for each method and transform.

    ``curves[method][transform][drop_fraction] = value`` or ``(mean, low, high)``; ``transform`` is
    ``"dare"`` (drop p at random, rescale by 1/(1−p)) or ``"magnitude"`` (keep the top 1−p by |ΔW|).
    The x axis is the kept fraction 1 − p on a reversed log scale, so p = 0.5, 0.9, 0.99 are evenly
    spaced and more dropping is further right. ``baselines`` (label → value) are drawn as horizontal
    lines, e.g. the base model zero-shot.
    """
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, (method, by_transform) in enumerate(curves.items()):
        for transform, points in by_transform.items():
            style, marker = _TRANSFORM_STYLES.get(transform, (":", "^"))
            ps = sorted(points)
            if any(not 0.0 <= p < 1.0 for p in ps):
                raise ValueError(f"drop fractions must be in [0, 1): {ps}")
            vals = [_point(points[p]) for p in ps]
            x = [1.0 - p for p in ps]
            y = [v[0] for v in vals]
            label = f"{method} · {_TRANSFORM_LABELS.get(transform, transform)}"
            ax.plot(x, y, linestyle=style, marker=marker, color=_color(i), label=label)
            if all(v[1] is not None for v in vals):
                err = np.array([[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]])
                ax.errorbar(x, y, yerr=err, fmt="none", ecolor=_color(i), capsize=3, alpha=0.7)
    for j, (label, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, color="gray", linestyle=[":", "-."][j % 2], linewidth=1, label=label)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = sorted({1.0 - p for by_t in curves.values() for pts in by_t.values() for p in pts}, reverse=True)
    ax.set_xticks(ticks, [f"{x:g}\n(p={1 - x:g})" for x in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("fraction of ΔW entries kept, 1 − p (log scale; drop fraction p grows →)")
    ax.set_ylabel(metric_name)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
