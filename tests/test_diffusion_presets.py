"""Every preset of every system holds the diffusion its paper (or its docstring) documents.

The expected values are written out here from the sources, not read from the configs: the schedule
from diffusers' own ``DDPMScheduler``, the prediction type and the clip setting from what each
system's documentation says. Configs saved before the spec (flat diffusion fields) still load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from reference_models.cmd.config import PRESETS as CMD_PRESETS
from reference_models.cmd.config import CMDConfig
from reference_models.common.config import LEGACY_DIFFUSION_FIELDS
from reference_models.etc.config import PRESETS as ETC_PRESETS
from reference_models.etc.config import ETCConfig
from reference_models.evdm.config import PRESETS as EVDM_PRESETS
from reference_models.evdm.config import EVDMConfig
from reference_models.pvdm.config import DIFFUSION_PRESETS as PVDM_PRESETS
from reference_models.pvdm.config import DiffusionConfig
from vdblocks.diffusion import DiffusionSpec

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# (diffusers beta_schedule, beta_start, beta_end), all with 1000 training steps
DDPM_LINEAR = ("linear", 1e-4, 0.02)  # DDPM; MCVD's and DiT's default
SD = ("scaled_linear", 0.00085, 0.012)  # Stable Diffusion 2.1-base
LDM_LINEAR_PVDM = ("scaled_linear", 0.0015, 0.0195)  # PVDM Table 6: LDM's "linear" is linear in sqrt(beta)
COSINE = ("squaredcos_cap_v2", 1e-4, 0.02)  # Improved DDPM; betas unused

OURS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


def expected_etc(name: str) -> tuple:
    # ETCConfig docstring: tiny and small predict the velocity on pixels (clipped); sd21 keeps SD
    # 2.1-base's schedule and epsilon on latents (not clipped)
    return {
        "tiny": (DDPM_LINEAR, "v_prediction", True),
        "small": (DDPM_LINEAR, "v_prediction", True),
        "sd21": (SD, "epsilon", False),
    }[name]


def expected_evdm(name: str) -> tuple:
    # MCVD / EVDM: DDPM epsilon, 1000 linear steps 1e-4 -> 0.02, pixels clipped; the CPU tiny_*
    # presets predict the velocity (EVDMConfig docstring)
    dataset, _, variant = name.partition("_")
    assert dataset in ("smmnist", "kth", "bair", "ucf", "tiny") and variant
    return (DDPM_LINEAR, "v_prediction" if dataset == "tiny" else "epsilon", True)


def expected_cmd(name: str) -> tuple:
    # DiT's diffusion; tiny predicts the velocity; the content frame is clipped in pixel space
    # (tiny, small: RGB) and not on Stable Diffusion latents (Tables 5-7 presets)
    return {
        "tiny": (DDPM_LINEAR, "v_prediction", True),
        "small": (DDPM_LINEAR, "epsilon", True),
        "ucf101": (DDPM_LINEAR, "epsilon", False),
        "webvid_sd15": (DDPM_LINEAR, "epsilon", False),
        "webvid_sd21": (DDPM_LINEAR, "epsilon", False),
    }[name]


def expected_pvdm(name: str) -> tuple:
    # section 3.3's eps objective; latents out of a tanh, so z_0 is clipped to [-1, 1]
    assert name in ("pvdm_s", "pvdm_l", "tiny")
    return (LDM_LINEAR_PVDM, "epsilon", True)


CASES = [
    *(("etc", name, cfg, expected_etc(name)) for name, cfg in ETC_PRESETS.items()),
    *(("evdm", name, cfg, expected_evdm(name)) for name, cfg in EVDM_PRESETS.items()),
    *(("cmd", name, cfg, expected_cmd(name)) for name, cfg in CMD_PRESETS.items()),
    *(("pvdm", name, cfg, expected_pvdm(name)) for name, cfg in PVDM_PRESETS.items()),
]


def test_every_preset_is_covered():
    assert len(ETC_PRESETS) == 3 and len(CMD_PRESETS) == 5 and len(PVDM_PRESETS) == 3
    assert len(EVDM_PRESETS) == 5 * 9  # Table 2's data sets + tiny, times Table 8's rows


def check(spec: DiffusionSpec, expected: tuple) -> None:
    (schedule, start, end), prediction, clip = expected
    assert isinstance(spec, DiffusionSpec)
    assert (spec.schedule, spec.num_train_steps) == (OURS[schedule], 1000)
    if schedule != "squaredcos_cap_v2":
        assert (spec.beta_start, spec.beta_end) == (start, end)
    assert (spec.prediction_type, spec.clip_sample) == (prediction, clip)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, beta_start=start, beta_end=end)
    torch.testing.assert_close(spec.noise_schedule().betas, reference.betas.double(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("system", "name", "cfg", "expected"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_preset_diffusion_is_the_documented_one(system, name, cfg, expected):
    check(cfg.diffusion, expected)


def test_custom_example_diffusion():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import custom_architecture
    finally:
        sys.path.remove(str(EXAMPLES))
    # cosine schedule (docs/custom-architecture.md), velocity, standardised latents: no clipping
    check(custom_architecture.CustomConfig().diffusion, (COSINE, "v_prediction", False))


def flat(cfg) -> dict:
    """``cfg.to_dict()`` as configs were saved before the spec: the diffusion fields at top level."""
    data = cfg.to_dict()
    spec = data.pop("diffusion")
    data.update({k: spec[k] for k in LEGACY_DIFFUSION_FIELDS})
    if isinstance(cfg, DiffusionConfig):
        del data["prediction_type"]  # PVDM's config had none: its models predict the noise
    return json.loads(json.dumps(data))


@pytest.mark.parametrize(
    ("cls", "cfg"),
    [
        (ETCConfig, ETC_PRESETS["tiny"]),
        (ETCConfig, ETC_PRESETS["sd21"]),  # latents: was sampled without clipping
        (EVDMConfig, EVDM_PRESETS["tiny_evdm"]),
        (EVDMConfig, EVDM_PRESETS["kth_mcvd"]),
        (CMDConfig, CMD_PRESETS["tiny"]),
        (CMDConfig, CMD_PRESETS["ucf101"]),  # latents: content frame was sampled without clipping
        (DiffusionConfig, PVDM_PRESETS["tiny"]),
    ],
    ids=["etc-tiny", "etc-sd21", "evdm-tiny_evdm", "evdm-kth_mcvd", "cmd-tiny", "cmd-ucf101", "pvdm-tiny"],
)
def test_configs_saved_before_the_spec_load_as_they_were_sampled(cls, cfg):
    old = flat(cfg)
    assert "diffusion" not in old
    assert cls.from_dict(old) == cfg


def test_flat_override_names_point_to_the_spec():
    with pytest.raises(TypeError, match="set them as diffusion.NAME"):
        ETC_PRESETS["tiny"].replace(prediction_type="epsilon")
    cfg = ETC_PRESETS["tiny"].replace(**{"diffusion.prediction_type": "epsilon"})
    assert cfg.diffusion == ETC_PRESETS["tiny"].diffusion.replace(prediction_type="epsilon")
