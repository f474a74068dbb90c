"""Noise schedules, the forward process and the epsilon loss, checked against diffusers' DDPMScheduler."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.diffusion.forward import diffusion_loss, masked_mse, q_sample, sample_timesteps
from vdblocks.diffusion.schedules import NoiseSchedule, cosine_betas, linear_betas
from vdblocks.diffusion.spec import DiffusionSpec

# (our name, diffusers' name, beta_start, beta_end): scaled_linear with Stable Diffusion's range
SCHEDULES = [
    ("linear", "linear", 1e-4, 2e-2),
    ("scaled_linear", "scaled_linear", 0.00085, 0.012),
    ("cosine", "squaredcos_cap_v2", 1e-4, 2e-2),
]


def pair(name, num_steps=1000):
    ours, theirs, start, end = next(s for s in SCHEDULES if s[0] == name)
    schedule = NoiseSchedule.from_name(ours, num_steps, start, end)
    reference = DDPMScheduler(num_train_timesteps=num_steps, beta_schedule=theirs, beta_start=start, beta_end=end)
    return schedule, reference


@pytest.mark.parametrize("name", [s[0] for s in SCHEDULES])
@pytest.mark.parametrize("num_steps", [1, 10, 1000])
def test_tables_match_diffusers(name, num_steps):
    schedule, reference = pair(name, num_steps)
    assert schedule.num_steps == len(schedule) == num_steps
    torch.testing.assert_close(schedule.betas, reference.betas.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(schedule.alphas_cumprod, reference.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


def test_cosine_alias_and_cap():
    a = NoiseSchedule.from_name("cosine", 100)
    b = NoiseSchedule.from_name("squaredcos_cap_v2", 100)
    assert torch.equal(a.betas, b.betas)
    assert a.betas.max() <= 0.999
    assert torch.equal(cosine_betas(50, max_beta=0.5).clamp(max=0.5), cosine_betas(50, max_beta=0.5))


@given(
    name=st.sampled_from([s[0] for s in SCHEDULES]),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_q_sample_matches_add_noise_and_inverts(name, shape, seed):
    schedule, reference = pair(name)
    g = torch.Generator().manual_seed(seed)
    b = shape[0]
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    x_t = schedule.q_sample(x0, t, noise)
    assert x_t.shape == x0.shape and x_t.dtype == x0.dtype
    torch.testing.assert_close(x_t, reference.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)
    v = reference.get_velocity(x0, noise, t)
    torch.testing.assert_close(schedule.velocity(x0, t, noise), v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q_sample(schedule, x0, t, noise), x_t)
    # eq. 4 inverted either way gives back what went in; float64 avoids 1/sqrt(abar_T) blow-up of rounding
    x0d, nd, xd = x0.double(), noise.double(), x_t.double()
    xd = schedule.q_sample(x0d, t, nd)
    torch.testing.assert_close(schedule.predict_x0(xd, t, nd), x0d)
    torch.testing.assert_close(schedule.predict_eps(xd, t, x0d), nd)
    v = schedule.velocity(x0d, t, nd)
    torch.testing.assert_close(schedule.predict_x0_from_velocity(xd, t, v), x0d)
    torch.testing.assert_close(schedule.predict_eps_from_velocity(xd, t, v), nd)


def test_int_timestep_broadcasts_and_dtype_follows_data():
    schedule = NoiseSchedule.from_name("linear", 100)
    x0, noise = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64)
    out = schedule.q_sample(x0, 7, noise)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, schedule.q_sample(x0, torch.full((3,), 7), noise))


def test_snr_is_abar_ratio_and_decreasing():
    for name, *_ in SCHEDULES:
        schedule = NoiseSchedule.from_name(name, 200)
        t = torch.arange(200)
        snr = schedule.snr(t, dtype=torch.float64)
        abar = schedule.alphas_cumprod
        torch.testing.assert_close(snr, abar / (1 - abar))
        assert bool((snr[1:] < snr[:-1]).all())


def test_schedule_is_frozen_and_owns_its_tables():
    betas = linear_betas(10)
    schedule = NoiseSchedule(betas)
    betas.mul_(2)
    assert torch.allclose(schedule.betas, linear_betas(10))
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.betas = betas


def test_invalid_schedule_arguments():
    with pytest.raises(ValueError, match="schedule name"):
        NoiseSchedule.from_name("quadratic")
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule.from_name("linear", 0)
    with pytest.raises(ValueError, match="beta_end"):
        NoiseSchedule.from_name("linear", 10, 1e-4, 1.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NoiseSchedule(torch.tensor([0.1, 0.0, 0.2]))
    with pytest.raises(ValueError, match=r"\(T,\)"):
        NoiseSchedule(torch.rand(3, 3))


def test_invalid_timesteps_and_shapes():
    schedule = NoiseSchedule.from_name("linear", 100)
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"t in \[0, 100\)"):
        schedule.q_sample(x0, torch.tensor([0, 100]), noise)
    with pytest.raises(ValueError, match=r"t in \[0, 100\)"):
        schedule.q_sample(x0, torch.tensor([-1, 3]), noise)
    with pytest.raises(TypeError, match="integer dtype"):
        schedule.q_sample(x0, torch.tensor([1.0, 2.0]), noise)
    with pytest.raises(ValueError, match=r"\(b,\) with b=2"):
        schedule.q_sample(x0, torch.tensor([[1], [2]]), noise)
    with pytest.raises(ValueError, match=r"\(b,\) with b=2"):
        schedule.q_sample(x0, torch.tensor([1, 2, 3]), noise)
    with pytest.raises(ValueError, match="same shape"):
        schedule.q_sample(x0, torch.tensor([1, 2]), noise[:, :2])
    with pytest.raises(TypeError, match="floating-point"):
        schedule.predict_x0(x0.long(), torch.tensor([1, 2]), noise)


# -- loss ------------------------------------------------------------------------------------------


def linear_model(weight):
    """A per-entry toy eps model: eps = weight * x_t + t / T."""

    def model_fn(x_t, t):
        return weight * x_t + (t.to(x_t.dtype) / 100).view(-1, *[1] * (x_t.ndim - 1))

    return model_fn


def test_all_ones_mask_is_plain_mse():
    spec = DiffusionSpec("cosine", 100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 5, 5, generator=g)
    out = diffusion_loss(linear_model(0.5), x0, spec, generator=g, return_details=True)
    expected = F.mse_loss(out.prediction, out.noise)
    torch.testing.assert_close(out.loss, expected)
    ones = torch.ones(3, 1, 4, 1, 1)
    torch.testing.assert_close(diffusion_loss(linear_model(0.5), x0, spec, out.t, out.noise, mask=ones), expected)
    torch.testing.assert_close(masked_mse(out.prediction, out.noise), expected)


@given(b=st.integers(1, 3), c=st.integers(1, 3), frames=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_masked_loss_ignores_masked_entries(b, c, frames, seed):
    spec = DiffusionSpec("linear", 100)
    schedule = spec.noise_schedule()
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, c, frames, 3, 3, generator=g)
    t = sample_timesteps(schedule, b, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    mask = (torch.rand(b, 1, frames, 1, 1, generator=g) > 0.5).float()
    mask[0, 0, 0] = 1.0  # at least one frame counts
    base = linear_model(0.3)
    garbage = torch.randn(x0.shape, generator=g) * 100

    def perturbed(x_t, t_):
        return base(x_t, t_) + (1 - mask) * garbage  # changes only the masked-out frames

    loss_a = diffusion_loss(base, x0, spec, t, noise, mask=mask)
    loss_b = diffusion_loss(perturbed, x0, spec, t, noise, mask=mask)
    torch.testing.assert_close(loss_a, loss_b)
    # independent reference: plain mean over the selected entries
    keep = mask.expand_as(x0).bool()
    pred = base(schedule.q_sample(x0, t, noise), t)
    torch.testing.assert_close(loss_a, ((pred - noise) ** 2)[keep].mean())


def test_loss_details_reproducible_and_gradients_flow():
    spec = DiffusionSpec("linear", 50)
    schedule = spec.noise_schedule()
    x0 = torch.randn(4, 3, 2, 6, 6)
    net = torch.nn.Conv3d(3, 3, 1)

    def model_fn(x_t, t):
        return net(x_t)

    a = diffusion_loss(model_fn, x0, spec, generator=torch.Generator().manual_seed(1), return_details=True)
    b = diffusion_loss(model_fn, x0, spec, generator=torch.Generator().manual_seed(1), return_details=True)
    assert torch.equal(a.t, b.t) and torch.equal(a.noise, b.noise)
    assert a.t.dtype == torch.int64 and bool((a.t >= 0).all()) and bool((a.t < 50).all())
    torch.testing.assert_close(a.x_t, schedule.q_sample(x0, a.t, a.noise))
    a.loss.backward()
    for p in net.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_all_zero_mask_gives_zero_not_nan():
    pred, target = torch.randn(2, 3), torch.randn(2, 3)
    assert masked_mse(pred, target, torch.zeros(2, 1)).item() == 0.0


def test_invalid_loss_inputs():
    spec = DiffusionSpec("linear", 50)
    schedule = spec.noise_schedule()
    x0 = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="broadcastable"):
        diffusion_loss(linear_model(1.0), x0, spec, mask=torch.ones(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"prediction of shape \(2, 3, 4, 4\)"):
        diffusion_loss(lambda x, t: x[:, :1], x0, spec)
    with pytest.raises(ValueError, match=r"t in \[0, 50\)"):
        diffusion_loss(linear_model(1.0), x0, spec, t=torch.tensor([3, 50]))
    with pytest.raises(TypeError, match="floating-point"):
        diffusion_loss(linear_model(1.0), x0.long(), spec)
    with pytest.raises(ValueError, match="batch"):
        sample_timesteps(schedule, 0)


@pytest.mark.parametrize("name", [s[0] for s in SCHEDULES])
def test_loss_targets_follow_the_prediction_type(name):
    schedule, reference = pair(name)
    ours, _, start, end = next(s for s in SCHEDULES if s[0] == name)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(4, 3, 2, 4, 4, generator=g)
    t = torch.tensor([0, 17, 500, 999])
    noise = torch.randn(x0.shape, generator=g)
    targets = {
        "epsilon": noise,
        "v_prediction": reference.get_velocity(x0, noise, t),  # diffusers' velocity
        "sample": x0,
    }
    for prediction, target in targets.items():
        spec = DiffusionSpec(ours, 1000, start, end, prediction_type=prediction)
        out = diffusion_loss(linear_model(0.5), x0, spec, t, noise, return_details=True)
        torch.testing.assert_close(out.loss, F.mse_loss(out.prediction, target), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="DiffusionSpec"):
        diffusion_loss(linear_model(0.5), x0, schedule, t, noise)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weighting_matches_diffusers_recipe(prediction, gamma):
    """diffusers' train_text_to_image ``--snr_gamma``: per-sample MSE times min(SNR, gamma) / SNR
    (epsilon) or / (SNR + 1) (velocity); plain min(SNR, gamma) for x0 targets (Hang et al. 2023)."""
    from diffusers.training_utils import compute_snr

    spec = DiffusionSpec("linear", 1000, prediction_type=prediction)
    schedule = spec.noise_schedule()
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 250, 500, 900, 999])
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    model = linear_model(0.5)
    out = diffusion_loss(model, x0, spec, t, noise, snr_gamma=gamma, return_details=True)
    target = {"epsilon": noise, "v_prediction": schedule.velocity(x0, t, noise), "sample": x0}[prediction]
    snr = compute_snr(reference, t).double()
    weights = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    weights = {"epsilon": weights / snr, "v_prediction": weights / (snr + 1), "sample": weights}[prediction]
    expected = (F.mse_loss(out.prediction, target, reduction="none").mean(dim=(1, 2, 3, 4)) * weights).mean()
    # diffusers' float32 alphas_cumprod against our float64 tables: relative 1e-5
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=0)


def test_min_snr_weighting_properties():
    spec = DiffusionSpec("linear", 1000)
    schedule = spec.noise_schedule()
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(4, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    model = linear_model(0.3)
    # every step with SNR <= gamma (all noisy steps) keeps its plain x0-loss weight of SNR
    t = torch.tensor([600, 700, 800, 999])
    assert bool((schedule.snr(t, dtype=torch.float64) <= 1.0).all())
    assert spec.prediction_type == "epsilon"
    plain = diffusion_loss(model, x0, spec, t, noise)
    weighted = diffusion_loss(model, x0, spec, t, noise, snr_gamma=1.0)
    torch.testing.assert_close(weighted, plain)
    # a per-frame mask: the weighted loss only sees unmasked entries, per sample
    mask = torch.zeros(4, 1, 2, 1, 1, dtype=torch.float64)
    mask[:, :, 1] = 1
    base = diffusion_loss(model, x0, spec, t, noise, mask=mask, snr_gamma=5.0, return_details=True)

    def perturbed(x_t, tt):
        out = model(x_t, tt).clone()
        out[:, :, 0] += 100.0  # masked frame
        return out

    torch.testing.assert_close(diffusion_loss(perturbed, x0, spec, t, noise, mask=mask, snr_gamma=5.0), base.loss)
    for bad in (0, -1.0, float("inf"), True, "5"):
        with pytest.raises(ValueError, match="snr_gamma"):
            diffusion_loss(model, x0, spec, t, noise, snr_gamma=bad)
