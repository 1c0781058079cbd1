from dataclasses import dataclass, field

import pytest

from common.core.config import dumps_toml, load_config, parse_override, save_config
from common.core.errors import UserError
from common.engine.optim import OptimConfig
from common.engine.trainer import TrainerConfig


@dataclass
class ModelCfg:
    hidden: list[int] = field(default_factory=lambda: [16, 8])
    dropout: float = 0.0
    name: str = "mlp"


SCHEMA = {"model": ModelCfg, "optim": OptimConfig, "trainer": TrainerConfig}


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = 0.5\nname = 'sgd'\n[model]\nhidden = [4]\n")
    cfg = load_config(SCHEMA, path, ["optim.lr=1e-3", "model.dropout=0.25", "model.name=wide",
                                     "trainer.epochs=7", "model.hidden=[1, 2, 3]"])
    assert cfg["optim"].lr == 1e-3 and cfg["optim"].name == "sgd"
    assert cfg["model"].dropout == 0.25 and cfg["model"].name == "wide"
    assert cfg["model"].hidden == [1, 2, 3]
    assert cfg["trainer"].epochs == 7 and cfg["trainer"].batch_size == TrainerConfig().batch_size


def test_int_widens_to_float_but_not_the_reverse(tmp_path):
    assert load_config(SCHEMA, None, ["optim.lr=1"])["optim"].lr == 1.0
    with pytest.raises(UserError, match=r"^--set trainer.epochs=1.5: expected an integer"):
        load_config(SCHEMA, None, ["trainer.epochs=1.5"])
    path = tmp_path / "c.toml"
    path.write_text("[trainer]\nepochs = 1.5\n")
    with pytest.raises(UserError, match=r"c.toml: trainer.epochs: expected an integer"):
        load_config(SCHEMA, path)
    path.write_text("[trainer]\nepochs = 0\n")   # in range, checked with the key and file
    with pytest.raises(UserError, match=r"c.toml: trainer.epochs: 0 must be at least 1"):
        load_config(SCHEMA, path)
    assert load_config(SCHEMA, path, ["trainer.epochs=2"])["trainer"].epochs == 2
    with pytest.raises(UserError, match="expected true or false"):
        load_config(SCHEMA, None, ["trainer.amp=1"])


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(SCHEMA, None, ["optim.learning_rate=1"])
    message = str(err.value)
    assert "optim.learning_rate" in message and "lr" in message and "weight_decay" in message
    path = tmp_path / "bad.toml"
    path.write_text("[optimizer]\nlr = 1\n")
    with pytest.raises(UserError, match=r"bad.toml: unknown section\(s\) optimizer; valid"):
        load_config(SCHEMA, path)


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(SCHEMA, tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("[optim\nlr=")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(SCHEMA, tmp_path / "broken.toml")
    with pytest.raises(UserError, match="section.key=value"):
        parse_override("lr")
    with pytest.raises(UserError, match="section.key"):
        parse_override("lr=3")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(SCHEMA, None, ["model.name=a \"quoted\" name", "optim.lr=3e-4",
                                     "model.hidden=[]"])
    save_config(cfg, tmp_path / "config.toml")
    again = load_config(SCHEMA, tmp_path / "config.toml")
    assert again == cfg
    assert "[trainer]" in dumps_toml({"trainer": {"x": 1}})
