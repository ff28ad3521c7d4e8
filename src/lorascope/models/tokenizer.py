"""Tokenizer loading with pad handling and errors that say what is wrong with the folder."""

from __future__ import annotations

from pathlib import Path

from lorascope.errors import LorascopeError


class ModelLoadError(LorascopeError):
    """A model or tokenizer folder/id is missing or unusable."""


def _looks_local(name_or_path: str) -> bool:
    return name_or_path.startswith((".", "/", "~")) or Path(name_or_path).expanduser().exists()


def load_tokenizer(name_or_path: str, revision: str | None = None, eos_token: str | None = None):
    """AutoTokenizer with right padding and a pad token (pad = unk, else eos, as Llama models lack one).

    ``eos_token`` replaces the end-of-target token (see ``ModelConfig.eos_token``); it must be in the vocabulary.
    """
    from transformers import AutoTokenizer

    if _looks_local(name_or_path):
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"model folder not found: {folder}")
        if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise ModelLoadError(
                f"{folder}: no tokenizer files (tokenizer.json / tokenizer.model / tokenizer_config.json)"
            )
    try:
        tok = AutoTokenizer.from_pretrained(
            str(Path(name_or_path).expanduser()) if _looks_local(name_or_path) else name_or_path, revision=revision
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load tokenizer {name_or_path!r}: {exc}") from None
    tok.padding_side = "right"
    if eos_token is not None:
        if tok.convert_tokens_to_ids(eos_token) in (None, tok.unk_token_id) and eos_token != tok.unk_token:
            raise ModelLoadError(f"eos_token {eos_token!r} is not in the vocabulary of {name_or_path!r}")
        tok.eos_token = eos_token
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    if tok.eos_token_id is None:
        raise ModelLoadError(f"tokenizer {name_or_path!r} has no EOS token; targets end with EOS (§4)")
    return tok


def tokenizer_for(model_cfg):
    """The tokenizer of a ``ModelConfig`` (its name or folder, revision and end-of-target token)."""
    return load_tokenizer(model_cfg.name_or_path, model_cfg.revision, model_cfg.eos_token)
