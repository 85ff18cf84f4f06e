from pathlib import Path

import pytest

from pixellm.config import Config, ConfigError, load_config, parse_override

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_there_are_shipped_configs():
    assert {"tiny_synthetic.yaml", "pixellm_7b.yaml", "pixellm_13b.yaml"} <= {p.name for p in CONFIGS}


def test_unknown_key_is_an_error_naming_the_dotted_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.lrr"):
        load_config(f)


def test_wrong_type_is_an_error_naming_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  batch_size: two\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size.*int"):
        load_config(f)


def test_literal_choices_are_checked():
    with pytest.raises(ConfigError, match=r"model\.preset"):
        load_config(None, ["model.preset=pixellm-70b"])


def test_base_inheritance_one_level_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 1.0e-3\n  batch_size: 4\nmodel:\n  preset: tiny\n  decoder_layers: [-2, 1]\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  batch_size: 8\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.lr=1e-4", "model.lora.r=16"])
    assert cfg.train.batch_size == 8  # child wins over base
    assert cfg.train.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string: still a float
    assert cfg.model.lora.r == 16
    assert cfg.model.preset == "tiny"


def test_base_of_base_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  lr: 0.1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="one level"):
        load_config(tmp_path / "c.yaml")


def test_validation_in_post_init_names_the_problem():
    with pytest.raises(ConfigError, match="decoder_layers"):
        load_config(None, ["model.decoder_layers=[-2]"])
    with pytest.raises(ConfigError, match="lora.r"):
        load_config(None, ["model.lora.r=0"])


def test_override_parsing():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")
