"""PVDM's long-video diffusion: the lambda-mixed objective trains both the conditional and the null
path, and Algorithm 1's sampler chains clips, each conditioned on the one before."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from reference_models.pvdm.autoencoder import PVDMAutoencoder
from reference_models.pvdm.config import get_autoencoder_config, get_diffusion_config
from reference_models.pvdm.diffusion import draw_cond_mask, pvdm_loss
from reference_models.pvdm.sampling import generate_long_video, sample_latents, sample_long_latents
from reference_models.pvdm.unet import TriplaneUNet

GRID = (2, 3, 2)
N = 3 * 2 + 2 * 2 + 2 * 3
SMALL = dict(
    latent_channels=2,
    base_channels=8,
    channel_mult=(1, 2),
    attn_resolutions=(2,),
    num_res_blocks=1,
    heads=2,
    latent_frames=2,
    latent_height=3,
    latent_width=2,
)


class Spy(nn.Module):
    """Stands in for the U-Net: records (cond, cond_mask) of every call and returns a small,
    condition-dependent eps, so the sampled latent of a clip reflects what it was conditioned on."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.w = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, z_t, t, cond=None, cond_mask=None, grid=None):
        self.calls.append({"cond": None if cond is None else cond.clone(), "mask": cond_mask, "grid": grid})
        c = torch.zeros_like(z_t) if cond is None else cond
        return 0.1 * z_t + 0.3 * c + self.w


def pairs(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"z1": torch.rand(b, 2, N, generator=g) * 2 - 1, "z2": torch.rand(b, 2, N, generator=g) * 2 - 1}


def test_table6_schedule_is_ldm_linear_in_sqrt_beta():
    sched = get_diffusion_config("pvdm_s").diffusion.noise_schedule()
    betas = sched.betas
    assert len(betas) == 1000
    assert betas[0].item() == pytest.approx(0.0015) and betas[-1].item() == pytest.approx(0.0195)
    root = betas.sqrt()
    torch.testing.assert_close(
        root[1:] - root[:-1],
        torch.full((999,), (root[-1] - root[0]).item() / 999, dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


@given(p=st.sampled_from([0.0, 0.3, 0.5, 1.0]))
def test_condition_mask_has_probability_lambda(p):
    mask = draw_cond_mask(4000, p, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (4000,)
    assert abs(mask.float().mean().item() - p) < 0.04
    with pytest.raises(ValueError, match=r"cond_prob in \[0, 1\]"):
        draw_cond_mask(3, 1.5)


def test_loss_passes_the_previous_clip_as_condition_and_noises_only_the_next():
    spy = Spy(get_diffusion_config("tiny", **SMALL))
    batch = pairs(b=64)
    loss = pvdm_loss(spy, batch, torch.Generator().manual_seed(0), grid=GRID)
    assert loss.ndim == 0 and torch.isfinite(loss)
    call = spy.calls[-1]
    assert torch.equal(call["cond"], batch["z1"]) and call["grid"] == GRID
    mask = call["mask"]
    assert mask.any() and not mask.all()  # lambda = 0.5: both paths in one batch


def _fit(cond_prob: float, steps: int = 25) -> tuple[float, float]:
    """Fit a small U-Net on fixed pairs with one path only; return (loss before, loss after) of
    that path on fixed noise and timesteps."""
    torch.manual_seed(0)
    cfg = get_diffusion_config("tiny", **SMALL, cond_prob=cond_prob)
    net = TriplaneUNet(cfg)
    batch = pairs(b=8, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def evaluate() -> float:
        with torch.no_grad():
            return pvdm_loss(net, batch, torch.Generator().manual_seed(123), grid=GRID).item()

    before = evaluate()
    for step in range(steps):
        loss = pvdm_loss(net, batch, torch.Generator().manual_seed(step % 3), grid=GRID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, evaluate()


@pytest.mark.parametrize("cond_prob", [1.0, 0.0], ids=["conditional", "null"])
def test_conditional_and_null_paths_both_train(cond_prob):
    before, after = _fit(cond_prob)
    assert after < before


def test_long_sampler_conditions_each_clip_on_the_previous_one():
    spy = Spy(get_diffusion_config("tiny", **SMALL))
    clips, first, nxt = 4, 3, 2
    latents = sample_long_latents(
        spy, 2, clips, grid=GRID, first_steps=first, next_steps=nxt, generator=torch.Generator().manual_seed(0)
    )
    assert len(latents) == clips and all(z.shape == (2, 2, N) for z in latents)
    calls = spy.calls
    assert len(calls) == first + (clips - 1) * nxt  # N steps for the first clip, M for each later one
    assert all(c["cond"] is None for c in calls[:first])  # the first clip: the null condition
    for k in range(1, clips):
        for c in calls[first + (k - 1) * nxt : first + k * nxt]:
            torch.testing.assert_close(c["cond"], latents[k - 1])  # clip k sees clip k-1's clean latent
    # ... and the condition shows in the result: clip k moves with clip k-1
    again = sample_long_latents(
        spy,
        2,
        2,
        grid=GRID,
        first_steps=first,
        next_steps=nxt,
        first=latents[0] + 1.0,
        generator=torch.Generator().manual_seed(0),
    )
    alone = sample_long_latents(
        spy,
        2,
        2,
        grid=GRID,
        first_steps=first,
        next_steps=nxt,
        first=latents[0],
        generator=torch.Generator().manual_seed(0),
    )
    assert not torch.allclose(again[1], alone[1])


def test_long_video_has_clips_times_frames_frames_and_decodes_each_clip():
    torch.manual_seed(0)
    ae = PVDMAutoencoder(
        get_autoencoder_config(
            "tiny",
            channels=1,
            frames=2,
            height=6,
            width=4,
            patch_size=(1, 2, 2),
            dim=8,
            encoder_depth=1,
            decoder_depth=1,
            heads=1,
            dim_head=8,
            proj_depth=1,
            proj_heads=1,
            proj_mlp_dim=8,
            latent_channels=2,
        )
    ).eval()
    spy = Spy(get_diffusion_config("tiny", **SMALL))
    video, latents = generate_long_video(
        spy, ae, 2, 3, first_steps=2, next_steps=2, return_latents=True, generator=torch.Generator().manual_seed(0)
    )
    assert video.shape == (2, 1, 3 * 2, 6, 4)
    for k, z in enumerate(latents):
        with torch.no_grad():
            torch.testing.assert_close(video[:, :, 2 * k : 2 * k + 2], ae.decode_packed(z, GRID))
    # any clip size the patches divide: the grid follows the video size
    video = generate_long_video(spy, ae, 1, 2, frames=3, height=4, width=8, first_steps=1, next_steps=1)
    assert video.shape == (1, 1, 6, 4, 8)


def test_sampler_rejects_bad_arguments():
    spy = Spy(get_diffusion_config("tiny", **SMALL))
    with pytest.raises(ValueError, match="sampler"):
        sample_latents(spy, 1, grid=GRID, sampler="euler")
    with pytest.raises(ValueError, match=r"cond of shape \(b, c, n\)"):
        sample_latents(spy, 2, grid=GRID, cond=torch.zeros(2, 2, N + 1), steps=1)
    with pytest.raises(ValueError, match="clips"):
        sample_long_latents(spy, 1, 0, grid=GRID)
    with pytest.raises(TypeError, match="TriplaneUNet"):
        sample_latents(nn.Linear(2, 2), 1, grid=GRID)
    ddpm = sample_latents(spy, 1, grid=GRID, sampler="ddpm", steps=3, generator=torch.Generator().manual_seed(0))
    assert ddpm.shape == (1, 2, N) and ddpm.abs().max() <= 10


def test_clip_datasets_cut_consecutive_clips_and_name_the_layout_when_too_short():
    from reference_models.pvdm.data import ClipPairs, VideoClips

    video = torch.arange(2 * 5 * 2 * 2, dtype=torch.float32).reshape(2, 5, 2, 2)  # (c, t, h, w)
    videos = [{"video": video}]
    pair = ClipPairs(videos, 2)[0]
    assert torch.equal(pair["x1"], video[:, :2]) and torch.equal(pair["x2"], video[:, 2:4])
    assert torch.equal(VideoClips(videos, 5)[0]["video"], video)
    with pytest.raises(ValueError, match=r"\(c, t, h, w\) with t >= 2T = 6"):
        ClipPairs(videos, 3)[0]
    with pytest.raises(ValueError, match=r"\(c, t, h, w\) with t >= 6"):
        VideoClips(videos, 6)[0]
