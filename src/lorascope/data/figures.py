"""Dataset figures: token-length histograms per split with the max-length cut-off marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402


def length_histogram(lengths: dict[str, list[int]], max_length: int, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    top = max((max(v) for v in lengths.values() if v), default=1)
    bins = min(60, max(10, top // 8))
    for split, values in lengths.items():
        if values:
            ax.hist(
                values,
                bins=bins,
                range=(0, max(top, max_length)),
                alpha=0.5,
                label=f"{split} (n={len(values)})",
                density=True,
            )
    ax.axvline(max_length, color="black", linestyle="--", linewidth=1, label=f"max length {max_length}")
    ax.set_xlabel("tokens per training sequence (prompt + target + EOS)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
