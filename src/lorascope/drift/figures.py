"""Drift figures (§8): similarity to the base model per layer, FT vs LoRA, in-task vs out-of-task.

Lines are means over seeds with 95% Student-t bands (none with a single seed). Every function writes
one PNG (matplotlib, Agg backend) and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402

from lorascope.drift.aggregate import RANGES, layer_bands, t_band  # noqa: E402

COLORS = {"ft": "tab:blue", "lora": "tab:orange", "lora_qv": "tab:green", "base": "tab:gray"}
LABELS = {"ft": "full FT", "lora": "LoRA", "lora_qv": "LoRA (q,v)", "base": "base model"}
MEASURES = {
    "linear_cka_debiased": "debiased linear CKA",
    "linear_cka": "linear CKA (biased)",
    "rbf_cka": "RBF CKA",
    "cosine_standardized_mean": "cosine (base-standardized)",
    "cosine_mean": "cosine (raw)",
}
PROBES = {"in_task": "in-task probes", "out_of_task": "out-of-task probes"}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def similarity_per_layer(rows: list[dict], path: Path, *, pooling: str, title: str,
                         measures: tuple[str, ...] = ("linear_cka_debiased", "rbf_cka", "cosine_standardized_mean"),
                         confidence: float = 0.95) -> Path:
    """Grid: rows = probe sets present, columns = measures; x = layer (0 = embeddings), y = similarity."""
    probes = [p for p in PROBES if any(r["probe"] == p for r in rows)]
    measures = tuple(m for m in measures if any(r.get(m) is not None and r["pooling"] == pooling for r in rows))
    fig, axes = plt.subplots(len(probes), len(measures), figsize=(4.2 * len(measures), 3.3 * len(probes)),
                             squeeze=False, sharex=True)
    for i, probe in enumerate(probes):
        for j, measure in enumerate(measures):
            ax = axes[i][j]
            for method, band in layer_bands(rows, measure, probe=probe, pooling=pooling,
                                            confidence=confidence).items():
                x = np.asarray(band["layers"])
                color = COLORS.get(method)
                label = f"{LABELS.get(method, method)} (n={band['seeds']} seeds)"
                ax.plot(x, band["mean"], marker="o", ms=3, color=color, label=label)
                if band["lo"][0] is not None:
                    ax.fill_between(x, band["lo"], band["hi"], color=color, alpha=0.2, lw=0)
            ax.set_title(f"{MEASURES[measure]} — {PROBES[probe]}", fontsize=9)
            ax.set_xlabel("layer (0 = embeddings)")
            ax.set_ylabel("similarity to base (1 = identical)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{title} — {pooling} pooling; bands: {confidence:.0%} t-interval over seeds", fontsize=10)
    return _save(fig, path)


def forgetting(rows: list[dict], path: Path, *, title: str, confidence: float = 0.95) -> Path:
    """Bar chart of the LM loss on out-of-task text (nats/token): base vs FT vs LoRA (mean ± t-CI)."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r["method"], []).append(float(r["lm_loss"]))
    order = [m for m in ("base", "ft", "lora", "lora_qv") if m in groups] + sorted(set(groups) - set(COLORS))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(order), 3.4))
    for k, method in enumerate(order):
        band = t_band(groups[method], confidence, RANGES["lm_loss"])
        err = None if band["lo"] is None else [[band["mean"] - band["lo"]], [band["hi"] - band["mean"]]]
        ax.bar(k, band["mean"], yerr=err, capsize=4, color=COLORS.get(method, "tab:purple"))
        top = band["hi"] if band["hi"] is not None else band["mean"]
        ax.text(k, top, f"{band['mean']:.3f}\n", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(order)), [f"{LABELS.get(m, m)}\n(n={len(groups[m])})" for m in order], fontsize=8)
    ax.set_ylabel("LM loss on out-of-task text (nats/token)")
    ax.margins(y=0.15)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
