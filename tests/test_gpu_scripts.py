"""Every GPU script in benchmarks/ says whether it needs the package bundle (benchmarks/gpu_site.sh, docs/gpu.md),
and the claim holds: with pydantic, optuna and ray made unimportable, the lorascope modules of a "not needed" script
import, and at least one of a "needed" script's does not."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))
BLOCKED_IMPORT = """
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("pydantic", "optuna", "ray"):
            raise ImportError("not on the GPU image: " + name)
sys.meta_path.insert(0, Block())
failed = []
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except ImportError as e:
        failed.append(m)
print(",".join(failed))
"""


def _claim(text: str) -> str:
    doc = text.split('"""')[1]
    m = re.search(r"Bundle \(benchmarks/gpu_site\.sh, docs/gpu\.md\):\s+(NEEDED|NOT needed)", doc)
    assert m, "the docstring must say 'Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NEEDED' or '... NOT needed'"
    return m.group(1)


def _modules(script) -> list[str]:
    return sorted(set(re.findall(r"^\s*(?:from|import) (lorascope[\w.]*)", script.read_text(), flags=re.M)))


@pytest.fixture(scope="module")
def unimportable() -> set[str]:
    """The lorascope modules (of all scripts) that fail to import without pydantic/optuna/ray: one process, so torch
    is imported once. Failed imports leave nothing in sys.modules, so the order of the attempts does not matter."""
    modules = sorted({m for s in SCRIPTS for m in _modules(s)})
    res = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, *modules], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return {m for m in res.stdout.strip().split(",") if m}


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_gpu_script_states_its_bundle_need_and_it_holds(script, unimportable):
    claim = _claim(script.read_text())
    modules = _modules(script)
    # a helper that imports nothing from lorascope needs no bundle (and cannot claim to)
    assert modules or claim == "NOT needed", f"{script.name} imports nothing from lorascope yet claims the bundle"
    failed = [m for m in modules if m in unimportable]
    if claim == "NOT needed":
        assert not failed, f"{script.name} says the bundle is not needed, but {failed} need it"
    else:
        assert failed, f"{script.name} says the bundle is needed, but all of {modules} import without it"
