"""EVDM training and sampling: clip splitting, eq. 7's masks in the loss, one model for three tasks,
autoregressive extension, a short training run, checkpoints, sample videos and the sampling CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from reference_models.common.checkpoint import latest_checkpoint, load_checkpoint
from reference_models.common.video_io import read_video
from reference_models.evdm import sample as sample_mod
from reference_models.evdm import sampling as sampling_mod
from reference_models.evdm import train as train_mod
from reference_models.evdm.config import get_config
from reference_models.evdm.data import (
    EVDMClips,
    check_clip,
    data_record,
    moving_shapes_videos,
    split_clip,
    videos_from_record,
)
from reference_models.evdm.model import EVDMUNet
from reference_models.evdm.sampling import (
    generate,
    interpolate,
    load_model,
    predict,
    predict_long,
    sample_frames,
)
from reference_models.evdm.train import draw_condition_masks, evdm_loss

# A very small EVDM (BRP + temporal enhancement + mixed attention): two levels of 8 and 16 channels,
# 2 past, 2 current and 1 future frame of 16x16, masks 0.5 / 0.5 (the tiny preset's).
OVERRIDES = {
    "base_channels": 8,
    "head_channels": 8,
    "channel_mult": [1, 2],
    "attn_levels": [1],
    "num_res_blocks": 1,
    "image_size": 16,
}
STEPS = 40


def tiny_cfg(**kw):
    merged = {**OVERRIDES, **kw}
    return get_config("tiny_evdm", **{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})


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
        "--sampler",
        "ddim",
        "--sample-steps",
        "2",
        "--num-samples",
        "2",
        "--num-videos",
        "64",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    """A tiny EVDM with random (not zero-initialised) branches, so every input reaches the output."""
    torch.manual_seed(0)
    model = EVDMUNet(tiny_cfg()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def frames(b, t, seed, size=16):
    return torch.rand(b, 1, t, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


FAST = dict(sampler="ddim", steps=3)


# ----------------------------------------------------------------------------- data


@given(p=st.integers(0, 3), t=st.integers(1, 3), f=st.integers(0, 2), extra=st.integers(0, 2), batched=st.booleans())
def test_split_clip_cuts_past_current_future_in_time_order(p, t, f, extra, batched):
    total = p + t + f + extra
    video = torch.arange(total, dtype=torch.float32).view(1, total, 1, 1).expand(2, total, 3, 3)  # c t h w
    if batched:
        video = video.unsqueeze(0)
    past, current, future = split_clip(video, p, t, f)
    for part, start, count in ((past, 0, p), (current, p, t), (future, p + t, f)):
        assert part.shape[-3] == count
        assert part[..., 0, 0].flatten(0, -2)[0].tolist() == list(range(start, start + count))


def test_split_clip_and_check_clip_reject_bad_clips():
    with pytest.raises(ValueError, match=r"t >= P \+ T \+ F"):
        split_clip(torch.zeros(1, 4, 8, 8), 2, 2, 1)
    cfg = tiny_cfg()
    good = {
        "past": torch.zeros(1, 2, 16, 16),
        "current": torch.zeros(1, 2, 16, 16),
        "future": torch.zeros(1, 1, 16, 16),
    }
    check_clip(cfg, good)
    with pytest.raises(ValueError, match=r"\(c, t, h, w\) with c=1, t=2"):
        check_clip(cfg, {**good, "past": torch.zeros(1, 3, 16, 16)})
    with pytest.raises(ValueError, match="multiples of 2"):
        check_clip(cfg, {k: v[..., :15, :15] for k, v in good.items()})


@pytest.mark.parametrize("channels", [1, 3])
def test_clips_from_moving_shapes_are_grayscale_or_rgb(channels):
    cfg = tiny_cfg(channels=channels)
    clips = EVDMClips.from_config(moving_shapes_videos(cfg, 5, num_samples=4), cfg)
    item = clips[1]
    assert item["past"].shape == (channels, 2, 16, 16) and item["future"].shape == (channels, 1, 16, 16)
    assert item["current"].min() >= -1 and item["current"].max() <= 1
    held_out = videos_from_record(data_record(num_samples=4), cfg, 5, held_out=True)
    assert not torch.equal(held_out[1]["video"], moving_shapes_videos(cfg, 5, num_samples=4)[1]["video"])


# ----------------------------------------------------------------------------- eq. 7's masks in the loss


def test_condition_masks_drop_each_condition_with_probability_one_half():
    cfg = tiny_cfg()
    past, future = draw_condition_masks(4000, cfg, generator=torch.Generator().manual_seed(0))
    assert past.dtype == torch.bool and past.shape == future.shape == (4000,)
    assert abs(past.float().mean().item() - 0.5) < 0.04
    assert abs(future.float().mean().item() - 0.5) < 0.04
    assert abs((past & future).float().mean().item() - 0.25) < 0.04  # independent: each task a quarter
    again = draw_condition_masks(4000, cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(past, again[0]) and torch.equal(future, again[1])
    kept, _ = draw_condition_masks(100, tiny_cfg(prob_mask_past=0.0), generator=torch.Generator().manual_seed(1))
    dropped, _ = draw_condition_masks(100, tiny_cfg(prob_mask_past=1.0), generator=torch.Generator().manual_seed(1))
    assert kept.all() and not dropped.any()
    assert draw_condition_masks(3, tiny_cfg(num_future=0, prob_mask_future=0.0))[1] is None


class Spy(nn.Module):
    """Records what the loss passes to the model; returns a differentiable zero-ish eps."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, past=None, future=None, past_mask=None, future_mask=None):
        self.calls.append(dict(x=x, t=t, past=past, future=future, past_mask=past_mask, future_mask=future_mask))
        return x * self.w


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_gives_the_model_clean_conditions_and_the_drawn_masks(prediction_type):
    cfg = tiny_cfg(**{"diffusion.prediction_type": prediction_type})
    schedule = cfg.diffusion.noise_schedule()
    batch = {"past": frames(16, 2, 0), "current": frames(16, 2, 1), "future": frames(16, 1, 2)}
    spy = Spy()
    loss = evdm_loss(spy, batch, torch.Generator().manual_seed(5), cfg=cfg)
    call = spy.calls[0]
    masks = draw_condition_masks(16, cfg, generator=torch.Generator().manual_seed(5))
    assert torch.equal(call["past_mask"], masks[0]) and torch.equal(call["future_mask"], masks[1])
    assert call["past"] is batch["past"] and call["future"] is batch["future"]  # not noised
    assert not torch.equal(call["x"], batch["current"])  # the current frames are
    loss.backward()
    assert spy.w.grad is not None
    # a zero prediction's loss is the mean square of the target the prediction type names
    t = call["t"]
    x_t = call["x"]
    noise = schedule.predict_eps(x_t, t, batch["current"])
    target = noise if prediction_type == "epsilon" else schedule.velocity(batch["current"], t, noise)
    assert loss.item() == pytest.approx(target.pow(2).mean().item(), rel=1e-4)
    again = Spy()
    assert evdm_loss(again, batch, torch.Generator().manual_seed(5), cfg=cfg).item() == loss.item()


def test_loss_reaches_every_parameter(model):
    cfg = model.cfg
    batch = {"past": frames(4, 2, 0), "current": frames(4, 2, 1), "future": frames(4, 1, 2)}
    model.train()
    model.zero_grad()
    loss = evdm_loss(model, batch, torch.Generator().manual_seed(3), cfg=cfg)
    loss.backward()
    model.eval()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


# ----------------------------------------------------------------------------- one model, three tasks


def test_generation_ignores_past_and_future_content(model):
    a, b = frames(2, 2, 10), frames(2, 2, 11)
    fa, fb = frames(2, 1, 12), frames(2, 1, 13)
    off = torch.zeros(2)

    def run(**kw):
        return sample_frames(model, generator=torch.Generator().manual_seed(0), **FAST, **kw)

    masked_a = run(past=a, future=fa, past_mask=off, future_mask=off)
    masked_b = run(past=b, future=fb, past_mask=off, future_mask=off)
    assert torch.equal(masked_a, masked_b)
    assert torch.equal(masked_a, generate(model, 2, generator=torch.Generator().manual_seed(0), **FAST))
    # the same model with the masks on uses what it is given
    assert not torch.allclose(
        predict(model, a, generator=torch.Generator().manual_seed(0), **FAST),
        predict(model, b, generator=torch.Generator().manual_seed(0), **FAST),
    )
    assert not torch.allclose(
        interpolate(model, a, fa, generator=torch.Generator().manual_seed(0), **FAST),
        interpolate(model, a, fb, generator=torch.Generator().manual_seed(0), **FAST),
    )


def test_one_batch_mixes_tasks_per_sample(model):
    past, future = frames(3, 2, 20), frames(3, 1, 21)
    mixed = sample_frames(
        model,
        past=past,
        future=future,
        past_mask=torch.tensor([1, 1, 0]),
        future_mask=torch.tensor([1, 0, 0]),
        generator=torch.Generator().manual_seed(4),
        **FAST,
    )
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    assert torch.allclose(mixed[0], interpolate(model, past, future, generator=g(), **FAST)[0], atol=1e-5)
    assert torch.allclose(mixed[1], predict(model, past, generator=g(), **FAST)[1], atol=1e-5)
    assert torch.allclose(mixed[2], generate(model, 3, generator=g(), **FAST)[2], atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_return_clipped_frames_of_the_right_shape(model, sampler):
    out = predict(model, frames(2, 2, 30), sampler=sampler, steps=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 2, 16, 16) and out.min() >= -1 and out.max() <= 1
    assert generate(model, 1, height=8, width=24, sampler=sampler, steps=2).shape == (1, 1, 2, 8, 24)


def test_tasks_reject_conditions_the_model_lacks():
    no_future = EVDMUNet(tiny_cfg(num_future=0, prob_mask_future=0.0))
    with pytest.raises(ValueError, match="num_future=0"):
        interpolate(no_future, frames(1, 2, 0), frames(1, 1, 1), **FAST)
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\) with c=1, t=2"):
        predict(no_future, frames(1, 3, 0), **FAST)
    with pytest.raises(ValueError, match=r"t >= P=2"):
        predict_long(no_future, frames(1, 1, 0), 4, **FAST)


class Oracle(nn.Module):
    """Predicts the noise (or velocity, as the config says) whose x_0 is ``last past frame + 0.1 k``
    for current frame ``k = 1..T`` (zeros when no past is given), so deterministic DDIM returns
    exactly that x_0."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.schedule = cfg, cfg.diffusion.noise_schedule()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.pasts = []

    def forward(self, x, t, past=None, future=None, past_mask=None, future_mask=None):
        self.pasts.append(None if past is None else past.clone())
        last = past[:, :, -1:] if past is not None else torch.zeros_like(x[:, :, :1])
        steps = 0.1 * torch.arange(1, x.shape[2] + 1, dtype=x.dtype).view(1, 1, -1, 1, 1)
        x0 = (last + steps).expand_as(x)
        eps = self.schedule.predict_eps(x, t, x0)
        return self.schedule.velocity(x0, t, eps) if self.cfg.diffusion.prediction_type == "v_prediction" else eps


@given(total=st.integers(1, 7))
def test_predict_long_conditions_each_chunk_on_the_previous_frames(total):
    oracle = Oracle(tiny_cfg())
    past = torch.full((2, 1, 3, 16, 16), -0.9)
    past[:, :, :2] = 0.5  # only the last P=2 frames may matter
    out = predict_long(oracle, past, total, sampler="ddim", steps=2)
    assert out.shape == (2, 1, total, 16, 16)
    expected = torch.tensor([-0.9 + 0.1 * k for k in range(1, total + 1)])
    assert torch.allclose(out[0, 0, :, 0, 0], expected, atol=1e-4)
    chunks = -(-total // 2)
    firsts = oracle.pasts[::2]  # two DDIM steps per chunk
    assert len(oracle.pasts) == 2 * chunks
    assert torch.equal(firsts[0], past[:, :, 1:])  # the given frames' last P
    for i in range(1, chunks):  # then the chunk just generated (T = P = 2)
        assert torch.allclose(firsts[i], out[:, :, 2 * i - 2 : 2 * i], atol=1e-6)


def test_generate_longer_than_one_chunk_continues_from_the_first():
    oracle = Oracle(tiny_cfg())
    out = generate(oracle, 1, num_frames=5, sampler="ddim", steps=2)
    assert out.shape == (1, 1, 5, 16, 16)
    assert torch.allclose(out[0, 0, :, 0, 0], torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), atol=1e-4)
    assert oracle.pasts[0] is None  # the first chunk sees no conditions
    with pytest.raises(ValueError, match="0 < P <= T"):
        generate(Oracle(tiny_cfg(num_past=3)), 1, num_frames=5, **FAST)


# ----------------------------------------------------------------------------- training and the CLI


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short training run shared by the tests below."""
    out = tmp_path_factory.mktemp("evdm_run")
    state = train_mod.main(flags(out))
    return out, state


def fixed_batch_loss(model, cfg, batch):
    """Eval loss (against the config's prediction target) with fixed timesteps, noise and masks (all
    four tasks, a quarter each)."""
    schedule = cfg.diffusion.noise_schedule()
    g = torch.Generator().manual_seed(1)
    x0 = batch["current"]
    t = torch.linspace(50, 950, x0.shape[0]).long()
    noise = torch.randn(x0.shape, generator=g)
    keep = torch.arange(x0.shape[0])
    with torch.no_grad():
        pred = model.eval()(
            schedule.q_sample(x0, t, noise),
            t,
            past=batch["past"],
            future=batch["future"],
            past_mask=keep % 2 == 0,
            future_mask=keep % 4 < 2,
        )
    target = noise if cfg.diffusion.prediction_type == "epsilon" else schedule.velocity(x0, t, noise)
    return float((pred - target).pow(2).mean())


def test_short_training_lowers_the_loss(run):
    out, state = run
    cfg = state.model.cfg
    dataset = EVDMClips.from_config(videos_from_record(data_record(num_samples=64), cfg, 5), cfg)
    batch = {k: torch.stack([dataset[i][k] for i in range(16)]) for k in ("past", "current", "future")}
    torch.manual_seed(0)  # main builds the model right after seeding with --seed
    initial = EVDMUNet(cfg)  # as main builds it: initialised in __init__
    assert fixed_batch_loss(state.model, cfg, batch) < 0.8 * fixed_batch_loss(initial, cfg, batch)
    losses = [row["loss"] for row in state.history]
    assert len(losses) == STEPS and sum(losses[-5:]) < sum(losses[:5])


def test_run_writes_checkpoint_and_decodable_videos_for_every_task(run):
    out, state = run
    ckpt = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert ckpt.step == STEPS and ckpt.config["model"]["evdm"] == state.model.cfg.to_dict()
    samples = out / "samples"
    # past 2 + predicted 6 (3 T); past 2 + interpolated 2 + future 1; generated 2 + 6
    for task, count in (("predict", 8), ("interpolate", 5), ("generate", 8)):
        assert (samples / f"step{STEPS:06d}_{task}_grid.png").is_file()
        for stem in [task] + ([f"{task}_real"] if task != "generate" else []):
            for i in range(2):
                video, _, _ = read_video(samples / f"step{STEPS:06d}_{stem}_{i:02d}.mp4")
                assert video.shape == (count, 16, 16, 3)
    scores = json.loads((samples / f"step{STEPS:06d}_predict_metrics.json").read_text())
    assert {"psnr", "ssim", "mse", "copy_last_psnr", "mean_frame_psnr", "copy_last_ssim"} <= set(scores)
    assert scores["ssim"] <= 1
    between = json.loads((samples / f"step{STEPS:06d}_interpolate_metrics.json").read_text())
    assert {"copy_last_psnr", "mean_frame_psnr", "blend_psnr"} <= set(between)
    lines = train_mod.baseline_report(samples, STEPS, ["predict", "interpolate", "generate"])
    assert len(lines) == 1 + 2 * 2 and all("vs copy-last" in line for line in lines[1:])


def test_baselines_are_the_trivial_guesses_they_name():
    g = torch.Generator().manual_seed(0)
    past, future = torch.rand(2, 1, 3, 4, 4, generator=g), torch.rand(2, 1, 2, 4, 4, generator=g)
    guesses = sampling_mod.baseline_predictions(past, 4, future=future)
    assert all(v.shape == (2, 1, 4, 4, 4) for v in guesses.values())
    assert torch.equal(guesses["copy_last"], past[:, :, -1:].expand(-1, -1, 4, -1, -1))
    torch.testing.assert_close(guesses["mean_frame"][:, :, 0], torch.cat([past, future], 2).mean(2))
    # the cross-fade runs from the last past frame towards the first future frame, in even steps
    steps = guesses["blend"].diff(dim=2)
    torch.testing.assert_close(steps, ((future[:, :, :1] - past[:, :, -1:]) / 5).expand_as(steps))
    assert set(sampling_mod.baseline_predictions(past, 2)) == {"copy_last", "mean_frame"}
    # a perfect copy scores infinite PSNR, so a model must beat the copy where the copy is imperfect
    still = past[:, :, -1:].expand(-1, -1, 3, -1, -1)
    from reference_models.common.metrics import trajectory_metrics

    scores = trajectory_metrics(guesses["copy_last"][None, :, :, :3], still)
    assert torch.isinf(scores["psnr"]).all()


def test_sampling_cli_writes_videos_and_best_of_k_metrics(run, tmp_path):
    out, _ = run
    common = [
        "--checkpoint",
        str(out),
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--num-samples",
        "2",
        "--out",
        str(tmp_path),
    ]
    written = sample_mod.main([*common, "--task", "predict", "--frames", "3", "--trajectories", "2"])
    assert tmp_path / "predict_grid.png" in written
    for stem in ("predict", "predict_real"):
        video, _, _ = read_video(tmp_path / f"{stem}_01.mp4")
        assert video.shape == (5, 16, 16, 3)  # 2 past + 3 predicted (two chunks)
    scores = json.loads((tmp_path / "predict_metrics.json").read_text())
    assert scores["trajectories"] == 2 and scores["psnr"] > 0
    sample_mod.main([*common, "--task", "interpolate"])
    assert read_video(tmp_path / "interpolate_00.mp4")[0].shape[0] == 5
    sample_mod.main([*common, "--task", "generate", "--frames", "4"])
    assert (
        read_video(tmp_path / "generate_01.mp4")[0].shape[0] == 4 and not (tmp_path / "generate_real_00.mp4").exists()
    )


def test_load_model_uses_the_ema_weights(run):
    out, state = run
    model, ckpt = load_model(out)
    assert model.cfg == state.model.cfg and ckpt.step == STEPS
    ema = dict(ckpt.state["ema"]["shadow"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, ema[name])


def test_resume_flag_continues_the_run(run, tmp_path):
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    state = train_mod.main(flags(copy, STEPS + 2, "--resume", "--sample-every", "0"))
    assert [row["step"] for row in state.history] == [STEPS + 1, STEPS + 2]
    assert load_checkpoint(latest_checkpoint(copy / "checkpoints")).step == STEPS + 2


# ----------------------------------------------------------------------------- CLI argument checks


def other_checkpoint(directory, key):
    """A checkpoint of another system or stage: its manifest stores only ``config['model'][key]``."""
    from reference_models.common.checkpoint import save_checkpoint

    save_checkpoint(directory, model=nn.Linear(1, 1), step=1, config={"model": {key: {"preset": "tiny"}}})
    return directory


@pytest.mark.parametrize("fps", ["0", "-8", "nan"])
def test_sample_cli_rejects_a_rate_that_is_not_positive(fps, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sample_mod.build_parser().parse_args(["--checkpoint", "runs/evdm", "--fps", fps])
    assert exit_info.value.code == 2
    assert "--fps: expected a" in capsys.readouterr().err
    assert sample_mod.build_parser().parse_args(["--checkpoint", "x", "--fps", "2.5"]).fps == 2.5


def test_sample_cli_fps_zero_is_an_argparse_error_from_the_command_line():
    import subprocess
    import sys

    command = [sys.executable, "-m", "reference_models.evdm.sample", "--checkpoint", "nowhere", "--fps", "0"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "expected a positive frame rate, got '0'" in proc.stderr


@pytest.mark.parametrize(
    "key,holds",
    [("etc", "an ETC model"), ("pvdm_diffusion", "a PVDM diffusion U-Net"), ("cmd_motion", "a CMD motion model")],
)
def test_sample_cli_names_what_another_systems_checkpoint_holds(key, holds, tmp_path):
    ckpt = other_checkpoint(tmp_path / key, key)
    with pytest.raises(SystemExit, match=rf"--checkpoint: .* is not an EVDM checkpoint \(it holds {holds}; .*'{key}'"):
        sample_mod.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
