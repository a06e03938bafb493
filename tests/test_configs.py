"""Experiment configs: every file loads, absl config_flags overrides work, bad ones are named."""

import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from t2v_jax import sharding
from t2v_jax.configlib import ConfigError, from_config, load_config

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("stage", ["base", "tsr", "ssr"])
def test_tiny_config_loads_and_its_mesh_and_rules_validate(stage):
    config = load_config(f"{CONFIGS / 'tiny.py'}:{stage}")
    assert config.stage.kind == stage
    mesh_cfg = from_config(sharding.MeshConfig, config.mesh, "mesh")
    assert mesh_cfg.resolve(8) == (8, 1, 1)
    rules = sharding.rules_from_config(config.sharding.rules)
    assert dict(rules) == dict(sharding.DEFAULT_RULES)


def test_absl_config_flags_override():
    argv = [
        "prog",
        f"--config={CONFIGS / 'tiny.py'}:ssr",
        "--config.mesh.fsdp=2",
        "--config.seed=7",
    ]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
    fv(argv)
    assert fv.config.stage.kind == "ssr"
    assert fv.config.mesh.fsdp == 2 and fv.config.seed == 7


def test_absl_config_flags_rejects_unknown_field():
    argv = ["prog", f"--config={CONFIGS / 'tiny.py'}:base", "--config.mesh.fdsp=2"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
    # ml_collections names the bad field and suggests the right one.
    with pytest.raises(AttributeError, match='fdsp.*Did you mean "fsdp"'):
        fv(argv)


def test_load_config_overrides_and_errors():
    config = load_config(f"{CONFIGS / 'tiny.py'}:base", {"mesh.data": 2, "seed": 3})
    assert config.mesh.data == 2 and config.seed == 3
    with pytest.raises(ConfigError, match="config.mesh.fdsp: no such field"):
        load_config(f"{CONFIGS / 'tiny.py'}", {"mesh.fdsp": 2})
    with pytest.raises(ConfigError, match="config.mesh.data"):
        load_config(f"{CONFIGS / 'tiny.py'}", {"mesh.data": "two"})
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("configs/nope.py")
    with pytest.raises(ValueError, match="stage must be one of"):
        load_config(f"{CONFIGS / 'tiny.py'}:huge")
