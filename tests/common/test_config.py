import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from reference_models.common.config import (
    ConfigBase,
    check_channel_mult,
    check_config_fractions,
    check_config_ints,
    check_noise_schedule,
    get_preset,
)


@dataclass(frozen=True)
class Toy(ConfigBase):
    width: int = 8
    mult: tuple[int, ...] = (1, 2)
    depth: int | None = None
    p: float = 0.1
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    _tuple_fields: ClassVar[tuple[str, ...]] = ("mult",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config_ints(self, ("width",))
        check_config_ints(self, ("depth",), optional=True)
        check_channel_mult(self.mult, "mult")
        check_config_fractions(self, ("p",))
        check_noise_schedule(self)


def test_json_round_trip_restores_tuples_and_equality():
    cfg = Toy(width=4, mult=(1, 3, 4), depth=2)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["mult"] == [1, 3, 4]
    back = Toy.from_dict(data)
    assert back == cfg and isinstance(back.mult, tuple) and hash(back) == hash(cfg)


def test_unknown_fields_and_non_mappings_are_refused():
    with pytest.raises(TypeError, match=r"unknown Toy fields \['nope'\]"):
        Toy.from_dict({"nope": 1})
    with pytest.raises(TypeError, match="mapping"):
        Toy.from_dict([("width", 3)])
    with pytest.raises(TypeError, match="unknown Toy fields"):
        Toy().replace(nope=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0}, "width to be a positive int"),
        ({"width": True}, "width to be a positive int"),
        ({"depth": -1}, "depth to be a positive int or None"),
        ({"mult": ()}, "mult to be a non-empty tuple"),
        ({"p": 1.5}, r"p in \[0, 1\]"),
        ({"schedule": "nope"}, "schedule in"),
        ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start < beta_end"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Toy(**kwargs)


def test_get_preset_applies_and_validates_overrides():
    presets = {"a": Toy(), "b": Toy(width=16)}
    assert get_preset(presets, "b", depth=3) == Toy(width=16, depth=3)
    with pytest.raises(ValueError, match=r"preset name in \['a', 'b'\]"):
        get_preset(presets, "c")
    with pytest.raises(ValueError, match="width"):
        get_preset(presets, "a", width=0)
