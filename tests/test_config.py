import pytest

from lorascope.config import config_hash, load_config, parse_overrides
from lorascope.config.schema import StudyConfig
from lorascope.errors import ConfigError
from tests.conftest import REPO


def test_shipped_configs_validate():
    study = load_config(REPO / "configs" / "study.yaml")
    assert study.model.name_or_path == "princeton-nlp/Sheared-LLaMA-1.3B"
    assert study.seeds.replicates == [0, 1, 2, 3, 4]
    assert study.ft.lr_grid == [1e-5, 2e-5, 5e-5]
    assert study.lora.lr_grid == [1e-4, 2e-4, 5e-4, 1e-3]
    assert (study.lora.r, study.lora.alpha, study.lora.dropout) == (8, 16, 0.05)
    assert study.train.epochs == {"mrpc": 3, "squad_v2": 2}
    demo = load_config(REPO / "configs" / "demo.yaml")
    assert "stories260k" in demo.model.name_or_path and demo.data.max_length == 512


def test_yaml_headers_show_command():
    for name in ("demo.yaml", "study.yaml"):
        head = (REPO / "configs" / name).read_text().splitlines()[:8]
        assert any("lorascope run configs/" + name in line for line in head), name


def test_overrides_dotted_and_typed(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.max_length=128", "seeds.replicates=[3, 4]",
                                                       "train.epochs.mrpc=1", "lora.preset=lora_qv"])
    assert cfg.data.max_length == 128 and cfg.seeds.replicates == [3, 4]
    assert cfg.train.epochs["mrpc"] == 1 and cfg.lora.preset == "lora_qv"


@pytest.mark.parametrize("override, needle", [
    ("data.max_lenght=3", "data.max_lenght"),
    ("nosuch.key=1", "nosuch"),
    ("data.max_length=abc", "data.max_length"),
    ("lora.preset=everything", "lora.preset"),
    ("train.epochs.cola=1", "train.epochs.cola"),
    ("justakey", "KEY=VALUE"),
    ("data.max_length.x=1", "data.max_length"),
])
def test_bad_overrides_name_key_and_file(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "demo.yaml", [override])
    assert needle in str(err.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name_or_pth: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "bad.yaml" in str(err.value) and "model.name_or_pth" in str(err.value)


def test_bad_type_and_malformed_yaml(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("train:\n  micro_batch: many\n")
    with pytest.raises(ConfigError, match=r"t\.yaml.*\n.*train\.micro_batch"):
        load_config(bad)
    broken = tmp_path / "b.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="b.yaml.*not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="multiple of micro_batch"):
        load_config(None, ["train.effective_batch=16", "train.micro_batch=5"])


def test_hash_stable_and_key_order_independent(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("name: x\ndata:\n  max_length: 64\n  probe_size: 10\n")
    b.write_text("data:\n  probe_size: 10\n  max_length: 64\nname: x\n")
    assert config_hash(load_config(a)) == config_hash(load_config(b))
    assert config_hash(load_config(a)) != config_hash(load_config(a, ["data.max_length=65"]))
    # dict key order inside a section too
    assert config_hash({"x": 1, "y": {"b": 2, "a": 1}}) == config_hash({"y": {"a": 1, "b": 2}, "x": 1})


def test_defaults_are_the_study():
    cfg = StudyConfig()
    assert cfg.data.max_length == 1024 and cfg.train.effective_batch == 16 and cfg.train.warmup_ratio == 0.06
    assert cfg.tracking.project == "NLP" and cfg.tracking.entity == "galavny-tel-aviv-university"


def test_parse_overrides_values():
    assert parse_overrides(["a.b=1", "c=[1,2]", "d=true", "e=x y", "f="]) == [
        ("a.b", 1), ("c", [1, 2]), ("d", True), ("e", "x y"), ("f", None)]


def test_result_hash_ignores_execution_keys():
    from lorascope.config import result_hash

    a = load_config(REPO / "configs" / "demo.yaml")
    b = load_config(REPO / "configs" / "demo.yaml", ["train.strategy=ddp", "tracking.wandb=offline", "output.root=x",
                                                     "train.checkpoint_every=3", "train.compile=false"])
    assert result_hash(a) == result_hash(b) and config_hash(a) != config_hash(b)
    assert result_hash(a) != result_hash(load_config(REPO / "configs" / "demo.yaml", ["train.grad_clip=0.5"]))


def test_analysis_sections_do_not_change_the_training_identity():
    from lorascope.config import result_hash, section_hash

    base = load_config(None, [])
    changed = load_config(None, ["serve.requests=5", "drift.batch_size=3", "stats.equivalence_margin=2",
                                 "executor.kind=ray"])
    assert result_hash(base) == result_hash(changed)
    assert section_hash(base, "drift") != section_hash(changed, "drift")
    assert section_hash(base, "serve") != section_hash(changed, "serve")
    assert section_hash(base, "drift") != section_hash(load_config(None, ["ft.lr_grid=[1e-5]"]), "drift")


# Issue 13 item 3: each of these was silent nonsense or a traceback; each must be a ConfigError naming the key.
@pytest.mark.parametrize("override, needle", [
    ("train.epochs.mrpc=-1", "train.epochs.mrpc"),        # was a "completed" run with 0 steps
    ("train.epochs.squad_v2=0", "train.epochs.squad_v2"),
    ("ft.lr_grid=[]", "ft.lr_grid"),                       # was an IndexError in hpo
    ("lora.lr_grid=[0]", "lora.lr_grid.0"),
    ("ft.lr_grid=[-1e-3]", "ft.lr_grid.0"),
    ("ft.lr_grid=[1e-3, 1e-3]", "ft.lr_grid"),
    ("sanity.lr.ft=-1", "sanity.lr.ft"),
    ("data.subsample.train=-3", "data.subsample.train"),
    ("data.subsample.test=0", "data.subsample.test"),
    ("stats.confidence=.nan", "stats.confidence"),         # was a JSON traceback when the manifest was written
    ("ft.weight_decay=.inf", "ft.weight_decay"),
    ("serve.batch_sizes=[]", "serve.batch_sizes"),
    ("serve.batch_sizes=[0,-1]", "serve.batch_sizes.0"),
    ("serve.scenarios=[base, multi-x]", "serve.scenarios"),
    ("serve.scenarios=[multi-1]", "serve.scenarios"),
    ("lora.alpha=-2", "lora.alpha"),
    ("lora.weight_decay=-0.1", "lora.weight_decay"),
    ("ft.weight_decay=-0.01", "ft.weight_decay"),
    ("stats.drift_reduction_threshold=1.5", "stats.drift_reduction_threshold"),
    ("stats.confidence=1", "stats.confidence"),
    ("stats.overhead_threshold=0", "stats.overhead_threshold"),
    ("train.micro_batch=true", "train.micro_batch"),       # was silently 1
    ("train.effective_batch='16'", "train.effective_batch"),
    ("seeds.replicates=[-1]", "seeds.replicates.0"),
    ("train.methods=[]", "train.methods"),
    ("baselines.percentiles=[97.5, 2.5]", "baselines.percentiles"),
])
def test_out_of_range_values_are_config_errors(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "demo.yaml", [override])
    text = str(err.value)
    assert needle in text and "demo.yaml" in text
    assert "[type=" not in text  # pydantic's raw error text is not shown


def test_duplicate_key_and_binary_file_are_config_errors(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  micro_batch: 4\n  effective_batch: 16\n  micro_batch: 8\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml.*duplicate key 'micro_batch' \(first at line 2\)"):
        load_config(dup)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"bin\.yaml.*not a UTF-8 text file"):
        load_config(binary)
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"name: x\x00\n")
    with pytest.raises(ConfigError, match="NUL"):
        load_config(nul)


def test_exponent_floats_are_floats_as_in_yaml_1_2(tmp_path):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1); a strict schema would reject it — read as a number."""
    f = tmp_path / "lr.yaml"
    f.write_text("ft:\n  lr_grid: [1e-5, 2E-5, 5.0e-5]\nlora:\n  alpha: 1e1\n")
    cfg = load_config(f)
    assert cfg.ft.lr_grid == [1e-5, 2e-5, 5e-5] and cfg.lora.alpha == 10.0
    assert parse_overrides(["x=1e-3", "y=10", "z=abc"]) == [("x", 1e-3), ("y", 10), ("z", "abc")]


def test_config_error_shows_values_not_python_reprs():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["serve.batch_sizes=[0]", "ft.lr_grid=[1e-3, 1e-3]"])
    assert "(got [0.001, 0.001])" in str(err.value) and "(got 0)" in str(err.value)


def test_bad_learning_rate_on_the_command_line(tmp_path):
    from lorascope.errors import LorascopeError
    from lorascope.train.run import RunSpec
    from lorascope.train.sanity import run_sanity

    cfg = load_config(None, [])
    for lr in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(LorascopeError, match="learning rate"):
            RunSpec("mrpc", "ft", lr)
        # the sanity gate refuses it with the same check, naming the gate, before touching its folder
        with pytest.raises(LorascopeError, match="^sanity gate mrpc/ft: learning rate"):
            run_sanity(cfg, "mrpc", "ft", tmp_path / "sanity", lr=lr)
    assert not (tmp_path / "sanity").exists()
