"""CMD's three training stages and the sampler: each short run lowers its loss, checkpoints hold the
config, the sampling CLI chains content -> motion -> decode into videos, runs resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from reference_models.cmd import sample as sample_mod
from reference_models.cmd import sampling as sampling_mod
from reference_models.cmd import train as train_mod
from reference_models.cmd.autoencoder import CMDAutoencoder, pack_motion
from reference_models.cmd.config import get_config
from reference_models.cmd.content_model import build_native_content_model
from reference_models.cmd.motion_model import MotionDiT
from reference_models.cmd.sampling import (
    load_autoencoder,
    load_content_model,
    load_motion_model,
    sample_videos,
)
from reference_models.common.checkpoint import latest_checkpoint, load_checkpoint
from reference_models.common.video_io import read_video
from vdblocks.diffusion import diffusion_loss

# 4 frames of 16x24 pixels (non-square), everything one or two blocks deep.
OVERRIDES = {
    "frames": 4,
    "height": 16,
    "width": 24,
    "ae_patch": 4,
    "ae_dim": 16,
    "ae_depth": 1,
    "ae_heads": 2,
    "ae_dim_head": 8,
    "motion_channels": 2,
    "content_dit_patch": 4,
    "content_dit_dim": 32,
    "content_dit_depth": 1,
    "content_dit_heads": 2,
    "motion_patch": 2,
    "content_patch": 8,
    "motion_dim": 32,
    "motion_depth": 1,
    "motion_heads": 2,
    "content_unet_channels": 16,
    "content_unet_mult": [1, 2],
}
STEPS = 30


def flags(stage, out, ae=None, steps=STEPS, *extra):
    sets = [f"--set={k}={json.dumps(v)}" for k, v in OVERRIDES.items()] if stage == "ae" else []
    return [
        "--stage",
        stage,
        *sets,
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "3",
        "--log-every",
        "1",
        "--sample-steps",
        "2",
        "--num-samples",
        "2",
        "--num-videos",
        "64",
        "--device",
        "cpu",
        "--no-progress",
        *(["--ae", str(ae)] if ae else []),
        *extra,
    ]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three stages, trained briefly one after the other."""
    root = tmp_path_factory.mktemp("cmd_runs")
    states = {}
    for stage in train_mod.STAGES:
        torch.manual_seed(0)
        states[stage] = train_mod.main(flags(stage, root / stage, None if stage == "ae" else root / "ae"))
    return root, states


def fixed_batch(cfg):
    args = train_mod.build_parser().parse_args(flags("ae", "unused"))
    dataset = train_mod.build_dataset(args, cfg)
    return torch.stack([dataset[i]["video"] for i in range(16)]), torch.tensor([dataset[i]["label"] for i in range(16)])


def denoising_loss(fn, x0, cfg):
    """The denoising loss at fixed timesteps and noise, against the target ``cfg.diffusion`` names."""
    g = torch.Generator().manual_seed(1)
    t = torch.linspace(50, 950, x0.shape[0]).long()
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        return float(diffusion_loss(fn, x0, cfg.diffusion, t, noise))


def test_each_short_stage_lowers_its_loss(runs):
    _, states = runs
    ae = states["ae"].model.eval()
    cfg = ae.cfg
    video, labels = fixed_batch(cfg)
    torch.manual_seed(0)  # the stage builds its model right after seeding with --seed 0
    fresh_ae = CMDAutoencoder(cfg).eval()
    with torch.no_grad():
        assert (ae(video)[0] - video).pow(2).mean() < 0.8 * (fresh_ae(video)[0] - video).pow(2).mean()
        latents = ae.encode(video)
    content_model = states["content"].model.eval()
    torch.manual_seed(0)
    fresh_content = build_native_content_model(cfg).eval()
    x0 = content_model.normalizer.normalize(latents.content)
    trained = denoising_loss(lambda x, t: content_model(x, t, labels=labels), x0, cfg)
    assert trained < 0.9 * denoising_loss(lambda x, t: fresh_content(x, t, labels=labels), x0, cfg)
    motion_model = states["motion"].model.eval()
    torch.manual_seed(0)
    fresh_motion = MotionDiT(cfg).eval()
    z0 = motion_model.normalizer.normalize(latents.motion)
    trained = denoising_loss(lambda z, t: motion_model(z, t, latents.content, labels=labels), z0, cfg)
    assert trained < 0.9 * denoising_loss(lambda z, t: fresh_motion(z, t, latents.content, labels=labels), z0, cfg)
    # The logged training loss of the autoencoder falls too. (The diffusion stages' logged losses are
    # at random timesteps and noises, too noisy over 30 steps; the fixed-batch checks above are theirs.)
    for state in states.values():
        assert len(state.history) == STEPS
    losses = [row["loss"] for row in states["ae"].history]
    assert sum(losses[-5:]) < sum(losses[:5])


def test_checkpoints_hold_the_config_and_the_normalisers(runs):
    root, states = runs
    for stage in train_mod.STAGES:
        ckpt = load_checkpoint(latest_checkpoint(root / stage / "checkpoints"))
        assert ckpt.step == STEPS
        assert ckpt.config["model"][f"cmd_{stage}"] == states["ae"].model.cfg.to_dict()
        assert ckpt.config["model"]["stage"] == stage
    motion, _ = load_motion_model(root / "motion")
    assert torch.isfinite(motion.normalizer.bound) and float(motion.normalizer.scale) != 1.0
    content, _, _ = load_content_model(root / "content")
    assert torch.isfinite(content.normalizer.bound)
    assert (root / "ae" / "samples" / f"step{STEPS:06d}_ae_grid.png").is_file()
    assert (root / "content" / "samples" / f"step{STEPS:06d}_content_grid.png").is_file()
    assert (root / "motion" / "samples" / f"step{STEPS:06d}_motion_00.mp4").is_file()


def test_sampling_chains_content_motion_and_decoder(runs, tmp_path):
    root, _ = runs
    written = sample_mod.main(
        [
            "--ae",
            str(root / "ae"),
            "--content",
            str(root / "content"),
            "--motion",
            str(root / "motion"),
            "--labels",
            "0,3",
            "--guidance",
            "4.0",
            "--content-steps",
            "2",
            "--motion-steps",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    videos = [p for p in written if p.suffix == ".mp4"]
    assert len(videos) == 2 and (tmp_path / "cmd_grid.png").is_file() and (tmp_path / "cmd_content_grid.png").is_file()
    for path in videos:
        frames, _, _ = read_video(path)
        assert frames.shape == (OVERRIDES["frames"], 16, 24, 3)
    ae, _ = load_autoencoder(root / "ae")
    content_model, _, _ = load_content_model(root / "content")
    motion_model, _ = load_motion_model(root / "motion")
    out = sample_videos(
        ae,
        content_model,
        motion_model,
        labels=torch.tensor([1, 2]),
        content_steps=2,
        motion_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.video.shape == (2, 3, 4, 16, 24) and out.content.shape == (2, 3, 16, 24)
    assert out.z.shape == (2, 2, 4, 4 + 6) and torch.isfinite(out.video).all()
    # The decoded video is the autoencoder's decoding of exactly the sampled latents.
    with torch.no_grad():
        torch.testing.assert_close(out.video, ae.decode_motion(out.content, out.z))


def test_resume_continues_each_stage(runs, tmp_path):
    root, _ = runs
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    state = train_mod.main(flags("motion", copy / "motion", copy / "ae", STEPS + 2, "--resume"))
    assert state.step == STEPS + 2
    assert [row["step"] for row in state.history] == [STEPS + 1, STEPS + 2]


def test_diffusion_stages_need_an_autoencoder_and_matching_shapes(runs, tmp_path):
    root, _ = runs
    with pytest.raises(ValueError, match="needs --ae"):
        train_mod.main(flags("content", tmp_path / "c"))
    with pytest.raises(ValueError, match="different shapes"):
        train_mod.main(flags("motion", tmp_path / "m", root / "ae", 1, "--set=frames=6"))


def test_cached_latents_are_the_autoencoder_outputs(runs):
    root, _ = runs
    ae, _ = load_autoencoder(root / "ae")
    args = train_mod.build_parser().parse_args(flags("ae", "unused"))
    dataset = torch.utils.data.Subset(train_mod.build_dataset(args, ae.cfg), range(5))
    cache = train_mod.encode_clips(ae, dataset, batch_size=2)
    video = torch.stack([dataset[i]["video"] for i in range(5)])
    with torch.no_grad():
        latents = ae.encode(video)
    torch.testing.assert_close(cache.content, latents.content)
    torch.testing.assert_close(pack_motion(cache.z_x, cache.z_y), latents.motion)
    assert cache.labels.tolist() == [dataset[i]["label"] for i in range(5)]


# ----------------------------------------------------------------------------- CLI argument checks


def other_checkpoint(directory, key):
    """A checkpoint whose manifest stores only ``config['model'][key]`` (any system or stage)."""
    from torch import nn

    from reference_models.common.checkpoint import save_checkpoint

    save_checkpoint(directory, model=nn.Linear(1, 1), step=1, config={"model": {key: {"preset": "tiny"}}})
    return str(directory)


def test_sample_cli_names_what_each_checkpoint_holds_when_it_is_the_wrong_one(tmp_path):
    keys = ("cmd_ae", "cmd_content", "cmd_motion", "etc")
    ae, content, motion, etc = (other_checkpoint(tmp_path / k, k) for k in keys)
    cases = [
        ((etc, content, motion), r"--ae: .* is not a CMD autoencoder checkpoint \(it holds an ETC model"),
        ((ae, motion, content), r"--content: .* is not a CMD content-model checkpoint \(it holds a CMD motion model"),
        ((ae, content, ae), r"--motion: .* is not a CMD motion-model checkpoint \(it holds a CMD autoencoder"),
    ]
    for (a, c, m), message in cases:
        with pytest.raises(SystemExit, match=message):
            sample_mod.main(["--ae", a, "--content", c, "--motion", m, "--out", str(tmp_path / "out")])


def test_sample_cli_rejects_a_zero_fps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sample_mod.build_parser().parse_args(["--ae", "a", "--content", "c", "--motion", "m", "--fps", "0"])
    assert exit_info.value.code == 2 and "expected a positive frame rate" in capsys.readouterr().err


@pytest.mark.parametrize("clip", [True, False])
def test_content_clips_as_the_spec_says_and_motion_always_clips(clip, monkeypatch):
    """One spec for both models: the content frame follows its ``clip_sample`` (pixels: on, SD
    latents: off), the normalised motion latents are always clipped to the normaliser's bound."""
    cfg = get_config("tiny", **{"diffusion.clip_sample": clip})
    seen = []

    def spy(model_fn, shape, spec, steps, **kwargs):
        seen.append((spec, kwargs.get("clip_range", 1.0)))
        return torch.zeros(shape)

    monkeypatch.setattr(sampling_mod, "sample_ddim", spy)
    sampling_mod.sample_content(build_native_content_model(cfg), cfg, labels=[0], steps=1)
    motion = MotionDiT(cfg)
    sampling_mod.sample_motion(motion, torch.zeros(1, cfg.channels, cfg.height, cfg.width), labels=[0], steps=1)
    (content_spec, _), (motion_spec, motion_range) = seen
    assert content_spec == cfg.diffusion
    assert motion_spec == cfg.diffusion.replace(clip_sample=True) and motion_range == 1.0  # normaliser not fitted


@pytest.mark.timeout(180)
def test_run_trains_stages_from_configs(tmp_path):
    """``train.run`` goes from configs to checkpoints without flags; later stages take the AE's config."""
    from reference_models.common.trainer import TrainConfig

    def train_cfg(stage):
        return TrainConfig(steps=2, batch_size=4, lr=1e-3, log_every=1, out_dir=tmp_path / stage, progress=False)

    small = dict(num_videos=8, num_samples=2, sample_steps=2)
    ae = train_mod.run(get_config("tiny", **OVERRIDES), train_cfg("ae"), stage="ae", **small)
    motion = train_mod.run(None, train_cfg("motion"), stage="motion", ae=tmp_path / "ae", **small)
    for stage, state in (("ae", ae), ("motion", motion)):
        assert state.step == 2
        assert latest_checkpoint(tmp_path / stage / "checkpoints") == state.last_checkpoint
    assert load_motion_model(tmp_path / "motion")[0].cfg.frames == OVERRIDES["frames"]
