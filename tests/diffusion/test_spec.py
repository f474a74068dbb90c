"""DiffusionSpec: validation at construction, JSON round trip, and schedules equal to diffusers'."""

import dataclasses
import json
import math

import pytest
import torch
from diffusers import DDPMScheduler
from hypothesis import given
from hypothesis import strategies as st

from vdblocks import DiffusionSpec as TopLevelSpec
from vdblocks.diffusion import PREDICTION_TYPES, SCHEDULE_NAMES, DiffusionSpec, NoiseSchedule, check_spec

pytestmark = pytest.mark.timeout(60)

# (our name, diffusers' beta_schedule, beta_start, beta_end)
SCHEDULES = [
    ("linear", "linear", 1e-4, 2e-2),
    ("scaled_linear", "scaled_linear", 0.00085, 0.012),
    ("scaled_linear", "scaled_linear", 0.0015, 0.0195),  # PVDM's Table 6 (LDM's "linear")
    ("cosine", "squaredcos_cap_v2", 1e-4, 2e-2),
]


def test_defaults_and_top_level_export():
    spec = DiffusionSpec()
    assert TopLevelSpec is DiffusionSpec
    assert (spec.schedule, spec.num_train_steps, spec.beta_start, spec.beta_end) == ("linear", 1000, 1e-4, 0.02)
    assert spec.prediction_type == "epsilon" and spec.clip_sample is False  # diffusers' DDPM, no clipping


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {"schedule": "quadratic"},
            ValueError,
            r"schedule in \('linear', 'scaled_linear', 'cosine'\), got 'quadratic'",
        ),
        ({"num_train_steps": 0}, ValueError, "num_train_steps to be a positive int, got 0"),
        ({"num_train_steps": True}, ValueError, "num_train_steps to be a positive int"),
        ({"num_train_steps": 10.0}, ValueError, "num_train_steps to be a positive int"),
        ({"beta_start": 0.1, "beta_end": 0.01}, ValueError, "0 < beta_start < beta_end < 1"),
        ({"beta_start": 0.0}, ValueError, "0 < beta_start < beta_end < 1"),
        ({"beta_end": 1.0}, ValueError, "0 < beta_start < beta_end < 1"),
        ({"beta_start": math.nan}, ValueError, "beta_start=nan"),
        ({"beta_start": "1e-4"}, ValueError, "0 < beta_start"),
        (
            {"prediction_type": "velocity"},
            ValueError,
            r"prediction_type in \('epsilon', 'v_prediction', 'sample'\), got 'velocity'",
        ),
        ({"clip_sample": 1}, TypeError, "clip_sample to be a bool, got 1"),
        ({"clip_sample": None}, TypeError, "clip_sample to be a bool"),
    ],
)
def test_invalid_values_name_what_is_allowed(changes, error, message):
    with pytest.raises(error, match=message):
        DiffusionSpec(**changes)
    with pytest.raises(error, match=message):  # replace validates too
        DiffusionSpec().replace(**changes)


def test_frozen_and_hashable():
    spec = DiffusionSpec(prediction_type="v_prediction")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.prediction_type = "epsilon"  # type: ignore[misc]
    assert spec == DiffusionSpec(prediction_type="v_prediction") and len({spec, DiffusionSpec("linear")}) == 2


@given(
    schedule=st.sampled_from(SCHEDULE_NAMES),
    steps=st.integers(1, 5000),
    betas=st.tuples(st.floats(1e-6, 0.5), st.floats(1e-6, 0.5)).filter(lambda b: b[0] < b[1]),
    prediction=st.sampled_from(PREDICTION_TYPES),
    clip=st.booleans(),
)
def test_json_round_trip_is_exact(schedule, steps, betas, prediction, clip):
    spec = DiffusionSpec(schedule, steps, betas[0], betas[1], prediction, clip)
    text = json.dumps(spec.to_dict(), allow_nan=False)
    again = DiffusionSpec.from_dict(json.loads(text))
    assert again == spec and hash(again) == hash(spec)
    assert json.dumps(again.to_dict(), allow_nan=False) == text


def test_from_dict_fills_defaults_and_refuses_unknown_keys():
    assert DiffusionSpec.from_dict({"prediction_type": "sample"}) == DiffusionSpec(prediction_type="sample")
    with pytest.raises(TypeError, match=r"unknown DiffusionSpec fields \['eta'\]; known fields: \['beta_end'"):
        DiffusionSpec.from_dict({"eta": 0.0})
    with pytest.raises(TypeError, match="mapping"):
        DiffusionSpec.from_dict([("schedule", "linear")])
    with pytest.raises(ValueError, match="schedule in"):
        DiffusionSpec.from_dict({"schedule": "squaredcos"})


@pytest.mark.parametrize(("ours", "theirs", "start", "end"), SCHEDULES)
@pytest.mark.parametrize("steps", [1, 50, 1000])
def test_schedule_equals_diffusers(ours, theirs, start, end, steps):
    spec = DiffusionSpec(ours, steps, start, end)
    schedule = spec.noise_schedule()
    reference = DDPMScheduler(num_train_timesteps=steps, beta_schedule=theirs, beta_start=start, beta_end=end)
    assert isinstance(schedule, NoiseSchedule) and schedule.num_steps == steps
    # diffusers keeps float32 tables, ours are float64: equal to float32 rounding
    torch.testing.assert_close(schedule.betas, reference.betas.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(schedule.alphas_cumprod, reference.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


def test_noise_schedule_is_cached_per_spec():
    a, b = DiffusionSpec("cosine", 100), DiffusionSpec("cosine", 100, prediction_type="v_prediction")
    assert a.noise_schedule() is a.noise_schedule() is b.noise_schedule()  # the schedule ignores the rest
    assert DiffusionSpec("cosine", 101).noise_schedule().num_steps == 101


def test_check_spec_says_how_to_build_one():
    spec = DiffusionSpec()
    assert check_spec(spec) is spec
    with pytest.raises(TypeError, match=r"expected spec to be a DiffusionSpec .*got NoiseSchedule"):
        check_spec(spec.noise_schedule())
    with pytest.raises(TypeError, match=r"expected diffusion to be a DiffusionSpec .*got str"):
        check_spec("epsilon", "diffusion")


def test_docstring_says_what_each_prediction_type_means():
    doc = DiffusionSpec.__doc__ or ""
    for name in PREDICTION_TYPES:
        assert f'"{name}"' in doc, name
    assert "Salimans" in doc and "sqrt(abar_t) eps - sqrt(1 - abar_t) x_0" in doc
