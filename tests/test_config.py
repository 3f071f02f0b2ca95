import pytest

from asr.config import ConfigError, config_from_dict, config_to_dict, load_config


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_size: 64\ntrain:\n  epochs: 3\n")
    config = load_config(path, ["train.epochs=5", "optim.lr=0.01"])
    assert config.model.hidden_size == 64
    assert config.train.epochs == 5
    assert config.optim.lr == 0.01
    assert config.model.num_layers == 3  # schema default kept


@pytest.mark.parametrize("override,message", [("model.hidden_sise=3", "hidden_sise"), ("train.epochs=many", "many"), ("model", "section.key=value")])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(path)


def test_dict_round_trip():
    config = load_config(None, ["model.cell=gru", "optim.betas=[0.8,0.9]"])
    assert config_from_dict(config_to_dict(config)) == config
