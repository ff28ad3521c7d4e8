"""Serving figures (§10): output tokens/s and p95 latency vs batch size (one line per scenario, one panel
per backend), and memory per scenario. Fixed-length cells only (natural lengths vary with the adapter)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402

from lorascope.io import atomic_write_bytes  # noqa: E402


def _ok(cells: list[dict], mode: str = "fixed") -> list[dict]:
    return [c for c in cells if c["status"] == "ok" and c["output_mode"] == mode]


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _by_batch(cells: list[dict], key: str, ylabel: str, title: str, path: Path, scale: float = 1.0) -> Path | None:
    ok = _ok(cells)
    backends = sorted({c["backend"] for c in ok})
    if not backends:
        return None
    fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 4), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        scenarios = list(dict.fromkeys(c["scenario"] for c in ok if c["backend"] == backend))
        for scenario in scenarios:
            pts = sorted((c["batch_size"], c["summary"][key]) for c in ok
                         if c["backend"] == backend and c["scenario"] == scenario and c["summary"].get(key) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] * scale for p in pts], marker="o", label=scenario)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (requests)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{backend}: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def throughput_vs_batch(cells: list[dict], path: Path) -> Path | None:
    return _by_batch(cells, "tokens_per_s", "output tokens / s", "throughput (fixed length)", path)


def p95_latency_vs_batch(cells: list[dict], path: Path) -> Path | None:
    return _by_batch(cells, "p95_e2e_s", "p95 end-to-end latency (ms)", "p95 latency (fixed length)", path, 1e3)


def memory_by_scenario(cells: list[dict], path: Path) -> Path | None:
    """Largest measured memory per (backend, scenario): GPU peak allocated, or CPU resident set."""
    ok = _ok(cells)
    if not ok:
        return None
    gpu = ok[0]["memory"].get("kind") == "gpu"
    key, ylabel = ("peak_allocated_bytes", "peak allocated (MiB)") if gpu else ("rss_bytes", "process RSS (MiB)")
    backends = sorted({c["backend"] for c in ok})
    scenarios = list(dict.fromkeys(c["scenario"] for c in ok))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(scenarios) * len(backends)), 4))
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        vals = [max((c["memory"].get(key, 0) for c in ok if c["backend"] == backend and c["scenario"] == s), default=0)
                / 2**20 for s in scenarios]
        ax.bar([x + i * width for x in range(len(scenarios))], vals, width, label=backend)
    ax.set_xticks([x + width * (len(backends) - 1) / 2 for x in range(len(scenarios))], scenarios)
    ax.set_xlabel("scenario")
    ax.set_ylabel(ylabel)
    ax.set_title("memory by scenario (max over batch sizes)")
    ax.legend()
    if not gpu:  # on CPU the resident set is the whole process's: it cannot tell the scenarios apart
        ax.text(0.5, 1.02, "CPU: process RSS includes every engine loaded so far; compare GPU peaks, not these",
                transform=ax.transAxes, ha="center", va="bottom", fontsize=8, color="#a33")
    return _save(fig, path)
