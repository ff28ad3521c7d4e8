"""``lorascope similarity X.npy Y.npy``: CKA (linear, debiased, RBF) and cosine between two activation dumps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer

from lorascope.cli.common import print_json, user_errors

FIELDS = ("n", "d_x", "d_y", "linear_cka", "linear_cka_debiased", "rbf_cka", "cosine_mean", "cosine_ci95",
          "cosine_standardized_mean", "cosine_standardized_ci95")


def load_activations(path: Path) -> np.ndarray:
    """An (n, d) numeric array from a .npy file (no pickles); errors name the file."""
    from lorascope.drift.similarity import SimilarityInputError, as_matrix

    if not path.is_file():
        raise SimilarityInputError(f"{path}: file not found")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"PK":
        raise SimilarityInputError(f"{path}: is an .npz archive; save a single (n, d) array with np.save")
    if magic != b"\x93NUMPY":
        raise SimilarityInputError(f"{path}: not a readable .npy file (no NumPy header)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise SimilarityInputError(f"{path}: cannot load as a plain .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise SimilarityInputError(f"{path}: not a readable .npy file ({exc})") from None
    return as_matrix(arr, str(path))


def similarity_report(X: Any, Y: Any, names: tuple[str, str] = ("X", "Y"), rbf_sigma_factor: float = 0.8,
                      max_rbf_n: int = 4096) -> dict:
    """Every similarity of X (n, d_x) and Y (n, d_y); a metric that is undefined here is None with a note.

    Input errors (shape, non-finite, different n, constant input) raise SimilarityInputError."""
    from lorascope.drift.cosine import cosine_similarity
    from lorascope.drift.gram import rbf_cka
    from lorascope.drift.similarity import LinearCKAAccumulator, SimilarityInputError, check_pair

    if not rbf_sigma_factor > 0:
        raise SimilarityInputError(f"--rbf-sigma-factor must be positive, got {rbf_sigma_factor}")
    X, Y = check_pair(X, Y, names)
    n, d_x, d_y = X.shape[0], X.shape[1], Y.shape[1]
    out: dict[str, Any] = {key: None for key in FIELDS}
    out.update(n=n, d_x=d_x, d_y=d_y, x=names[0], y=names[1], rbf_sigma_factor=rbf_sigma_factor)
    notes: list[str] = []
    acc = LinearCKAAccumulator(d_x, d_y, names).update(X, Y)
    out.update(acc.result(debiased=False))  # constant input or n < 2 raise here
    if n < 4:
        notes.append(f"linear_cka_debiased: needs n ≥ 4, got {n}")
    else:
        try:
            out["linear_cka_debiased"] = acc.result()["linear_cka_debiased"]
        except SimilarityInputError as exc:
            notes.append(f"linear_cka_debiased: {exc}")
    if n > max_rbf_n:
        notes.append(f"rbf_cka: skipped, n={n} > --max-rbf-n {max_rbf_n} (it needs n×n matrices)")
    else:
        try:
            out["rbf_cka"] = rbf_cka(X, Y, rbf_sigma_factor, max_rbf_n, names)
        except SimilarityInputError as exc:
            notes.append(f"rbf_cka: {exc}")
    if d_x != d_y:
        notes.append(f"cosine: needs equal widths, got d_x={d_x}, d_y={d_y}")
    else:
        try:
            cos = cosine_similarity(X, Y, names=names)
        except SimilarityInputError as exc:
            notes.append(f"cosine_standardized: {exc}")
            try:
                cos = cosine_similarity(X, Y, standardize=False, names=names)
            except SimilarityInputError as exc2:
                notes.append(f"cosine: {exc2}")
                cos = {}
        if cos.get("cosine_standardized_note"):
            notes.append(f"cosine_standardized: {cos['cosine_standardized_note']}")
        out.update({k: v for k, v in cos.items() if k in FIELDS})
    out["note"] = "; ".join(notes) if notes else None
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.6f}" for v in value) + "]"
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def register(app: typer.Typer) -> None:
    @app.command("similarity")
    @user_errors
    def similarity(
        x_path: Path = typer.Argument(..., metavar="X.npy", help="Base activations, an (n, d_x) .npy array."),
        y_path: Path = typer.Argument(..., metavar="Y.npy", help="Tuned activations, an (n, d_y) .npy array."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON to stdout."),
        rbf_sigma_factor: float = typer.Option(0.8, "--rbf-sigma-factor",
                                               help="RBF σ = factor × median pairwise distance (per matrix)."),
        max_rbf_n: int = typer.Option(4096, "--max-rbf-n", help="Skip RBF CKA (n×n matrices) above this n."),
    ):
        """CKA (linear, debiased linear, RBF) and cosine similarity of two (n, d) activation arrays.

        Rows must be the same examples in both files. Read debiased linear CKA when d is large relative to n (the biased one is inflated). Cosine only when the widths match."""  # noqa: E501
        X = load_activations(x_path)
        Y = load_activations(y_path)
        report = similarity_report(X, Y, (str(x_path), str(y_path)), rbf_sigma_factor, max_rbf_n)
        if as_json:
            print_json(report)
            return
        for key in FIELDS:
            typer.echo(f"{key:<26} {_fmt(report[key])}")
        if report["note"]:
            typer.echo(f"note: {report['note']}")
