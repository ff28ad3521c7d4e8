"""Data loading on the real mirror, the hub converters on local Datasets, and every kind of corruption."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lorascope.config.schema import DataConfig
from lorascope.data import mrpc, squad
from lorascope.data.load import load_task
from lorascope.errors import DataError

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def test_mrpc_official_sizes_and_balance(mrpc_data):
    assert mrpc_data.split_scheme == "official" and mrpc_data.source == "mirror"
    assert mrpc_data.sizes() == {"train": 3668, "validation": 408, "test": 1725}
    pos = {s: sum(e.label for e in mrpc_data[s]) for s in ("train", "validation", "test")}
    assert pos == {"train": 2474, "validation": 279, "test": 1147}
    assert len(mrpc_data.files) == 3 and all(len(f.sha256) == 64 for f in mrpc_data.files)


def test_mrpc_train_dev_reconstruct_raw_train(data_dir):
    """GLUE train ∪ dev must be exactly the MSRP train file (an independent check of the mirror)."""
    raw = mrpc.read_mrpc_tsv(data_dir / "mrpc" / "msr_paraphrase_train.txt")
    glue = mrpc.read_mrpc_tsv(data_dir / "mrpc" / "train.tsv") + mrpc.read_mrpc_tsv(data_dir / "mrpc" / "dev.tsv")
    assert sorted((e.id, e.label) for e in raw) == sorted((e.id, e.label) for e in glue)


def test_squad_dev_only_split(squad_data):
    d = squad_data
    assert d.split_scheme == "dev-only" and any("dev-only" in n for n in d.notes)
    titles = {s: {e.title for e in d[s]} for s in ("train", "validation", "test")}
    assert [len(titles[s]) for s in ("train", "validation", "test")] == [25, 5, 5]
    assert not (
        titles["train"] & titles["validation"]
        or titles["train"] & titles["test"]
        or titles["validation"] & titles["test"]
    )
    assert sum(d.sizes().values()) == 11873
    assert d.describe()["split_scheme"] == "dev-only"


def test_squad_split_is_seeded(data_dir):
    cfg = DataConfig(source="mirror", data_dir=str(data_dir))
    a, b, c = (load_task("squad_v2", cfg, seed=s) for s in (0, 0, 1))
    assert [e.id for e in a["test"]] == [e.id for e in b["test"]]
    assert {e.title for e in a["test"]} != {e.title for e in c["test"]}


def test_squad_official_scheme_when_train_present(tmp_path, data_dir):
    """A mirror with train-v2.0.json gets the official scheme: validation = 5% of train articles."""
    dev = json.loads((data_dir / "squad_v2" / "dev-v2.0.explorer-derived.json").read_text())
    folder = tmp_path / "squad_v2"
    folder.mkdir()
    train = {"version": "v2.0", "data": dev["data"][:20]}
    (folder / "train-v2.0.json").write_text(json.dumps(train))
    (folder / "dev-v2.0.json").write_text(json.dumps({"version": "v2.0", "data": dev["data"][20:]}))
    d = load_task("squad_v2", DataConfig(source="mirror", data_dir=str(tmp_path)), seed=0)
    assert d.split_scheme == "official" and not d.notes
    assert len({e.title for e in d["validation"]}) == 1  # ceil(5% of 20)
    assert {e.title for e in d["test"]} == {a["title"] for a in dev["data"][20:]}


def test_subsample_is_seeded_and_recorded(data_dir):
    cfg = DataConfig(source="mirror", data_dir=str(data_dir), subsample={"train": 50, "test": 20})
    a = load_task("mrpc", cfg, seed=0, apply_subsample=True)
    b = load_task("mrpc", cfg, seed=0, apply_subsample=True)
    assert a.sizes() == {"train": 50, "validation": 408, "test": 20}
    assert [e.id for e in a["train"]] == [e.id for e in b["train"]]
    assert a.composition["full_sizes"]["train"] == 3668 and any("subsampled" in n for n in a.notes)


def test_a_splits_draw_does_not_depend_on_another_splits_cap(data_dir):
    def draw(train_cap):
        cfg = DataConfig(source="mirror", data_dir=str(data_dir), subsample={"train": train_cap, "test": 20})
        return load_task("mrpc", cfg, seed=0, apply_subsample=True)

    a, b = draw(50), draw(400)
    assert [e.id for e in a["test"]] == [e.id for e in b["test"]]
    # train keeps the stream all splits once shared, so training sets recorded before the change draw the same
    full = load_task("mrpc", DataConfig(source="mirror", data_dir=str(data_dir)), seed=0)
    keep = np.sort(np.random.default_rng([0, 7]).choice(len(full["train"]), size=50, replace=False))
    assert [e.id for e in a["train"]] == [full["train"][i].id for i in keep]


def test_per_task_caps_replace_the_shared_ones_split_by_split(data_dir):
    shared = {"train": 50, "validation": 8, "test": 20}
    cfg = DataConfig(source="mirror", data_dir=str(data_dir), subsample=shared,
                     subsample_by_task={"mrpc": {"train": 30, "test": None}, "squad_v2": {"train": 5}})
    assert cfg.subsample_caps("mrpc") == {"train": 30, "validation": 8, "test": None}
    assert cfg.subsample_caps("squad_v2") == {"train": 5, "validation": 8, "test": 20}
    a = load_task("mrpc", cfg, seed=0, apply_subsample=True)
    assert a.sizes() == {"train": 30, "validation": 8, "test": 1725}  # a null per-task cap: that split whole
    assert a.composition["subsample_caps"] == {"train": 30, "validation": 8}
    # The same draw as the equivalent shared caps: a task's sample depends only on the caps that apply to it.
    b = load_task("mrpc", DataConfig(source="mirror", data_dir=str(data_dir), subsample={"train": 30, "validation": 8}),
                  seed=0, apply_subsample=True)
    assert [e.id for e in a["train"]] == [e.id for e in b["train"]]
    assert [e.id for e in a["validation"]] == [e.id for e in b["validation"]]


def test_plan_sizes_use_the_per_task_caps(data_dir, model_dir):
    from lorascope.config.schema import StudyConfig
    from lorascope.study.plan import CostModel

    data = {"source": "mirror", "data_dir": str(data_dir), "subsample": {"train": 50, "test": 20},
            "subsample_by_task": {"mrpc": {"test": None}}}
    cost = CostModel(StudyConfig.model_validate({"model": {"name_or_path": str(model_dir)}, "data": data}))
    assert (cost.size("mrpc", "train"), cost.size("mrpc", "test")) == (50, 1725)
    assert (cost.size("squad_v2", "train"), cost.size("squad_v2", "test")) == (50, 20)


def test_hub_converters_on_local_datasets(mrpc_data, squad_data, data_dir):
    """The hub path, fed with local ``datasets.Dataset`` objects shaped like the hub's."""
    datasets = pytest.importorskip("datasets")
    glue = {
        s: datasets.Dataset.from_list(
            [
                {"sentence1": e.sentence1, "sentence2": e.sentence2, "label": e.label, "idx": i}
                for i, e in enumerate(mrpc_data[s])
            ]
        )
        for s in ("train", "validation")
    }
    d = mrpc.load_mrpc_hub(glue, data_dir)
    assert d.source == "hub" and d.sizes() == mrpc_data.sizes()
    with pytest.raises(DataError, match="test labels"):
        mrpc.load_mrpc_hub(glue, None)
    exs = squad_data["train"][:300]
    recs = datasets.Dataset.from_list(
        [
            {
                "id": e.id,
                "title": e.title,
                "context": e.context,
                "question": e.question,
                "answers": {"text": list(e.answers), "answer_start": list(e.answer_starts)},
            }
            for e in exs
        ]
    )
    s = squad.load_squad_hub({"train": recs, "validation": recs}, 0.05, seed=0)
    assert s.split_scheme == "official" and s.sizes()["test"] == 300
    assert s.sizes()["train"] + s.sizes()["validation"] == 300


# ---- corruption: every error names the file and the row ------------------------------------------


def _mirror_with(tmp_path: Path, data_dir: Path, name: str, content: str) -> Path:
    root = tmp_path / "mirror"
    shutil.copytree(data_dir / "mrpc", root / "mrpc")
    (root / "mrpc" / name).chmod(0o644)
    (root / "mrpc" / name).write_text(content, encoding="utf-8")
    return root


@pytest.mark.parametrize(
    "content, needle",
    [
        ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\n1\t1\t2\ta\n", "missing column(s) #2 String;"),
        (MRPC_HEADER + "1\t1\t2\ta\tb\n2\t3\t4\tc\td\n", "line 3: bad label '2'"),
        (MRPC_HEADER + "1\t1\t2\ta\tb\n0\t3\t4\tc\n", "line 3: expected 5 tab-separated fields, got 4"),
        (MRPC_HEADER + "1\t1\t2\ta\t \n", "line 2: empty sentence"),
        ("", "empty file"),
        # a repeated row: its id would collide in every per-example comparison (McNemar aligns by id)
        (MRPC_HEADER + "1\t1\t2\ta\tb\n0\t3\t4\tc\td\n1\t1\t2\ta\tb\n", "line 4: duplicate pair 1-2 (first at line 2)"),
    ],
)
def test_mrpc_corruptions(tmp_path, data_dir, content, needle):
    root = _mirror_with(tmp_path, data_dir, "dev.tsv", content)
    with pytest.raises(DataError) as err:
        load_task("mrpc", DataConfig(source="mirror", data_dir=str(root)), seed=0)
    assert "dev.tsv" in str(err.value) and needle in str(err.value)


def test_mrpc_missing_file_and_bad_encoding(tmp_path, data_dir):
    root = _mirror_with(tmp_path, data_dir, "train.tsv", "x")
    (root / "mrpc" / "train.tsv").unlink()
    with pytest.raises(DataError, match="train.tsv: file not found"):
        load_task("mrpc", DataConfig(source="mirror", data_dir=str(root)), seed=0)
    (root / "mrpc" / "train.tsv").write_bytes(MRPC_HEADER.encode() + b"1\t1\t2\t\xff\xfe\tb\n")
    with pytest.raises(DataError, match="train.tsv, row line 2: not valid UTF-8"):
        load_task("mrpc", DataConfig(source="mirror", data_dir=str(root)), seed=0)


def _squad_file(tmp_path: Path, tree) -> Path:
    folder = tmp_path / "squad_v2"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dev-v2.0.json"
    path.write_text(tree if isinstance(tree, str) else json.dumps(tree))
    return path


def _tiny_squad(answer_start=4, text="cat"):
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "The cat sat.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Who sat?",
                                "answers": [{"text": text, "answer_start": answer_start}],
                                "is_impossible": False,
                            },
                            {"id": "q2", "question": "Who stood?", "answers": [], "is_impossible": True},
                        ],
                    }
                ],
            }
        ],
    }


def test_squad_parses_tiny():
    exs = squad.parse_squad_json(_tiny_squad(), "x.json")
    assert [e.is_impossible for e in exs] == [False, True] and exs[0].answers == ("cat",)


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (
            lambda t: t["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=5),
            "data[0].paragraphs[0].qas[0] (id=q1): answers[0].answer_start=5 does not point at its text 'cat'",
        ),
        (
            lambda t: t["data"][0]["paragraphs"][0]["qas"][0].pop("question"),
            "data[0].paragraphs[0].qas[0]: missing field 'question'",
        ),
        (
            lambda t: t["data"][0]["paragraphs"][0].pop("context"),
            "data[0].paragraphs[0]: paragraph needs a non-empty 'context'",
        ),
        (lambda t: t["data"][0]["paragraphs"][0]["qas"][1].update(id="q1"), "duplicate question id 'q1'"),
        (lambda t: t.pop("data"), "expected a JSON object with a 'data' list"),
        (
            lambda t: t["data"][0]["paragraphs"][0]["qas"][1].update(answers=[{"text": "cat", "answer_start": 4}]),
            "is_impossible is true but answers are given",
        ),
        (
            lambda t: t["data"][0]["paragraphs"][0]["qas"][1].update(answers=None),
            "qas[1] (id=q2): field 'answers' must be a list (unanswerable: []), got NoneType",
        ),
        (
            lambda t: t["data"][0]["paragraphs"][0]["qas"][0].update(question="  "),
            "qas[0] (id=q1): field 'question' must be a non-empty string",
        ),
        (
            lambda t: t["data"][0]["paragraphs"][0]["qas"][0].update(id=""),
            "qas[0]: field 'id' must be a non-empty string",
        ),
        (
            lambda t: t["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(text="", answer_start=0),
            "answers[0].text must be a non-empty string",
        ),
        (lambda t: t["data"][0]["paragraphs"][0].update(context=""), "paragraph needs a non-empty 'context'"),
    ],
)
def test_squad_corruptions(tmp_path, mutate, needle):
    tree = _tiny_squad()
    mutate(tree)
    path = _squad_file(tmp_path, tree)
    with pytest.raises(DataError) as err:
        squad.read_squad_json(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_squad_malformed_json_names_line(tmp_path):
    path = _squad_file(tmp_path, '{"data": [\n  {"title": "T",\n  oops}\n]}')
    with pytest.raises(DataError, match=r"dev-v2.0.json, row line 3 col 3: malformed JSON"):
        squad.read_squad_json(path)


def test_unknown_task_and_missing_dirs(tmp_path):
    with pytest.raises(DataError, match="unknown task"):
        load_task("cola", DataConfig(source="mirror", data_dir=str(tmp_path)), seed=0)
    with pytest.raises(DataError, match="data directory not found"):
        load_task("mrpc", DataConfig(source="mirror", data_dir=str(tmp_path / "nope")), seed=0)
    with pytest.raises(DataError, match="no SQuAD v2 dev file"):
        load_task("squad_v2", DataConfig(source="mirror", data_dir=str(tmp_path)), seed=0)


def test_env_var_data_dir(monkeypatch, data_dir):
    monkeypatch.setenv("LORASCOPE_DATA_DIR", str(data_dir))
    assert load_task("mrpc", DataConfig(source="mirror"), seed=0).sizes()["test"] == 1725
