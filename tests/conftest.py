"""Shared fixtures. The suite runs offline: the hub is never contacted, data come from ../shared."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# The fused LoRA kernel (serve/lora_kernel.py) is tested on CPU under Triton's interpreter, which Triton reads
# when a kernel is defined — before transformers/peft import triton — so it is set here, unless a GPU exists
# (or vLLM is installed: its own venv runs only its own tests, and its Triton kernels stay untouched).
if not any(Path("/dev").glob("nvidia[0-9]*")) and importlib.util.find_spec("vllm") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def triton_device():
    """Where Triton kernels run in tests: the GPU, or the CPU under the interpreter. Triton 3.6's interpreter
    turns loop bounds into ints with ``int(<1-element array>)``, an error since numpy 2.4
    (triton-lang/triton#9171, fixed upstream by squeezing first); the same fix is patched in for the session."""
    import torch

    if torch.cuda.is_available():
        yield torch.device("cuda")
        return
    from lorascope.serve import lora_kernel

    if not lora_kernel.interpreting():
        pytest.fail("no GPU and TRITON_INTERPRET is not 1: the Triton kernel cannot run here")
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patched
    yield torch.device("cpu")
    interpreter._patch_lang_tensor = original


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


def run_stage(cfg, root, stage: str, tasks=None):
    """Run one stage's jobs of the study on a results folder, as ``lorascope <stage> DIR`` does."""
    from lorascope.study.engine import run_stage_jobs

    return run_stage_jobs(cfg, root, stage, tasks=tasks)
