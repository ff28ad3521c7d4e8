"""The prototype mask of fused_lora/mask_proto.py under TRITON_INTERPRET=1: philox.py's masks bit for bit (including
a tie, which needs the second draw), and its shrink kernel equal to kernels.shrink (same masks, same arithmetic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.test_fused_lora import _seed_with_tie

CASES = """
import json, sys
sys.path.insert(0, "tests")
import triton_interpreter_cases  # noqa: F401  (patches the interpreter's loop bounds, as for kernels.py's tests)
import torch
from lorascope.train.fused_lora import kernels, mask_proto, philox
tie_seed = int(sys.argv[1])
masks = []
for M, K, p, seed in ((40, 72, 0.05, 12345), (33, 172, 0.3, 2**61 + 7), (64, 128, 0.05, tie_seed)):
    got = mask_proto.drop_mask_v2(torch.tensor([seed]), M, K, p)
    masks.append(bool(torch.equal(got, ~philox.keep_mask(seed, M, K, p))))
g = torch.Generator().manual_seed(0)
x = torch.randn(48, 128, generator=g)
a = [torch.randn(8, 128, generator=g) for _ in range(3)]
seeds = torch.tensor([tie_seed, 7, 2**40 + 3])
blocks = kernels.Blocks(shrink_bm=16, shrink_bk=64)
args = dict(r=8, coef=2.0 / 0.95, p=0.05, copy_x=True, blocks=blocks)
same = bool(torch.equal(mask_proto.shrink_v2(x, a, seeds, **args), kernels.shrink(x, a, seeds, **args)))
print(json.dumps({"masks": masks, "shrink_equal": same}))
"""


def test_prototype_mask_and_shrink_equal_the_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    tie = _seed_with_tie(0.05, 64, 128)
    out = subprocess.run([sys.executable, "-c", CASES, str(tie)], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["masks"] == [True, True, True], res
    # same masks, same fp32 dot in the same order (DOT_F32 under the interpreter): bit-identical outputs
    assert res["shrink_equal"], res
