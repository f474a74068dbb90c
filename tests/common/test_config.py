import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from reference_models.common.cli import parse_override
from reference_models.common.config import (
    LEGACY_DIFFUSION_FIELDS,
    ConfigBase,
    check_channel_mult,
    check_config_fractions,
    check_config_ints,
    get_preset,
)
from vdblocks.diffusion import DiffusionSpec

pytestmark = pytest.mark.timeout(60)

TOY_DIFFUSION = DiffusionSpec(prediction_type="v_prediction", clip_sample=True)


@dataclass(frozen=True)
class Toy(ConfigBase):
    width: int = 8
    mult: tuple[int, ...] = (1, 2)
    depth: int | None = None
    p: float = 0.1
    diffusion: DiffusionSpec = TOY_DIFFUSION

    _tuple_fields: ClassVar[tuple[str, ...]] = ("mult",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config_ints(self, ("width",))
        check_config_ints(self, ("depth",), optional=True)
        check_channel_mult(self.mult, "mult")
        check_config_fractions(self, ("p",))


def test_json_round_trip_restores_tuples_and_equality():
    cfg = Toy(width=4, mult=(1, 3, 4), depth=2, diffusion=DiffusionSpec("cosine", 500))
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["mult"] == [1, 3, 4]
    assert data["diffusion"] == DiffusionSpec("cosine", 500).to_dict()  # nested, plain JSON
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
        ({"diffusion": {"schedule": "nope"}}, "schedule in"),
        ({"diffusion": {"beta_start": 0.1, "beta_end": 0.01}}, "beta_start < beta_end"),
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


def test_a_mapping_becomes_the_spec_and_anything_else_is_refused():
    assert Toy(diffusion={"schedule": "cosine"}).diffusion == DiffusionSpec("cosine")
    with pytest.raises(TypeError, match="diffusion to be a DiffusionSpec"):
        Toy(diffusion="cosine")


def test_dotted_overrides_reach_into_the_spec():
    cfg = Toy().replace(**{"diffusion.prediction_type": "epsilon", "diffusion.num_train_steps": 10, "width": 4})
    assert cfg == Toy(width=4, diffusion=TOY_DIFFUSION.replace(prediction_type="epsilon", num_train_steps=10))
    # what --set does: parse_override, then get_preset
    overrides = dict(parse_override(o) for o in ["diffusion.clip_sample=false", "diffusion.schedule=cosine"])
    got = get_preset({"a": Toy()}, "a", **overrides)
    assert got.diffusion == TOY_DIFFUSION.replace(clip_sample=False, schedule="cosine")
    # a whole spec as JSON, then one field on top of it
    got = Toy().replace(
        **dict([parse_override('diffusion={"schedule": "scaled_linear"}')]), **{"diffusion.beta_end": 0.5}
    )
    assert got.diffusion == DiffusionSpec("scaled_linear", beta_end=0.5)
    with pytest.raises(ValueError, match="prediction_type in"):
        Toy().replace(**{"diffusion.prediction_type": "velocity"})
    with pytest.raises(TypeError, match=r"unknown DiffusionSpec fields \['diffusion.eta'\]"):
        Toy().replace(**{"diffusion.eta": 0.0})
    with pytest.raises(TypeError, match=r"unknown Toy fields \['wings'\]"):
        Toy().replace(**{"wings.span": 2})
    with pytest.raises(TypeError, match="Toy.width is not a nested config"):
        Toy().replace(**{"width.x": 2})


def test_flat_diffusion_keys_point_to_the_spec():
    with pytest.raises(TypeError, match=r"unknown Toy fields \['prediction_type'\].*set them as diffusion.NAME"):
        Toy().replace(prediction_type="epsilon")


def test_configs_saved_before_the_spec_still_load():
    """Old checkpoints stored the diffusion fields flat; from_dict folds them into the spec."""
    old = {"width": 4, "mult": [1, 2], "depth": None, "p": 0.1}
    old.update(schedule="scaled_linear", num_train_steps=500, beta_start=0.00085, beta_end=0.012)
    old["prediction_type"] = "sample"
    cfg = Toy.from_dict(json.loads(json.dumps(old)))
    # the saved fields, and the class default's clip setting (the default legacy_clip_sample)
    assert cfg.diffusion == DiffusionSpec("scaled_linear", 500, 0.00085, 0.012, "sample", clip_sample=True)
    assert cfg == Toy(width=4, diffusion=cfg.diffusion)
    # fields an old config lacks take the default spec's (PVDM never stored a prediction type)
    partial = {k: v for k, v in old.items() if k != "prediction_type"}
    assert Toy.from_dict(partial).diffusion.prediction_type == TOY_DIFFUSION.prediction_type
    # a current dict is left alone, and an old one with a bad value fails as the spec would
    assert Toy.from_dict(Toy().to_dict()) == Toy()
    with pytest.raises(ValueError, match="schedule in"):
        Toy.from_dict({**old, "schedule": "quadratic"})
    assert set(LEGACY_DIFFUSION_FIELDS) == {f for f in DiffusionSpec().to_dict() if f != "clip_sample"}
