import json

import pytest

from lorascope.config import load_config
from lorascope.io import atomic_write_json
from lorascope.manifest import MANIFEST, is_completed, read_manifest, run_manifest


def test_manifest_records_section13_fields(tmp_path):
    cfg = load_config(None, ["name=m"])
    with run_manifest(tmp_path, cfg, command="unit", data_files=[{"path": "x", "sha256": "0" * 64, "bytes": 1}]) as m:
        running = json.loads((tmp_path / MANIFEST).read_text())
        assert running["status"] == "running"
        m["extra_key"] = 1
    man = json.loads((tmp_path / MANIFEST).read_text())
    assert man["status"] == "completed" and is_completed(tmp_path)
    for key in (
        "config",
        "config_hash",
        "seeds",
        "packages",
        "python",
        "hardware",
        "git",
        "data_files",
        "started",
        "finished",
    ):
        assert man[key] not in (None, {}, []) or key == "git", key
    assert man["seeds"]["bootstrap"] == 0 and "torch" in man["packages"] and man["extra_key"] == 1
    assert "cpu" in man["hardware"] and set(man["git"]) == {"commit", "dirty"}


def test_failed_run_is_marked_failed(tmp_path):
    with pytest.raises(RuntimeError):
        with run_manifest(tmp_path, None, command="unit"):
            raise RuntimeError("boom")
    man = json.loads((tmp_path / MANIFEST).read_text())
    assert man["status"] == "failed" and "boom" in man["error"] and not is_completed(tmp_path)


def test_read_manifest_is_none_for_an_absent_or_corrupt_manifest(tmp_path):
    assert read_manifest(tmp_path) is None and not is_completed(tmp_path)
    (tmp_path / MANIFEST).write_text('{"status": "compl')  # a write cut short
    assert read_manifest(tmp_path) is None and not is_completed(tmp_path)
    with run_manifest(tmp_path, None, command="unit"):
        assert read_manifest(tmp_path)["status"] == "running"
    assert read_manifest(tmp_path)["status"] == "completed" and is_completed(tmp_path)


def test_atomic_json_refuses_nan_and_leaves_nothing(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(ValueError, match=r"\$\.a\.b\[1\]"):
        atomic_write_json(path, {"a": {"b": [1.0, float("nan")]}})
    assert not path.exists() and not list(tmp_path.iterdir())
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
