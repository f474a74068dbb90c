"""PVDM's two training stages and the sampling CLI end to end, at toy size: the autoencoder with its
GAN and a TorchScript perceptual network, the latent cache, a resumed diffusion run that reuses the
cache, checkpoints that name their autoencoder, and a long sample of clips x T frames on disk."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from reference_models.common.checkpoint import load_checkpoint, read_checkpoint_config
from reference_models.common.video_io import read_video
from reference_models.pvdm import sample as sample_mod
from reference_models.pvdm import sampling as sampling_mod
from reference_models.pvdm import train as train_mod
from reference_models.pvdm.config import get_autoencoder_config
from reference_models.pvdm.data import (
    ClipPairs,
    LatentPairs,
    read_cache_meta,
    videos_from_record,
)

AE_SETS = dict(
    frames=2,
    height=8,
    width=12,
    patch_size=[1, 4, 4],
    dim=8,
    encoder_depth=1,
    decoder_depth=1,
    heads=1,
    dim_head=8,
    proj_depth=1,
    proj_heads=1,
    proj_mlp_dim=8,
    latent_channels=2,
    use_gan=True,
    gan_start=1,
    disc_channels=4,
    disc_layers=1,
)
# The perceptual network is a TorchScript file, the format LPIPS ports ship in; torch 2.13 warns
# that TorchScript is deprecated, which is not what these tests are about.
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"), pytest.mark.usefixtures("one_thread")]

DIFF_SETS = dict(base_channels=8, channel_mult=[1], attn_resolutions=[1], num_res_blocks=1, heads=2)


def sets(overrides):
    return [f"--set={k}={json.dumps(v)}" for k, v in overrides.items()]


COMMON = [
    "--batch-size",
    "4",
    "--num-videos",
    "8",
    "--device",
    "cpu",
    "--no-progress",
    "--log-every",
    "1",
    "--warmup-steps",
    "1",
    "--num-samples",
    "1",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Stage 1 (2 steps, GAN on from step 1, a TorchScript perceptual net), then stage 2 (2 steps)."""
    root = tmp_path_factory.mktemp("pvdm")
    net = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    net.save(str(root / "features.pt"))
    ae = train_mod.main(
        [
            "--stage",
            "ae",
            "--out",
            str(root / "ae"),
            "--steps",
            "2",
            *sets(AE_SETS),
            *COMMON,
            "--perceptual",
            str(root / "features.pt"),
        ]
    )
    diff = train_mod.main(
        [
            "--stage",
            "diffusion",
            "--autoencoder",
            str(root / "ae"),
            "--out",
            str(root / "diff"),
            "--steps",
            "2",
            *sets(DIFF_SETS),
            *COMMON,
            "--clips",
            "3",
            "--first-steps",
            "2",
            "--next-steps",
            "1",
        ]
    )
    return root, ae, diff


def test_autoencoder_stage_trains_with_gan_and_perceptual_terms_and_writes_reconstructions(runs):
    root, ae, _ = runs
    assert ae.step == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in ae.history)
    assert int(ae.model.step) == 2  # the GAN's step counter follows the trainer
    assert ae.model.perceptual is not None
    _, config = read_checkpoint_config(root / "ae")
    assert config["model"]["pvdm_autoencoder"]["patch_size"] == [1, 4, 4]
    assert (root / "ae" / "samples" / "step000002_recon_grid.png").is_file()
    psnr = json.loads((root / "ae" / "samples" / "step000002_recon_metrics.json").read_text())["psnr"]
    assert psnr > 0


def test_diffusion_stage_caches_latents_of_consecutive_clip_pairs(runs):
    root, _, diff = runs
    cache = root / "diff" / "latents.safetensors"
    latents = LatentPairs(cache)
    assert len(latents) == 8 and latents.grid == (2, 2, 3)
    assert latents[0]["z1"].shape == (2, 2 * 3 + 2 * 3 + 2 * 2)
    assert latents.z1.abs().max() <= 1 and latents.z2.abs().max() <= 1
    # the cache holds f_phi of the first and second half of each 2T-frame video
    ae, _ = sampling_mod.load_autoencoder(root / "ae")
    record = read_cache_meta(cache)["description"]["data"]
    pairs = ClipPairs(videos_from_record(record, ae.cfg, 4), 2)
    item = pairs[3]
    with torch.no_grad():
        torch.testing.assert_close(ae.encode_packed(item["x1"][None])[0], latents[3]["z1"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ae.encode_packed(item["x2"][None])[0], latents[3]["z2"], atol=1e-5, rtol=1e-4)
    assert diff.step == 2
    _, config = read_checkpoint_config(root / "diff")
    model_cfg = config["model"]
    assert model_cfg["pvdm_diffusion"]["latent_channels"] == 2  # tied to the autoencoder
    assert (
        model_cfg["pvdm_diffusion"]["latent_frames"],
        model_cfg["pvdm_diffusion"]["latent_height"],
        model_cfg["pvdm_diffusion"]["latent_width"],
    ) == (2, 2, 3)
    assert model_cfg["autoencoder"]["checkpoint"].endswith("step_00000002.json")
    frames, _, _ = read_video(root / "diff" / "samples" / "step000002_long_00.mp4")
    assert frames.shape[:3] == (3 * 2, 8, 12)


def test_resumed_diffusion_run_reuses_the_cache_and_continues(runs):
    root, _, _ = runs
    cache = root / "diff" / "latents.safetensors"
    stamp = cache.stat().st_mtime_ns
    state = train_mod.main(
        [
            "--stage",
            "diffusion",
            "--autoencoder",
            str(root / "ae"),
            "--out",
            str(root / "diff"),
            "--steps",
            "3",
            *sets(DIFF_SETS),
            *COMMON,
            "--sample-every",
            "0",
            "--resume",
        ]
    )
    assert state.step == 3
    assert cache.stat().st_mtime_ns == stamp
    assert load_checkpoint(root / "diff").step == 3


def test_sample_cli_writes_long_videos_of_clips_times_frames(runs, tmp_path):
    root, _, _ = runs
    written = sample_mod.main(
        [
            "--checkpoint",
            str(root / "diff"),
            "--clips",
            "4",
            "--first-steps",
            "2",
            "--next-steps",
            "1",
            "--num-samples",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ]
    )
    videos = [p for p in written if p.suffix == ".mp4"]
    assert len(videos) == 2 and (tmp_path / "long_grid.png").is_file()
    frames, _, _ = read_video(videos[0])
    assert frames.shape[:3] == (4 * 2, 8, 12)


def test_stage_arguments_are_checked(runs, tmp_path):
    root, _, _ = runs
    with pytest.raises(SystemExit, match="--autoencoder"):
        train_mod.main(["--stage", "diffusion", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="autoencoder preset"):
        train_mod.main(["--stage", "ae", "--preset", "pvdm_s", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="contradicts the autoencoder"):
        train_mod.main(
            [
                "--stage",
                "diffusion",
                "--autoencoder",
                str(root / "ae"),
                "--out",
                str(tmp_path),
                "--set",
                "latent_channels=4",
            ]
        )
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        get_autoencoder_config("tiny", height=10)


# ----------------------------------------------------------------------------- CLI argument checks


def other_checkpoint(directory, key):
    """A checkpoint whose manifest stores only ``config['model'][key]`` (any system or stage)."""
    from reference_models.common.checkpoint import save_checkpoint

    save_checkpoint(directory, model=nn.Linear(1, 1), step=1, config={"model": {key: {"preset": "tiny"}}})
    return directory


@pytest.mark.parametrize(
    "key,holds", [("etc", "an ETC model"), ("evdm", "an EVDM U-Net"), ("cmd_content", "a CMD content-frame model")]
)
def test_sample_cli_says_another_systems_checkpoint_is_not_a_pvdm_diffusion_one(key, holds, tmp_path):
    ckpt = other_checkpoint(tmp_path / key, key)
    with pytest.raises(SystemExit, match=rf"is not a PVDM diffusion checkpoint \(it holds {holds}") as exit_info:
        sample_mod.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out")])
    assert "give --autoencoder" not in str(exit_info.value)


def test_sample_cli_tells_the_two_pvdm_stages_apart(tmp_path):
    ae = other_checkpoint(tmp_path / "ae", "pvdm_autoencoder")
    diffusion = other_checkpoint(tmp_path / "diffusion", "pvdm_diffusion")
    with pytest.raises(SystemExit, match=r"holds a PVDM autoencoder; .*--stage diffusion"):
        sample_mod.main(["--checkpoint", str(ae)])
    with pytest.raises(
        SystemExit,
        match=r"--autoencoder: .* is not a PVDM autoencoder checkpoint \(it holds a PVDM "
        r"diffusion U-Net",
    ):
        sample_mod.main(["--checkpoint", str(diffusion), "--autoencoder", str(diffusion)])
    with pytest.raises(SystemExit, match="give --autoencoder"):  # a diffusion run that names no autoencoder
        sample_mod.main(["--checkpoint", str(diffusion)])


def test_sample_cli_rejects_a_zero_fps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sample_mod.build_parser().parse_args(["--checkpoint", "runs/pvdm", "--fps", "0"])
    assert exit_info.value.code == 2 and "expected a positive frame rate" in capsys.readouterr().err


@pytest.mark.timeout(180)
def test_run_trains_both_stages_from_configs(tmp_path):
    """``train.run`` goes from configs to checkpoints without flags; the diffusion config takes its
    latent width and grid from the autoencoder."""
    from reference_models.common.checkpoint import latest_checkpoint
    from reference_models.common.trainer import TrainConfig
    from reference_models.pvdm.config import get_diffusion_config

    def train_cfg(stage):
        return TrainConfig(steps=2, batch_size=4, lr=1e-3, log_every=1, out_dir=tmp_path / stage, progress=False)

    ae_cfg = get_autoencoder_config("tiny", **{**AE_SETS, "use_gan": False})
    ae = train_mod.run(ae_cfg, train_cfg("ae"), stage="ae", num_videos=8, num_samples=1)
    diff = train_mod.run(
        get_diffusion_config("tiny", **DIFF_SETS),
        train_cfg("diff"),
        stage="diffusion",
        autoencoder=tmp_path / "ae",
        num_samples=1,
        clips=2,
        first_steps=2,
        next_steps=2,
    )
    for stage, state in (("ae", ae), ("diff", diff)):
        assert state.step == 2
        assert latest_checkpoint(tmp_path / stage / "checkpoints") == state.last_checkpoint
    model_cfg = read_checkpoint_config(tmp_path / "diff")[1]["model"]["pvdm_diffusion"]
    assert model_cfg["latent_channels"] == AE_SETS["latent_channels"]
