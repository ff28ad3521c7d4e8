"""Shared fixtures. The suite runs offline: the hub is never contacted, data come from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def model_dir(shared_dir: Path) -> Path:
    return shared_dir / "models" / "stories260k"


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):
    from lorascope.models.tokenizer import load_tokenizer

    return load_tokenizer(str(model_dir))


@pytest.fixture(scope="session")
def demo_config(data_dir: Path, model_dir: Path):
    from lorascope.config import load_config

    return load_config(REPO / "configs" / "demo.yaml", [f"data.data_dir={data_dir}", f"model.name_or_path={model_dir}"])


@pytest.fixture(scope="session")
def mrpc_data(demo_config):
    from lorascope.data.load import load_task

    return load_task("mrpc", demo_config.data, seed=0)


@pytest.fixture(scope="session")
def squad_data(demo_config):
    from lorascope.data.load import load_task

    return load_task("squad_v2", demo_config.data, seed=0)


# ---- tolerances -----------------------------------------------------------------------------------------
# Float32 results differ between CPUs (BLAS kernels pick other blockings, so sums run in another order) and
# between batch shapes / rank counts on one CPU. Every float32 comparison is therefore relative to the scale of
# the values compared, in units of float32's machine epsilon, with the reason at the call site.
EPS32 = 2.0**-23  # torch.finfo(torch.float32).eps


def assert_close_to_scale(got, want, *, ulps: float, floor: float = 0.0, what: str = "") -> None:
    """``|got − want| ≤ ulps · eps32 · max|want| (+ floor)`` elementwise: an error bound that scales with the
    tensor's magnitude (what rounding produces), not a fixed absolute number (which fails on large values and
    proves nothing on small ones)."""
    import torch

    got, want = torch.as_tensor(got), torch.as_tensor(want)
    atol = ulps * EPS32 * float(want.abs().max()) + floor
    torch.testing.assert_close(got, want, rtol=0.0, atol=atol, msg=lambda m: f"{what}: {m} (atol {atol:.3g})")
