import argparse

import pytest

from reference_models.common.cli import (
    MODEL_CONFIG_KEYS,
    add_sampling_arguments,
    check_checkpoint_kind,
    fps_condition,
    parse_override,
    positive_fps,
    train_config_from_args,
)


def flags(**kw):
    base = dict(
        steps=400,
        batch_size=8,
        lr=1e-3,
        warmup_steps=50,
        ema_decay=None,
        precision="fp32",
        log_every=50,
        sample_every=None,
        ckpt_every=1000,
        out="runs/x",
        seed=3,
        num_workers=0,
        device="cpu",
        no_progress=True,
    )
    return argparse.Namespace(**{**base, **kw})


def test_train_config_defaults_follow_the_run_length():
    cfg = train_config_from_args(flags(steps=20))
    assert cfg.steps == 20 and cfg.warmup_steps == 20 and cfg.log_every == 20 and cfg.sample_every == 20
    assert cfg.ema_decay == pytest.approx(0.5) and not cfg.progress and str(cfg.out_dir) == "runs/x"
    assert train_config_from_args(flags(steps=10**6)).ema_decay == 0.9999
    assert train_config_from_args(flags(ema_decay=0.9, sample_every=0)).ema_decay == 0.9


def test_optional_flags_reach_the_config_only_when_the_parser_has_them():
    plain = train_config_from_args(flags())
    extra = train_config_from_args(flags(cosine=True, grad_clip=0.5, grad_checkpointing=True), out_dir="runs/ae")
    assert (extra.cosine, extra.grad_clip, extra.grad_checkpointing) == (True, 0.5, True)
    assert (plain.cosine, plain.grad_checkpointing) == (False, False) and str(extra.out_dir) == "runs/ae"


def test_sampling_arguments_and_overrides():
    p = argparse.ArgumentParser()
    add_sampling_arguments(p, out="o", device="cpu")
    args = p.parse_args(["--seed", "2", "--no-ema"])
    assert (args.seed, args.device, args.no_ema, args.out) == (2, "cpu", True, "o")
    assert parse_override("channel_mult=[1,2]") == ("channel_mult", (1, 2))
    assert parse_override("schedule=linear") == ("schedule", "linear")
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_override("nothing")


def test_rate_types_reject_what_a_sampler_cannot_use():
    p = argparse.ArgumentParser()
    p.add_argument("--fps", type=positive_fps)
    p.add_argument("--cond", type=fps_condition)
    assert p.parse_args(["--fps", "29.97", "--cond", "0"]).cond == 0.0
    for flag, bad in (
        ("--fps", "0"),
        ("--fps", "-1"),
        ("--fps", "inf"),
        ("--fps", "x"),
        ("--cond", "-0.5"),
        ("--cond", "nan"),
    ):
        with pytest.raises(SystemExit):
            p.parse_args([flag, bad])


def test_checkpoint_kind_names_what_another_checkpoint_holds(tmp_path):
    from torch import nn

    from reference_models.common.checkpoint import save_checkpoint

    config = {"model": {"pvdm_diffusion": {"base_channels": 8}, "preset": "tiny", "data": {}}}
    save_checkpoint(tmp_path / "diff", model=nn.Linear(1, 1), step=3, config=config)
    path, found = check_checkpoint_kind(tmp_path / "diff", "pvdm_diffusion", "a PVDM diffusion")
    assert path.is_file() and found["model"]["preset"] == "tiny"
    with pytest.raises(
        ValueError,
        match=r"is not an ETC checkpoint \(it holds a PVDM diffusion U-Net; "
        r"config\['model'\] keys: 'pvdm_diffusion', 'preset', 'data'\)",
    ):
        check_checkpoint_kind(tmp_path / "diff", "etc", "an ETC")
    save_checkpoint(tmp_path / "bare", model=nn.Linear(1, 1), step=1, config={"train": {}})
    with pytest.raises(ValueError, match=r"it holds no model config"):
        check_checkpoint_kind(tmp_path / "bare", "etc", "an ETC")
    save_checkpoint(tmp_path / "custom", model=nn.Linear(1, 1), step=1, config={"model": {"custom": {}}})
    with pytest.raises(ValueError, match=r"no model config a sampler here knows; config\['model'\] keys: 'custom'"):
        check_checkpoint_kind(tmp_path / "custom", "evdm", "an EVDM")
    with pytest.raises(FileNotFoundError):
        check_checkpoint_kind(tmp_path / "missing", "etc", "an ETC")
    assert {"etc", "evdm", "pvdm_autoencoder", "pvdm_diffusion", "cmd_ae", "cmd_content", "cmd_motion"} == set(
        MODEL_CONFIG_KEYS
    )


def test_training_clis_refuse_an_out_dir_of_another_run_before_reading_data(tmp_path):
    import torch

    from reference_models.common.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "checkpoints", model=torch.nn.Linear(2, 2), step=3)
    with pytest.raises(SystemExit, match="already holds 1 checkpoint.*--resume.*--out"):
        train_config_from_args(flags(out=str(tmp_path)))
    assert train_config_from_args(flags(out=str(tmp_path), resume=True)).out_dir == str(tmp_path)
