"""ETC training and sampling: guidance, the loss falling, checkpoints, the sampling CLI, resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference_models.common.checkpoint import latest_checkpoint, load_checkpoint
from reference_models.common.video_io import read_video, save_frame_grid, write_video
from reference_models.etc import sample as sample_mod
from reference_models.etc import sampling as sampling_mod
from reference_models.etc import train as train_mod
from reference_models.etc.config import get_config
from reference_models.etc.data import collate_etc
from reference_models.etc.model import ETCSystem
from reference_models.etc.sampling import guided_model_fn, load_system, sample
from vdblocks.diffusion import diffusion_loss

# A very small ETC: two levels of 8 and 16 channels, 4 frames of 8x8.
OVERRIDES = {
    "model_channels": 8,
    "channel_mult": [1, 2],
    "attention_levels": [1],
    "num_head_channels": 8,
    "norm_groups": 4,
    "context_dim": 8,
    "text_heads": 2,
    "text_vocab_size": 64,
    "text_max_len": 6,
    "frames": 4,
    "height": 8,
    "width": 8,
}
STEPS = 40


def tiny_cfg(**kw):
    return get_config("tiny", **{k: tuple(v) if isinstance(v, list) else v for k, v in {**OVERRIDES, **kw}.items()})


def flags(out, steps=STEPS, *extra):
    sets = [f"--set={k}={json.dumps(v)}" for k, v in OVERRIDES.items()]
    return [
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
        "5",
        "--log-every",
        "1",
        "--sample-steps",
        "2",
        "--num-prompts",
        "2",
        "--num-videos",
        "64",
        "--num-images",
        "64",
        "--device",
        "cpu",
        "--no-progress",
        "--probe-clips",
        "0",
        *extra,
    ]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short training run shared by the tests below; it ends with the shapes probe on 6 held-out
    captions (2 DDIM steps), its probe cached in a temporary directory."""
    out = tmp_path_factory.mktemp("etc_run")
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VDBLOCKS_CACHE", str(tmp_path_factory.mktemp("probe_cache")))
        state = train_mod.main([*flags(out), "--probe-clips", "6", "--probe-steps", "2"])
    return out, state


def test_the_run_ends_with_the_probe_on_captions_it_did_not_sample(run):
    out, _ = run
    report = json.loads((out / "probe.json").read_text())
    grid = {line.strip() for p in (out / "samples").glob("*_captions.txt") for line in p.read_text().splitlines()}
    assert len(report["captions"]) == 6 == report["probe"]["num_clips"]
    assert not set(report["captions"]) & grid  # held out from the run's own sample grid
    for name in ("color", "kind", "size", "direction"):
        assert 0.0 <= report["probe"]["accuracy"][name] <= 1.0 and report["probe"]["counts"][name] == 6
    assert 0.0 <= report["probe"]["one_object_fraction"] <= 1.0


def fixed_batch_loss(system, batch, cfg):
    """Eval loss on a fixed batch with fixed timesteps and noise (no dropout), against the target
    the config's prediction type names."""
    g = torch.Generator().manual_seed(1)
    x0 = batch["video"]
    t = torch.linspace(50, 950, x0.shape[0]).long()
    noise = torch.randn(x0.shape, generator=g)
    labels, captions = train_mod.condition_inputs(batch, cfg)
    system.eval()

    def model_fn(x_t, timesteps):
        return system(x_t, timesteps, batch["fps"], labels, captions)

    with torch.no_grad():
        return float(diffusion_loss(model_fn, x0, cfg.diffusion, t, noise))


def test_short_training_lowers_the_loss(run):
    out, state = run
    cfg = state.model.cfg
    args = train_mod.build_parser().parse_args(flags(out))
    dataset = train_mod.build_dataset(args, cfg)
    batch = collate_etc([dataset[i] for i in range(16)])
    torch.manual_seed(args.seed)  # main builds the model right after seeding with --seed
    initial = ETCSystem(cfg)
    assert fixed_batch_loss(state.model, batch, cfg) < 0.8 * fixed_batch_loss(initial, batch, cfg)
    losses = [row["loss"] for row in state.history]
    assert len(losses) == STEPS and sum(losses[-5:]) < sum(losses[:5])
    assert state.step == STEPS


def test_run_writes_checkpoint_with_config_and_samples_for_every_rate(run):
    out, state = run
    ckpt = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert ckpt.step == STEPS
    model_config = ckpt.config["model"]
    assert model_config["etc"] == state.model.cfg.to_dict()
    captions = model_config["samples"]["captions"]
    assert len(captions) == 2 and all(captions)
    for rate in (8, 30, 120, 0):  # two video rates, a still, label groups
        grid = out / "samples" / f"step{STEPS:06d}_fps{rate}_grid.png"
        assert grid.is_file()
        frames, _, _ = read_video(out / "samples" / f"step{STEPS:06d}_fps{rate}_00.mp4")
        assert frames.shape == (OVERRIDES["frames"], 8, 8, 3)


def test_sampling_cli_writes_decodable_videos_with_the_requested_frames(run, tmp_path):
    out, _ = run
    written = sample_mod.main(
        [
            "--checkpoint",
            str(out),
            "--caption",
            "a red circle moving left",
            "--label",
            "1",
            "--fps",
            "8",
            "--fps",
            "0",
            "--frames",
            "6",
            "--steps",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    videos = [p for p in written if p.suffix == ".mp4"]
    assert len(videos) == 4 and (tmp_path / "fps8_grid.png").is_file() and (tmp_path / "fps0_grid.png").is_file()
    for path in videos:
        frames, _, _ = read_video(path)
        assert frames.shape == (6, 8, 8, 3)
    assert "a red circle moving left" in (tmp_path / "fps8_captions.txt").read_text()


def test_resume_flag_continues_the_run(run, tmp_path):
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    state = train_mod.main(flags(copy, STEPS + 2, "--resume"))
    assert state.step == STEPS + 2
    assert [row["step"] for row in state.history] == [STEPS + 1, STEPS + 2]  # only the new steps ran
    assert load_checkpoint(latest_checkpoint(copy / "checkpoints")).step == STEPS + 2


def test_training_on_user_folders(tmp_path):
    videos, images = tmp_path / "videos", tmp_path / "images"
    for k in range(2):
        write_video(videos / f"clip{k}.mp4", torch.rand(3, 80, 8, 8) * 2 - 1, 20)  # 4 s: fits 4 frames at 1 fps
    (videos / "captions.csv").write_text("file,caption\nclip0.mp4,a noisy clip\nclip1.mp4,another clip\n")
    for label in ("ants", "bees", "cats"):
        for k in range(4):
            save_frame_grid(images / label / f"{k}.png", torch.rand(3, 1, 8, 8) * 2 - 1, pad=0)
    out = tmp_path / "run"
    state = train_mod.main(
        flags(out, 2, "--data-videos", str(videos), "--data-images", str(images), "--batch-size", "4")
    )
    cfg = state.model.cfg
    assert state.step == 2 and cfg.num_classes == 3  # the label embedding fits the class folders
    stored = load_checkpoint(latest_checkpoint(out / "checkpoints")).config["model"]
    assert stored["samples"]["captions"] == ["a noisy clip", "another clip"]
    assert stored["samples"]["class_names"] == ["ants", "bees", "cats"]
    assert stored["data"]["ratios"][2] == 0  # no captioned images: no caption-image pairs
    assert (out / "samples" / "step000002_fps0_grid.png").is_file()


def test_load_system_uses_the_ema_weights(run):
    out, state = run
    system, ckpt = load_system(out)
    assert system.cfg == state.model.cfg and ckpt.step == STEPS
    ema = dict(ckpt.state["ema"]["shadow"])
    for name, value in system.state_dict().items():
        assert torch.equal(value, ema[name])


# ----------------------------------------------------------------------------- guidance and sampling


@pytest.fixture(scope="module")
def system():
    torch.manual_seed(0)
    system = ETCSystem(tiny_cfg()).eval()
    with torch.no_grad():  # leave the zero init, so conditional and null predictions differ
        for p in system.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return system


@given(scale=st.floats(-2.0, 9.0), seed=st.integers(0, 2**16))
def test_guidance_is_the_linear_combination_of_one_batched_call(system, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 700])
    fps = torch.tensor([8.0, 0.0])
    context = system.conditioner(labels=torch.tensor([-1, 2]), captions=["a red circle moving left", ""])
    null = system.conditioner.null_context(2)
    calls = []

    def counted(*args):
        calls.append(args[0].shape[0])
        return system.unet(*args)

    with torch.no_grad():
        guided = guided_model_fn(counted, context, null, fps, scale)(x, t)
        cond = system.unet(x, t, fps, context)
        uncond = system.unet(x, t, fps, null)
        one = guided_model_fn(system.unet, context, null, fps, 1.0)(x, t)
    assert calls == ([2] if scale == 1 else [4])  # conditional and null in one batch of 2b; scale 1: b
    assert torch.allclose(one, cond, atol=1e-5)  # scale 1 is the conditional model
    assert torch.allclose(guided, uncond + scale * (cond - uncond), atol=1e-4)
    assert not torch.allclose(cond, uncond, atol=1e-4)


def test_guidance_scale_one_runs_the_conditional_clips_alone(system):
    x, t, fps = torch.randn(3, 3, 4, 8, 8), torch.tensor([5, 500, 900]), torch.tensor([8.0, 30.0, 120.0])
    context = system.conditioner(captions=["a red circle moving left", "a blue square", ""])
    calls = []

    def counted(*args):
        calls.append(args[0].shape[0])
        return system.unet(*args)

    with torch.no_grad():
        out = guided_model_fn(counted, context, system.conditioner.null_context(3), fps, 1.0)(x, t)
        torch.testing.assert_close(out, system.unet(x, t, fps, context))
    assert calls == [3]


def test_sample_shapes_rates_and_determinism(system):
    def draw(seed, **kw):
        return sample(
            system.unet,
            system.conditioner,
            captions=["a blue square", "a red circle"],
            fps=[8.0, 120.0],
            steps=3,
            generator=torch.Generator().manual_seed(seed),
            **kw,
        )

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (2, 3, 4, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1 + 1e-6  # pixel model: DDIM's last step returns the clipped x0 estimate
    longer = draw(0, frames=7, height=8, width=16)  # any size the U-Net takes, without retraining
    assert longer.shape == (2, 3, 7, 8, 16)
    labelled = sample(system.unet, system.conditioner, labels=[0, 3], fps=0.0, steps=2)
    assert labelled.shape == (2, 3, 4, 8, 8)
    assert system.training is False
    with pytest.raises(ValueError, match=r"fps in \[0, 120\]"):
        sample(system.unet, system.conditioner, captions=["x"], fps=200.0, steps=2)
    with pytest.raises(ValueError, match="captions"):
        sample(system.unet, system.conditioner, fps=8.0, steps=2)
    with pytest.raises(ValueError, match="divisible"):
        sample(system.unet, system.conditioner, captions=["x"], fps=8.0, height=7, steps=2)


class OracleUNet(torch.nn.Module):
    """The exact denoiser of a data set holding one clip: the noise ``(x_t - sqrt(abar_t) x0) /
    sqrt(1 - abar_t)``, or its velocity when the config predicts velocities."""

    def __init__(self, cfg, clip):
        super().__init__()
        self.cfg, self.clip = cfg, clip
        self.schedule = cfg.diffusion.noise_schedule()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # sample() reads the device from a parameter

    def forward(self, x, timesteps, fps, context):
        clip = self.clip.expand_as(x)
        eps = self.schedule.predict_eps(x, timesteps, clip)
        if self.cfg.diffusion.prediction_type == "v_prediction":
            return self.schedule.velocity(clip, timesteps, eps)
        return eps


@pytest.mark.parametrize("guidance_scale", [1.0, 7.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampling_the_exact_denoiser_of_one_clip_returns_that_clip(system, guidance_scale, prediction_type):
    cfg = system.cfg.replace(**{"diffusion.prediction_type": prediction_type})
    clip = torch.rand(3, cfg.frames, cfg.height, cfg.width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = sample(
        OracleUNet(cfg, clip),
        system.conditioner,
        captions=["a", "b"],
        fps=[8.0, 30.0],
        steps=50,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.allclose(out, clip.expand_as(out), atol=1e-4)


def test_condition_inputs_route_each_kind_to_its_condition():
    batch = {
        "label": torch.tensor([-1, 3, -1]),
        "caption": ["a clip", "circle", "a still"],
        "kind": ["video", "label_images", "caption_image"],
    }
    labels, captions = train_mod.condition_inputs(batch, tiny_cfg())
    assert labels.tolist() == [-1, 3, -1] and captions == ["a clip", "", "a still"]
    labels, captions = train_mod.condition_inputs(batch, tiny_cfg(num_classes=None))
    assert labels is None and captions == ["a clip", "circle", "a still"]  # the class name as text


# ----------------------------------------------------------------------------- CLI argument checks


def test_sample_cli_checks_the_fps_condition_and_the_checkpoint_kind(tmp_path, capsys):
    from torch import nn

    from reference_models.common.checkpoint import save_checkpoint

    parser = sample_mod.build_parser()
    assert parser.parse_args(["--checkpoint", "x", "--fps", "0", "--fps", "120"]).fps == [0.0, 120.0]  # 0: labels
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--checkpoint", "x", "--fps", "-1"])
    assert exit_info.value.code == 2 and "expected a non-negative frame rate" in capsys.readouterr().err

    evdm = tmp_path / "evdm"
    save_checkpoint(evdm, model=nn.Linear(1, 1), step=1, config={"model": {"evdm": {"preset": "tiny"}, "preset": "x"}})
    with pytest.raises(
        SystemExit,
        match=r"--checkpoint: .* is not an ETC checkpoint \(it holds an EVDM U-Net; "
        r"config\['model'\] keys: 'evdm', 'preset'\)",
    ):
        sample_mod.main(["--checkpoint", str(evdm), "--label", "1"])

    cfg = tiny_cfg()
    etc = tmp_path / "etc"
    save_checkpoint(etc, model=ETCSystem(cfg), step=1, config={"model": {"etc": cfg.to_dict()}})
    with pytest.raises(SystemExit, match=r"--fps 240: this model takes rates in \[0, 120\]"):
        sample_mod.main(["--checkpoint", str(etc), "--label", "1", "--fps", "240", "--out", str(tmp_path / "out")])


def test_built_in_data_flags_restrict_scenes_and_the_probe_captions_follow():
    args = train_mod.build_parser().parse_args(
        [
            "--kinds",
            "cross",
            "triangle",
            "--colors",
            "red",
            "blue",
            "--directions",
            "up",
            "down",
            "--fps-choices",
            "4",
            "8",
            "--num-videos",
            "64",
            "--num-images",
            "64",
        ]
    )
    cfg = train_mod.build_config(args)
    dataset = train_mod.build_dataset(args, cfg)
    videos, labels, _ = dataset.sources
    assert (videos.kinds, videos.colors, videos.directions) == (("cross", "triangle"), ("red", "blue"), ("up", "down"))
    assert labels.kinds == ("cross", "triangle") and dataset.fps_choices == (4.0, 8.0)
    captions = sampling_mod.probe_captions(dataset, 8)
    assert len(set(captions)) == 8
    for caption in captions:
        words = caption.split()
        assert words[2] in ("red", "blue") and words[3] in ("cross", "triangle") and words[5] in ("up", "down")
    with pytest.raises(SystemExit):  # argparse refuses a name the data does not have
        train_mod.build_parser().parse_args(["--kinds", "hexagon"])
