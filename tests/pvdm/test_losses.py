"""PVDM's autoencoder objective: the GAN terms (off in the tiny preset, tested here) route gradients to
the right player, switch on at gan_start, and the pluggable perceptual term behaves like a distance."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from reference_models.pvdm.config import get_autoencoder_config
from reference_models.pvdm.discriminator import PatchDiscriminator3D
from reference_models.pvdm.losses import (
    AutoencoderObjective,
    PerceptualLoss,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
)

SMALL = dict(
    channels=3,
    frames=4,
    height=8,
    width=8,
    patch_size=(1, 2, 2),
    dim=16,
    encoder_depth=1,
    decoder_depth=1,
    heads=2,
    dim_head=8,
    mlp_ratio=2.0,
    proj_depth=1,
    proj_heads=2,
    proj_mlp_dim=16,
    latent_channels=4,
    disc_channels=8,
    disc_layers=2,
)


def small_conv_net() -> nn.Module:
    """A random two-layer conv trunk standing in for LPIPS's VGG: frames -> two feature maps."""
    torch.manual_seed(5)

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1)

        def forward(self, x):
            f1 = torch.relu(self.a(x))
            return [f1, torch.relu(self.b(f1))]

    return Trunk()


def video(seed: int, b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, 4, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def grads(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in module.named_parameters()}


def nonzero(g: torch.Tensor | None) -> bool:
    return g is not None and bool(g.abs().sum() > 0)


@pytest.fixture()
def objective():
    torch.manual_seed(0)
    return AutoencoderObjective(
        get_autoencoder_config("tiny", **SMALL, use_gan=True, gan_start=0, perceptual_weight=1.0),
        perceptual=small_conv_net(),
    )


def test_gan_terms_are_finite_and_reach_each_player_as_intended(objective):
    x = video(0)
    terms = objective(x, return_terms=True)
    for key in ("loss", "l1", "l2", "perceptual", "g", "feature_match", "d"):
        assert torch.isfinite(terms[key]), key
    ae, d = objective.autoencoder, objective.discriminator

    # The generator's GAN terms reach the autoencoder and never the discriminator.
    (terms["g"] + terms["feature_match"]).backward(retain_graph=True)
    assert all(nonzero(g) for n, g in grads(ae).items() if n.endswith("weight"))
    assert all(not nonzero(g) for g in grads(d).values())
    objective.zero_grad(set_to_none=True)

    # The discriminator's hinge term reaches the discriminator and never the autoencoder.
    terms["d"].backward(retain_graph=True)
    assert all(g is None for g in grads(ae).values())
    # (the head's bias cancels exactly while every logit is inside the hinge: -1/2 + 1/2)
    assert all(nonzero(g) for n, g in grads(d).items() if n.endswith("weight"))
    objective.zero_grad(set_to_none=True)

    # The total: the discriminator's gradient is exactly the one of its own term (lambda_2-free),
    # the autoencoder's that of the generator terms (reconstruction + lambda_2 GAN).
    terms["loss"].backward(retain_graph=True)
    total_d, total_ae = grads(d), grads(ae)
    objective.zero_grad(set_to_none=True)
    terms["d"].backward(retain_graph=True)
    for name, g in grads(d).items():
        torch.testing.assert_close(total_d[name], g)
    objective.zero_grad(set_to_none=True)
    cfg = objective.cfg
    reconstruction = cfg.l1_weight * terms["l1"] + cfg.l2_weight * terms["l2"] + terms["perceptual"]
    (reconstruction + cfg.gan_weight * (terms["g"] + terms["feature_match"])).backward()
    for name, g in grads(ae).items():
        if g is not None:
            torch.testing.assert_close(total_ae[name], g)


def test_perceptual_network_is_frozen_and_outside_the_state_dict(objective):
    assert not any(k.startswith("perceptual") for k in objective.state_dict())
    assert all(not p.requires_grad for p in objective.perceptual.parameters())
    objective(video(1))["loss"].backward()
    assert all(p.grad is None for p in objective.perceptual.parameters())


def test_gan_weight_is_zero_before_gan_start_and_the_step_counter_advances():
    torch.manual_seed(0)
    obj = AutoencoderObjective(get_autoencoder_config("tiny", **SMALL, use_gan=True, gan_start=2, gan_weight=0.25))
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-3)
    weights = []
    for step in range(4):
        out = obj(video(step))
        weights.append(float(out["gan_weight"]))
        opt.zero_grad()
        out["loss"].backward()
        if step < 2:  # before the start, the discriminator gets zero (not missing) gradients
            assert all(p.grad is not None and not p.grad.any() for p in obj.discriminator.parameters())
        opt.step()
    assert weights == [0.0, 0.0, 0.25, 0.25]
    assert int(obj.step) == 4
    obj.eval()
    with torch.no_grad():
        obj(video(9))
    assert int(obj.step) == 4  # evaluation does not count as a training step
    assert "step" in obj.state_dict()  # saved with checkpoints, so resumes switch on at the same step


def test_a_few_adamw_steps_on_the_total_train_both_players_and_stay_finite(objective):
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in objective.named_parameters()}
    for step in range(3):
        out = objective(video(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        assert all(torch.isfinite(v) for v in out.values())
    moved = {n for n, p in objective.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("discriminator.") for n in moved) and any(n.startswith("autoencoder.") for n in moved)


@given(seed=st.integers(0, 50))
def test_perceptual_distance_is_zero_on_identical_videos_and_positive_otherwise(seed):
    loss = PerceptualLoss(small_conv_net())
    x, y = video(seed), video(seed + 1000)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, y).item() > 0
    assert loss(x, y).item() == pytest.approx(loss(y, x).item(), rel=1e-5)


def test_perceptual_rejects_bad_inputs_and_networks():
    loss = PerceptualLoss(small_conv_net())
    with pytest.raises(ValueError, match=r"same shape \(b, c, t, h, w\)"):
        loss(video(0), video(0)[:, :, :2])
    with pytest.raises(TypeError, match="nn.Module"):
        PerceptualLoss(lambda x: x)
    with pytest.raises(TypeError, match=r"\(n, k, ...\)"):
        PerceptualLoss(nn.Flatten(0))(video(0), video(1))


def test_hinge_losses_and_feature_matching_follow_their_formulas():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1) / 2))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    a = [torch.ones(2, 3), torch.zeros(4)]
    assert feature_matching_loss(a, [torch.zeros(2, 3), torch.zeros(4)]).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equally long"):
        feature_matching_loss(a, a[:1])


@given(t=st.integers(1, 9), h=st.integers(1, 12), w=st.integers(1, 12))
def test_discriminator_takes_any_video_size(t, h, w):
    torch.manual_seed(0)
    d = PatchDiscriminator3D(3, 4, 3)
    logits, feats = d(torch.randn(1, 3, t, h, w), return_features=True)
    assert logits.shape[:2] == (1, 1) and min(logits.shape[2:]) >= 1 and len(feats) == 4
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\) with c=3"):
        d(torch.randn(1, 1, t, h, w))
