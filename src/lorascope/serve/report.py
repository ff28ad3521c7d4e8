"""Writing serving results: ``serve.json``, the raw per-request CSV (the bootstrap-CI input), a table."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lorascope.io import atomic_write_json, atomic_write_text

CSV_FIELDS = ("backend", "scenario", "batch_size", "output_mode", "batch_index", "row", "e2e_s", "ttft_s", "tpot_s",
              "out_tokens", "adapter")


def requests_csv(cells: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for c in cells:
        for r in c["requests"]:
            writer.writerow({**{k: c[k] for k in ("backend", "scenario", "batch_size", "output_mode")},
                             **{k: r.get(k) for k in CSV_FIELDS[4:]}})
    return buf.getvalue()


def write_results(folder: Path, result: dict) -> dict[str, Path]:
    return {"json": atomic_write_json(folder / "serve.json", result),
            "csv": atomic_write_text(folder / "requests.csv", requests_csv(result["cells"]))}


def overhead_vs_merged(cells: list[dict], key: str = "p95_e2e_s", mode: str = "fixed") -> dict:
    """Point estimates only (the CIs are computed elsewhere from requests.csv): value / merged − 1."""
    ok = {(c["backend"], c["scenario"], c["batch_size"]): c["summary"].get(key)
          for c in cells if c["status"] == "ok" and c["output_mode"] == mode}
    out: dict = {}
    for (backend, scenario, b), v in ok.items():
        ref = ok.get((backend, "merged", b))
        if scenario != "merged" and v is not None and ref:
            out.setdefault(backend, {}).setdefault(scenario, {})[b] = v / ref - 1
    return out


def serve_markdown(result: dict) -> str:
    """p95 e2e latency and tokens/s per cell (fixed length), plus failed/skipped cells with their reason."""
    lines = ["## Serving (§10)", "", "| backend | scenario | batch | mode | p95 e2e (ms) | p95 TPOT (ms) | tok/s |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for c in result["cells"]:
        if c["status"] != "ok":
            notes.append(f"- {c['backend']} {c['scenario']} b={c['batch_size']} {c['output_mode']}: "
                         f"**{c['status']}** — {c['reason']}")
            continue
        s = c["summary"]
        tpot = f"{s['p95_tpot_s'] * 1e3:.2f}" if s.get("p95_tpot_s") is not None else "–"
        lines.append(f"| {c['backend']} | {c['scenario']} | {c['batch_size']} | {c['output_mode']} | "
                     f"{s['p95_e2e_s'] * 1e3:.1f} | {tpot} | {s['tokens_per_s']:.0f} |")
    return "\n".join(lines + ([""] + notes[:40] if notes else []))
