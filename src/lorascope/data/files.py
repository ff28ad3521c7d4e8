"""Small file helpers: hashing (for manifests, §13) and reading text with a clear error."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lorascope.data.types import SourceFile
from lorascope.errors import DataError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_file(path: str | Path) -> SourceFile:
    path = Path(path)
    return SourceFile(path=str(path), sha256=sha256_file(path), bytes=path.stat().st_size)


def read_text(path: Path) -> str:
    """UTF-8 text; a BOM (GLUE files have one) is dropped. Missing or undecodable files are DataErrors."""
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 ({exc.reason})", path=str(path), row=f"line {line}") from None
