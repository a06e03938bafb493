"""ConfigDict -> frozen dataclass validation: unknown keys, wrong types, nesting, literals."""

import dataclasses
from typing import Literal

import ml_collections
import pytest

from t2v_jax.configlib import ConfigError, from_config, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    kind: Literal["cosine", "constant"] = "cosine"


@dataclasses.dataclass(frozen=True)
class Outer:
    width: int
    mults: tuple[int, ...] = (1, 2)
    name: str | None = None
    flag: bool = False
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_builds_nested_frozen_dataclass_and_coerces_ints_to_float():
    cfg = ml_collections.ConfigDict(
        {"width": 8, "mults": [1, 2, 4], "inner": {"rate": 1, "kind": "constant"}}
    )
    out = from_config(Outer, cfg, "model")
    assert out == Outer(width=8, mults=(1, 2, 4), inner=Inner(rate=1.0, kind="constant"))
    assert isinstance(out.inner.rate, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.width = 3  # type: ignore[misc]
    assert to_dict(out)["inner"] == {"rate": 1.0, "kind": "constant"}


@pytest.mark.parametrize(
    "values, match",
    [
        ({"width": 8, "widht": 3}, r"model: unknown field\(s\) widht; Outer accepts: flag, inner"),
        ({}, r"model.width: required field is missing"),
        ({"width": "8"}, r"model.width: expected int, got '8'"),
        ({"width": 8.0}, r"model.width: expected int"),
        ({"width": True}, r"model.width: expected int"),
        ({"width": 8, "flag": 1}, r"model.flag: expected bool"),
        ({"width": 8, "mults": [1, "2"]}, r"model.mults\[1\]: expected int"),
        ({"width": 8, "inner": {"kind": "linear"}}, r"model.inner.kind: 'linear' is not one of"),
        ({"width": 8, "inner": {"rte": 0.1}}, r"model.inner: unknown field\(s\) rte"),
        ({"width": 8, "name": 3}, r"model.name: 3 matches none of"),
    ],
)
def test_errors_name_the_field(values, match):
    with pytest.raises(ConfigError, match=match):
        from_config(Outer, values, "model")


def test_instance_passes_through():
    inner = Inner()
    assert from_config(Inner, inner) is inner
