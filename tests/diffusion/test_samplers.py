"""DDPM and DDIM samplers against diffusers' schedulers, plus the sampling invariants they must keep."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.diffusion.samplers import (
    ddim_step,
    ddpm_step,
    make_timesteps,
    sample_ddim,
    sample_ddpm,
    split_prediction,
)
from vdblocks.diffusion.schedules import PREDICTION_TYPES, NoiseSchedule
from vdblocks.diffusion.spec import DiffusionSpec

NAMES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
TOL = dict(rtol=1e-4, atol=1e-5)  # our float64 coefficients vs diffusers' float32 tables


def share_tables(reference, schedule, set_alpha_to_one=True):
    """Give a diffusers scheduler our float64 tables so a step comparison tests the update formula.

    diffusers keeps float32 tables; near t = 0 of the cosine schedule ``1 - abar_t`` is ~1e-5 and
    float32 cancellation there moves diffusers' coefficients by ~1e-3 relative, which our float64
    tables avoid. With shared tables the two updates must agree to float32 rounding of the data.
    The loops below run on unmodified diffusers with the linear schedules, where float32 suffices.
    """
    reference.betas = schedule.betas.clone()
    reference.alphas = schedule.alphas.clone()
    reference.alphas_cumprod = schedule.alphas_cumprod.clone()
    one = torch.tensor(1.0, dtype=torch.float64)
    reference.one = one
    reference.final_alpha_cumprod = one if set_alpha_to_one else schedule.alphas_cumprod[0]
    return reference


def toy_eps(x, t):
    """A deterministic, per-sample eps model; ``t`` may be a 0-d (diffusers) or (b,) (ours) tensor."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return 0.7 * torch.tanh(x) + 0.2 * torch.cos(t / 37.0 + x)


def oracle(schedule, x0):
    """The model that knows x0: it returns exactly the noise that takes x0 to its input x_t."""

    def model_fn(x_t, t):
        return schedule.predict_eps(x_t, t, x0)

    return model_fn


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_train", [1000, 97])
def test_timesteps_match_set_timesteps(spacing, num_train):
    for steps in sorted({1, 2, 3, 7, 10, 21, 50, 61, num_train // 3, num_train - 1, num_train}):
        reference = DDIMScheduler(num_train_timesteps=num_train, timestep_spacing=spacing)
        reference.set_timesteps(steps)
        ours = make_timesteps(num_train, steps, spacing)
        assert ours.dtype == torch.int64
        # diffusers' "trailing" sometimes appends a step at -1 (numpy arange length); ours never does
        assert torch.equal(ours, reference.timesteps[:steps]), (spacing, steps)
        assert bool((reference.timesteps[steps:] < 0).all())
        assert len(ours) == steps and int(ours[-1]) >= 0
        assert bool((ours[1:] < ours[:-1]).all())
    reference = DDPMScheduler(timestep_spacing="leading", steps_offset=1)
    reference.set_timesteps(20)
    assert torch.equal(make_timesteps(1000, 20, "leading", steps_offset=1), reference.timesteps)


@pytest.mark.parametrize("name", list(NAMES))
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_ddpm_step_matches_diffusers(name, variance, clip, prediction):
    schedule = NoiseSchedule.from_name(name, 1000)
    reference = DDPMScheduler(
        beta_schedule=NAMES[name], variance_type=variance, clip_sample=clip, prediction_type=prediction
    )
    share_tables(reference, schedule)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 4, generator=g)
    for t in (999, 500, 37, 1, 0):
        eps = toy_eps(x, torch.tensor(t))
        ours = ddpm_step(
            schedule,
            eps,
            t,
            x,
            generator=torch.Generator().manual_seed(t),
            variance=variance,
            clip_sample=clip,
            prediction_type=prediction,
        )
        theirs = reference.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ours.x_prev, theirs.prev_sample)
        torch.testing.assert_close(ours.pred_x0, theirs.pred_original_sample)
        # the same step with the noise passed explicitly
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
        explicit = ddpm_step(
            schedule, eps, t, x, noise=noise, variance=variance, clip_sample=clip, prediction_type=prediction
        )
        assert torch.equal(explicit.x_prev, ours.x_prev)


@pytest.mark.parametrize("steps", [None, 20])
def test_ddpm_loop_matches_diffusers(steps):
    num_train = 60
    spec = DiffusionSpec("linear", num_train, 1e-3, 0.2, clip_sample=True)
    reference = DDPMScheduler(num_train_timesteps=num_train, beta_start=1e-3, beta_end=0.2, clip_sample=True)
    if steps is not None:
        reference.set_timesteps(steps)
    shape = (2, 1, 3, 4, 4)
    ours = sample_ddpm(toy_eps, shape, spec, steps=steps, generator=torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g)
    for t in reference.timesteps:
        x = reference.step(toy_eps(x, t), t, x, generator=g).prev_sample
    torch.testing.assert_close(ours, x, **TOL)


@pytest.mark.parametrize("name", list(NAMES))
@pytest.mark.parametrize("steps", [1, 10, 50])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_ddim_step_matches_diffusers(name, steps, set_alpha_to_one, prediction):
    schedule = NoiseSchedule.from_name(name, 1000)
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(2, 3, 2, 4, 4, generator=g)
    for eta, clip in ((0.0, False), (0.5, True), (1.0, False)):
        reference = DDIMScheduler(
            beta_schedule=NAMES[name], set_alpha_to_one=set_alpha_to_one, clip_sample=clip, prediction_type=prediction
        )
        reference.set_timesteps(steps)
        share_tables(reference, schedule, set_alpha_to_one)
        timesteps = make_timesteps(1000, steps)
        for i in sorted({0, len(timesteps) // 2, len(timesteps) - 1}):
            t = int(timesteps[i])
            t_prev = int(timesteps[i + 1]) if i + 1 < steps else -1
            eps = toy_eps(x, torch.tensor(t))
            noise = torch.randn(x.shape, generator=g)
            ours = ddim_step(
                schedule,
                eps,
                t,
                t_prev,
                x,
                eta,
                noise=noise,
                clip_sample=clip,
                set_alpha_to_one=set_alpha_to_one,
                prediction_type=prediction,
            )
            theirs = reference.step(eps, t, x, eta=eta, variance_noise=noise)
            torch.testing.assert_close(ours.x_prev, theirs.prev_sample)
            torch.testing.assert_close(ours.pred_x0, theirs.pred_original_sample)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_loop_matches_diffusers(eta):
    spec = DiffusionSpec("scaled_linear", 1000, 0.00085, 0.012, clip_sample=False)
    reference = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    reference.set_timesteps(12)
    shape = (2, 4, 2, 3, 3)
    ours = sample_ddim(toy_eps, shape, spec, 12, eta, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g)
    for t in reference.timesteps:
        x = reference.step(toy_eps(x, t), t, x, eta=eta, generator=g if eta > 0 else None).prev_sample
    torch.testing.assert_close(ours, x, **TOL)


@given(
    name=st.sampled_from(list(NAMES)),
    steps=st.integers(1, 30),
    spacing=st.sampled_from(["leading", "trailing", "linspace"]),
    seed=st.integers(0, 2**16),
)
def test_ddim_eta0_with_true_noise_recovers_x0(name, steps, spacing, seed):
    spec = DiffusionSpec(name, 200)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    out = sample_ddim(
        oracle(spec.noise_schedule(), x0), x0.shape, spec, steps, 0.0, spacing=spacing, generator=g, dtype=torch.float64
    )
    torch.testing.assert_close(out, x0)


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_every_prediction_type_of_the_oracle_recovers_x0(prediction):
    spec = DiffusionSpec("linear", 1000, prediction_type=prediction)
    schedule = spec.noise_schedule()
    x0 = torch.rand(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def model_fn(x_t, t):
        eps = schedule.predict_eps(x_t, t, x0)
        return {"epsilon": eps, "v_prediction": schedule.velocity(x0, t, eps), "sample": x0}[prediction]

    out = sample_ddim(model_fn, x0.shape, spec, 10, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


@given(abar=st.floats(1e-5, 1 - 1e-5), seed=st.integers(0, 2**16))
def test_split_prediction_inverts_each_parametrisation(abar, seed):
    g = torch.Generator().manual_seed(seed)
    x0, eps = (
        torch.randn(2, 3, 4, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 4, generator=g, dtype=torch.float64),
    )
    x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * eps
    v = abar**0.5 * eps - (1 - abar) ** 0.5 * x0
    for prediction, output in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        got_x0, got_eps = split_prediction(output, x_t, abar, prediction)
        scale = 1.0 / min(abar, 1 - abar) ** 0.5  # inversions divide by sqrt(abar) or sqrt(1 - abar)
        torch.testing.assert_close(got_x0, x0, atol=1e-9 * scale, rtol=1e-9)
        torch.testing.assert_close(got_eps, eps, atol=1e-9 * scale, rtol=1e-9)
    with pytest.raises(ValueError, match="prediction_type in"):
        split_prediction(eps, x_t, abar, "noise")


def test_ddpm_with_true_noise_recovers_x0():
    # the posterior of the last step has zero variance and puts all weight on x0
    spec = DiffusionSpec("cosine", 100)
    x0 = torch.randn(1, 2, 3, 4, 4, dtype=torch.float64)
    for steps in (None, 9):
        out = sample_ddpm(
            oracle(spec.noise_schedule(), x0),
            x0.shape,
            spec,
            steps=steps,
            generator=torch.Generator().manual_seed(0),
            dtype=torch.float64,
        )
        torch.testing.assert_close(out, x0)


def test_known_frames_are_kept_and_renoised_each_step():
    spec = DiffusionSpec("linear", 100)
    schedule = spec.noise_schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 1, 5, 4, 4, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, 1, 5, 1, 1, dtype=torch.float64)
    mask[:, :, :2] = 1.0  # the first two frames are given
    residuals = []

    def recording_oracle(x_t, t):
        eps = schedule.predict_eps(x_t, t, x0)
        residuals.append(eps)
        return eps

    out = sample_ddim(
        recording_oracle, x0.shape, spec, 8, 0.0, generator=g, dtype=torch.float64, known=x0, known_mask=mask
    )
    torch.testing.assert_close(out, x0)
    known, free = mask.expand_as(x0).bool(), ~mask.expand_as(x0).bool()
    # DDIM eta=0 with the true model keeps the noise of the generated frames fixed along the chain,
    # while the known frames get fresh forward-process noise at every step
    for a, b in zip(residuals, residuals[1:]):
        torch.testing.assert_close(a[free], b[free])
        assert not torch.allclose(a[known], b[known])


def test_known_everywhere_returns_known():
    spec = DiffusionSpec("linear", 50)
    known = torch.randn(2, 3, 4, 4)
    out = sample_ddpm(lambda x, t: torch.randn_like(x) * 5, known.shape, spec, known=known, known_mask=torch.ones(1))
    assert torch.equal(out, known)


def test_progress_callback_and_reproducibility():
    spec = DiffusionSpec("linear", 100)
    seen, wrapped = [], []

    def wrap(iterable):
        wrapped.append(True)
        return iterable

    def callback(i, t, x, pred_x0):
        seen.append((i, t, x.shape, pred_x0.shape))

    shape = (1, 2, 3, 3)
    a = sample_ddim(
        toy_eps, shape, spec, 5, 0.3, generator=torch.Generator().manual_seed(2), progress=wrap, callback=callback
    )
    b = sample_ddim(toy_eps, shape, spec, 5, 0.3, generator=torch.Generator().manual_seed(2), progress=True)
    assert torch.equal(a, b)
    assert wrapped == [True]
    assert [s[:2] for s in seen] == list(enumerate(make_timesteps(100, 5).tolist()))
    x_T = torch.randn(shape)
    c = sample_ddim(toy_eps, shape, spec, 5, x_T=x_T)
    d = sample_ddim(toy_eps, shape, spec, 5, x_T=x_T)
    assert torch.equal(c, d)


def test_invalid_sampler_inputs():
    spec = DiffusionSpec("linear", 100)
    schedule = spec.noise_schedule()
    x = torch.randn(2, 3, 4, 4)
    for bad in (0, -3, 101):
        with pytest.raises(ValueError, match=r"steps to be an int in \[1, 100\]"):
            make_timesteps(100, bad)
        with pytest.raises(ValueError, match="steps"):
            sample_ddim(toy_eps, x.shape, spec, bad)
    with pytest.raises(ValueError, match="beyond T-1"):
        make_timesteps(100, 100, steps_offset=1)
    with pytest.raises(ValueError, match="spacing"):
        make_timesteps(100, 10, "quadratic")
    with pytest.raises(ValueError, match=r"t to be an int in \[0, 99\]"):
        ddpm_step(schedule, x, 100, x)
    with pytest.raises(ValueError, match=r"t_prev to be an int in \[-1, 9\]"):
        ddim_step(schedule, x, 10, 10, x)
    with pytest.raises(TypeError, match="t to be an int"):
        ddim_step(schedule, x, 10.0, 5, x)
    with pytest.raises(ValueError, match=r"model output of shape \(2, 3, 4, 4\)"):
        ddim_step(schedule, x[:, :2], 10, 5, x)
    with pytest.raises(ValueError, match="eta"):
        ddim_step(schedule, x, 10, 5, x, eta=1.5)
    with pytest.raises(ValueError, match="noise or generator"):
        ddim_step(schedule, x, 10, 5, x, eta=0.5, noise=x, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"noise of shape \(2, 3, 4, 4\)"):
        ddpm_step(schedule, x, 10, x, noise=x[:1])
    with pytest.raises(ValueError, match="known and known_mask together"):
        sample_ddim(toy_eps, x.shape, spec, 5, known=x)
    with pytest.raises(ValueError, match="broadcastable"):
        sample_ddim(toy_eps, x.shape, spec, 5, known=x, known_mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"x_T of shape \(2, 3, 4, 4\)"):
        sample_ddim(toy_eps, x.shape, spec, 5, x_T=x[:1])
    with pytest.raises(ValueError, match="model_fn"):
        sample_ddim(lambda x_t, t: x_t[:, :1], x.shape, spec, 5)
    with pytest.raises(ValueError, match="positive ints"):
        sample_ddpm(toy_eps, (2, 0, 3), spec)
    # the loops take the spec (schedule, prediction type, clipping together), not a bare schedule
    for loop in (sample_ddim, sample_ddpm):
        with pytest.raises(TypeError, match="DiffusionSpec"):
            loop(toy_eps, x.shape, schedule)


def test_the_spec_decides_prediction_type_and_clipping():
    """The loops read the model output and clip x_0 as the spec says, exactly as the step functions do."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4)) * 3
    for prediction in PREDICTION_TYPES:
        for clip in (False, True):
            spec = DiffusionSpec("linear", 100, prediction_type=prediction, clip_sample=clip)
            schedule = spec.noise_schedule()
            out = sample_ddim(toy_eps, x.shape, spec, 3, x_T=x)
            expect = x
            timesteps = make_timesteps(100, 3).tolist()
            for i, t in enumerate(timesteps):
                t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
                expect = ddim_step(
                    schedule,
                    toy_eps(expect, torch.full((2,), t)),
                    t,
                    t_prev,
                    expect,
                    clip_sample=clip,
                    prediction_type=prediction,
                ).x_prev
            torch.testing.assert_close(out, expect)
