"""The custom architecture example (CMD content frame + PVDM motion planes + EVDM-L plane U-Net + ETC
FPS conditioning): its modules' contracts, and ``main`` run end to end for a few steps."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference_models.common.checkpoint import read_checkpoint_config
from reference_models.common.probe import ProbeRecipe, ShapesProbe
from reference_models.common.video_io import read_video
from vdblocks import JointPlaneAttention

ROOT = Path(__file__).resolve().parents[1]


def _load_example():
    spec = importlib.util.spec_from_file_location("custom_architecture", ROOT / "examples" / "custom_architecture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses read ClassVar annotations through sys.modules
    spec.loader.exec_module(module)
    return module


ca = _load_example()

# Small enough for seconds on one thread; every size the default config divides still divides.
TINY = {
    "frames": 4,
    "size": 8,
    "ae_dim": 16,
    "ae_heads": 2,
    "motion_channels": 2,
    "model_channels": 8,
    "head_channels": 8,
    "emb_dim": 16,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _denoiser(channels=3, motion_channels=2, perturb=True, seed=0):
    """A tiny denoiser; ``perturb`` moves the zero-initialised branches off zero so that every input
    and every parameter reaches the output."""
    torch.manual_seed(seed)
    model = ca.PlaneDenoiser(channels, motion_channels, patch=2, model_channels=8, head_channels=8, emb_dim=16)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _planes(b, c, C, t, h, w, p=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, c, h * p, w * p, generator=g),
        torch.randn(b, C, t, w, generator=g),
        torch.randn(b, C, t, h, generator=g),
    ]


# ---------------------------------------------------------------------------------- autoencoder


@given(b=st.integers(1, 2), c=st.sampled_from([1, 3]), t=st.integers(1, 4), h=st.integers(1, 3), w=st.integers(1, 3))
def test_autoencoder_latents_and_reconstruction_shapes(b, c, t, h, w):
    torch.manual_seed(0)
    ae = ca.ContentMotionAutoencoder(c, dim=16, motion_channels=2, patch=2, heads=2)
    x = torch.rand(b, c, t, 2 * h, 2 * w) * 2 - 1
    with torch.no_grad():
        content, z_h, z_w = ae.encode(x)
        recon = ae.decode(content, z_h, z_w)
    assert content.shape == (b, c, 2 * h, 2 * w)
    assert z_h.shape == (b, 2, t, w) and z_w.shape == (b, 2, t, h)
    assert recon.shape == x.shape and torch.isfinite(recon).all()
    # CMD eq. 3: the content frame is a per-pixel convex combination of the frames.
    assert (content >= x.amin(dim=2) - 1e-6).all() and (content <= x.amax(dim=2) + 1e-6).all()
    assert z_h.abs().max() <= 1 and z_w.abs().max() <= 1  # PVDM's tanh codes


def test_autoencoder_content_of_a_static_clip_is_its_frame():
    torch.manual_seed(0)
    ae = ca.ContentMotionAutoencoder(3, dim=16, motion_channels=2, patch=2, heads=2)
    frame = torch.rand(2, 3, 1, 8, 6)
    with torch.no_grad():
        content, _, _ = ae.encode(frame.expand(-1, -1, 5, -1, -1))
    torch.testing.assert_close(content, frame[:, :, 0])


def test_autoencoder_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    ae = ca.ContentMotionAutoencoder(3, dim=16, motion_channels=2, patch=2, heads=2)
    x = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    torch.nn.functional.mse_loss(ae(x), x).backward()
    for name, p in ae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_autoencoder_rejects_malformed_video():
    ae = ca.ContentMotionAutoencoder(3, dim=16, motion_channels=2, patch=2, heads=2)
    with pytest.raises(ValueError, match=r"x of shape \(b, c, t, H, W\) with c=3"):
        ae.encode(torch.rand(1, 1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\) with h divisible by the patch size 2"):
        ae.encode(torch.rand(1, 3, 4, 7, 8))


# ------------------------------------------------------------------------------- latent layout


@given(
    shift=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
    scale=st.lists(st.floats(0.1, 3), min_size=3, max_size=3),
    b=st.integers(1, 3),
)
def test_latent_layout_round_trip_and_standardisation(shift, scale, b):
    cfg = ca.CustomConfig(**TINY)
    layout = ca.LatentLayout(cfg, shift=shift, scale=scale)
    planes = _planes(b, cfg.channels, cfg.motion_channels, cfg.frames, cfg.latent_size, cfg.latent_size)
    z = layout.pack(planes)
    assert z.shape == (b, layout.numel)
    for got, want in zip(layout.unpack(z), planes):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Each plane's own shift maps to 0 in diffusion units, whatever the other planes hold.
    for i in range(3):
        lifted = [p.clone() for p in planes]
        lifted[i] = torch.full_like(planes[i], shift[i])
        assert torch.allclose(layout.unpack(layout.pack(lifted), standardized=True)[i], torch.zeros(()), atol=1e-5)
    with pytest.raises(ValueError, match=rf"z of shape \(b, n\) with n={layout.numel}"):
        layout.unpack(z[:, 1:])


# ------------------------------------------------------------------------------------ denoiser


# Even sizes (one 2x downsampling) that leave the lower level more than one pixel per plane, which
# GroupNorm needs.
grid = st.sampled_from([4, 6])


@given(b=st.integers(1, 2), c=st.sampled_from([1, 3]), t=grid, h=grid, w=grid)
def test_denoiser_keeps_every_plane_shape(b, c, t, h, w):
    model = _denoiser(channels=c)
    planes = _planes(b, c, 2, t, h, w)
    with torch.no_grad():
        out = model(planes, torch.randint(0, 1000, (b,)), torch.full((b,), 8.0))
    assert [o.shape for o in out] == [p.shape for p in planes]
    assert all(torch.isfinite(o).all() for o in out)


def test_denoiser_every_parameter_gets_a_finite_gradient():
    model = _denoiser().train()
    planes = _planes(2, 3, 2, 4, 4, 2)  # non-square grid: z_h and z_w differ in size
    out = model(planes, torch.tensor([10, 900]), torch.tensor([4.0, 30.0]))
    sum(o.pow(2).mean() for o in out).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_planes_meet_only_in_the_joint_attention():
    # Convolutions run plane by plane (several planes in one batch, but GroupNorm is per sample),
    # so with the attention outputs zeroed a motion prediction cannot depend on the content
    # frame; PVDM's joint attention is what couples them.
    model = _denoiser()
    planes = _planes(2, 3, 2, 4, 4, 4)
    other = [torch.randn_like(planes[0]), *planes[1:]]
    t, fps = torch.tensor([100, 500]), torch.tensor([8.0, 8.0])
    with torch.no_grad():
        coupled = [model(p, t, fps) for p in (planes, other)]
        for module in model.modules():
            if isinstance(module, JointPlaneAttention):
                module.attn.to_out.weight.zero_()
                module.attn.to_out.bias.zero_()
        apart = [model(p, t, fps) for p in (planes, other)]
    for i in (1, 2):
        assert not torch.allclose(coupled[0][i], coupled[1][i], atol=1e-5)
        torch.testing.assert_close(apart[0][i], apart[1][i])


def test_joint_attention_switches_to_favor_on_long_token_counts():
    model = _denoiser()
    plan = model.attention_plan(8, 8, 8)  # 192 tokens, then 48: lambda * d = 2 * 8 = 16 and 16
    assert [n for n, _ in plan] == [192, 48]
    assert {algo for _, algo in plan} == {"favor"}
    big_heads = ca.PlaneDenoiser(3, 2, patch=2, model_channels=64, head_channels=64, emb_dim=16)
    assert [algo for _, algo in big_heads.attention_plan(8, 8, 8)] == ["favor", "softmax"]  # 192 > 128 >= 48


def test_fps_conditioning_starts_as_identity_and_then_steers():
    planes, t = _planes(1, 3, 2, 4, 4, 4), torch.tensor([300])
    fresh, trained = _denoiser(perturb=False), _denoiser()
    with torch.no_grad():
        for o4, o16 in zip(fresh(planes, t, torch.tensor([4.0])), fresh(planes, t, torch.tensor([16.0]))):
            assert torch.equal(o4, o16)  # the FPS MLP's last layer starts at zero (identity branch)
        slow, fast = trained(planes, t, torch.tensor([4.0])), trained(planes, t, torch.tensor([16.0]))
    assert any(not torch.allclose(a, b, atol=1e-5) for a, b in zip(slow, fast))


def test_denoiser_rejects_malformed_planes():
    model = _denoiser()
    planes = _planes(1, 3, 2, 4, 4, 4)
    t, fps = torch.tensor([1]), torch.tensor([8.0])
    with pytest.raises(ValueError, match=r"content of shape \(b, c, H, W\) with c=3"):
        model([planes[0][:, :1], *planes[1:]], t, fps)
    with pytest.raises(ValueError, match=r"z_w of shape \(b, C, t, h\) with C=2"):
        model([*planes[:2], planes[2][:, :1]], t, fps)
    with pytest.raises(ValueError, match=r"fps values in \[0, 120\]"):
        model(planes, t, torch.tensor([500.0]))


def test_config_rejects_sizes_the_model_cannot_take():
    with pytest.raises(ValueError, match="size divisible by patch"):
        ca.CustomConfig(size=15)
    with pytest.raises(ValueError, match=r"frames = 3 divisible by 2"):
        ca.CustomConfig(frames=3)
    with pytest.raises(ValueError, match="fps_choices"):
        ca.CustomConfig(fps_choices=(0.0, 8.0))
    cfg = ca.CustomConfig(**TINY)
    assert ca.CustomConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ----------------------------------------------------------------------------------- end to end

# A probe trained in a second or two (tests/common/test_probe.py's CHEAP): its figures mean little,
# the test checks only that the example measures itself and writes the report.
CHEAP_PROBE = ProbeRecipe(num_clips=256, epochs=1, batch_size=64, hidden=32, features=16, heldout_clips=64)


@pytest.fixture
def cheap_probe(tmp_path, monkeypatch):
    """The example's probe with the cheap recipe, cached under ``tmp_path`` (never the user's cache)."""
    monkeypatch.setenv("VDBLOCKS_CACHE", str(tmp_path / "cache"))
    built = ShapesProbe.for_dataset
    monkeypatch.setattr(
        ca.ShapesProbe, "for_dataset", staticmethod(lambda data, **kwargs: built(data, recipe=CHEAP_PROBE, **kwargs))
    )


def test_probe_rate_is_8_fps_or_the_training_rate_nearest_it():
    assert ca.probe_rate(ca.CustomConfig()) == 8.0
    assert ca.probe_rate(ca.CustomConfig(fps_choices=(4.0, 16.0))) == 4.0  # a tie: the lower one
    assert ca.probe_rate(ca.CustomConfig(fps_choices=(2.0, 10.0, 30.0))) == 10.0


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_probe_clips_must_be_a_non_negative_int(value, capsys):
    with pytest.raises(SystemExit):
        ca.build_parser().parse_args(["--probe-clips", value])
    assert "--probe-clips: expected a non-negative integer (0 skips the probe)" in capsys.readouterr().err
    assert ca.build_parser().parse_args(["--probe-clips", "0"]).probe_clips == 0


@pytest.mark.timeout(300)
def test_main_trains_both_stages_and_writes_decodable_videos(tmp_path, capsys, cheap_probe):
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    run = tmp_path / "run"
    result = ca.main(
        [
            *sets,
            "--ae-steps",
            "40",
            "--steps",
            "30",
            "--batch-size",
            "8",
            "--num-videos",
            "32",
            "--fps",
            "4",
            "16",
            "--num-samples",
            "2",
            "--sample-steps",
            "3",
            "--out",
            str(run),
            "--device",
            "cpu",
            "--seed",
            "3",
            "--no-progress",
            "--probe-clips",
            "4",
        ]
    )
    ae_losses = [row["loss"] for row in result["autoencoder"].history if "loss" in row]
    den_losses = [row["loss"] for row in result["denoiser"].history if "loss" in row]
    assert ae_losses[-1] < ae_losses[0]
    # The denoiser's outputs start at zero, so its first loss is about E[v^2] = 1 (standardised
    # latents); what it learns in 30 steps must show.
    assert torch.isfinite(torch.tensor(den_losses)).all()
    assert sum(den_losses[-3:]) / 3 < den_losses[0]

    printed = capsys.readouterr().out
    for rate in (4, 16):
        path = run / "denoiser" / "samples" / f"fps{rate}_00.mp4"
        assert str(path) in printed
        frames, _, fps = read_video(path)
        assert frames.shape == (TINY["frames"], TINY["size"], TINY["size"], 3)
        assert fps == pytest.approx(rate, rel=0.05)
        assert (run / "denoiser" / "samples" / f"fps{rate}_grid.png").is_file()

    # Both checkpoints hold the config the models were built from.
    for stage in ("autoencoder", "denoiser"):
        _, config = read_checkpoint_config(run / stage)
        assert ca.CustomConfig.from_dict(config["model"]["custom"]) == ca.CustomConfig(**TINY)

    # Last, the run scores 4 more clips at 8 fps (a training rate; not one it was sampled at) with the probe.
    report = json.loads((run / "probe.json").read_text())
    assert report == json.loads(json.dumps(result["probe"]))
    assert set(report) == {"probe", "fps", "sampler", "run", "kind_distribution"}
    assert report["fps"] == 8.0 and report["sampler"]["steps"] == 3 and report["sampler"]["clips"] == 4
    assert report["run"]["seconds_to_here"] >= report["run"]["probe_seconds"] >= 0
    probe = report["probe"]
    assert probe["num_clips"] == 4 and probe["fps"] == [8.0] * 4 and probe["probe"] == "1x4x8x8"
    assert 0.0 <= probe["one_object_fraction"] <= 1.0
    assert probe["frechet_distance"] >= 0 and probe["frechet_floor"] >= 0
    assert all(v is None for v in probe["accuracy"].values())  # unconditional: nothing was asked for
    kinds = ["square", "circle", "triangle", "diamond", "cross"]  # MovingShapes' default kinds
    distribution = report["kind_distribution"]
    assert distribution["kinds"] == kinds
    assert list(distribution["fraction"]) == kinds and sum(distribution["fraction"].values()) == pytest.approx(1.0)
    assert distribution["fraction"] == {k: sum(p["kind"] == k for p in probe["predictions"]) / 4 for k in kinds}
    assert distribution["data_share"] == {k: 0.2 for k in kinds}
    assert (run / "probe_grid.png").is_file()
    assert f"probe: {run / 'probe.json'}" in printed and str(run / "probe_grid.png") in printed
    assert "one object in" in printed and "(data 20.0%)" in printed
