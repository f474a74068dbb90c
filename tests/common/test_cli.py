import argparse
import dataclasses
import importlib
import inspect

import pytest

from reference_models.common.cli import (
    MODEL_CONFIG_KEYS,
    OPTIONAL_TRAINING_FLAGS,
    TRAINING_FLAGS,
    add_sampling_arguments,
    add_training_arguments,
    check_checkpoint_kind,
    distributed_cli,
    fps_condition,
    parse_cli_args,
    parse_override,
    positive_fps,
    train_config_from_args,
)
from reference_models.common.distributed import DistInfo
from reference_models.common.trainer import TrainConfig


def flags(**kw):
    """The parsed flags of a training CLI (exactly what ``add_training_arguments`` declares), with ``kw``."""
    p = argparse.ArgumentParser()
    add_training_arguments(p, steps=400, batch_size=8, lr=1e-3, out="runs/x")
    base = vars(p.parse_args(["--seed", "3", "--device", "cpu", "--no-progress"]))
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


# Every system's training CLI: the flags it needs to parse, and flags that make main() fail before
# any data is read (an unknown config field, a later stage without its autoencoder).
TRAIN_CLIS = {
    "etc": ([], ["--set", "bogus_field=1"]),
    "evdm": ([], ["--set", "bogus_field=1"]),
    "pvdm": (["--stage", "ae"], ["--stage", "diffusion"]),
    "cmd": (["--stage", "ae"], ["--stage", "content"]),
}
# The optional training flags each CLI offers (the others train with TrainConfig's values).
OPTIONAL = {"etc": {"grad_checkpointing"}, "evdm": {"cosine"}, "pvdm": {"cosine", "grad_clip"}, "cmd": {"cosine"}}


def _train_module(system: str):
    return importlib.import_module(f"reference_models.{system}.train")


def _actions(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, str]]:
    """``dest -> (action, title of its --help group)``."""
    return {a.dest: (a, group.title) for group in parser._action_groups for a in group._group_actions}


def _signature(action: argparse.Action) -> tuple:
    return (
        type(action),
        action.option_strings,
        action.type,
        action.default,
        action.const,
        action.nargs,
        action.choices,
        action.metavar,
        action.required,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("system", sorted(TRAIN_CLIS))
def test_every_training_cli_takes_the_shared_flags_from_add_training_arguments(system, monkeypatch):
    mod = _train_module(system)
    calls = []

    def spy(parser, **kw):
        calls.append(kw)
        return add_training_arguments(parser, **kw)

    monkeypatch.setattr(mod, "add_training_arguments", spy)
    parser = mod.build_parser()
    assert len(calls) == 1 and {k: calls[0][k] for k in mod.TRAINING_DEFAULTS} == mod.TRAINING_DEFAULTS
    actions = _actions(parser)
    optional = [d for d in OPTIONAL_TRAINING_FLAGS if d in actions]
    assert set(TRAINING_FLAGS) <= set(actions) and set(optional) == OPTIONAL[system]
    # The same flags as a parser that only add_training_arguments built: names, types, defaults,
    # help (the system may add the paper's setting), and group.
    reference = argparse.ArgumentParser()
    add_training_arguments(reference, **mod.TRAINING_DEFAULTS, optional=optional)
    expected = _actions(reference)
    for dest in (*TRAINING_FLAGS, *optional):
        (action, group), (want, want_group) = actions[dest], expected[dest]
        assert group == want_group == ("samples" if dest == "sample_every" else "training"), dest
        assert _signature(action) == _signature(want), dest
        assert action.help == want.help or action.help.startswith(f"{want.help} (paper: "), dest
    # --help: the system's model and data groups, then training, then samples.
    titles = [g.title for g in parser._action_groups]
    training = titles.index("training")
    assert titles[training + 1] == "samples"
    assert "model" in titles[:training] and any(t.startswith("data") for t in titles[:training])


def _documented_default(mod, dest: str):
    """What a training flag defaults to by the system's TRAINING_DEFAULTS, else by the documented
    meaning of a missing value, else by add_training_arguments' keywords, else by TrainConfig's."""
    documented = dict(mod.TRAINING_DEFAULTS)
    if "<stage>" in documented["out"]:
        documented["out"] = None  # filled in per stage by the CLI
    unset = {"ema_decay": None, "sample_every": None, "resume": False, "no_progress": False}
    keywords = {
        name: p.default
        for name, p in inspect.signature(add_training_arguments).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    trainer = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for source in (documented, unset, keywords, trainer):
        if dest in source:
            return source[dest]
    raise AssertionError(f"no documented default for {dest}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("system", sorted(TRAIN_CLIS))
def test_training_defaults_are_the_ones_each_system_documents(system):
    mod = _train_module(system)
    parser = mod.build_parser()
    minimal, _ = TRAIN_CLIS[system]
    args = vars(parser.parse_args(minimal))
    for dest in (*TRAINING_FLAGS, *(d for d in OPTIONAL_TRAINING_FLAGS if d in args)):
        assert args[dest] == _documented_default(mod, dest), f"{system} --{dest.replace('_', '-')}"
    # The CLI's --help names every system default.
    help_text = " ".join(parser.format_help().split())
    for dest, value in mod.TRAINING_DEFAULTS.items():
        shown = f"default {value})" if "<stage>" in str(value) else f"(default: {value})"
        option = f"--{dest.replace('_', '-')}"
        assert shown in help_text[help_text.index(f"{option} ", help_text.index("training:")) :].split(" --")[0]


def test_add_training_arguments_rejects_unknown_optional_flags_and_notes():
    with pytest.raises(ValueError, match="optional training flags"):
        add_training_arguments(argparse.ArgumentParser(), steps=1, batch_size=1, lr=1.0, out="o", optional=["ema"])
    with pytest.raises(ValueError, match="paper notes.*grad_clip"):
        add_training_arguments(
            argparse.ArgumentParser(), steps=1, batch_size=1, lr=1.0, out="o", paper={"grad_clip": "1"}
        )


@pytest.mark.timeout(30)
def test_distributed_cli_calls_cleanup_when_the_body_raises(monkeypatch, capsys):
    from reference_models.common import distributed

    events = []
    monkeypatch.setattr(
        distributed,
        "init_distributed",
        lambda device: events.append(("init", device)) or DistInfo(rank=1, world_size=2),
    )
    monkeypatch.setattr(distributed, "cleanup", lambda: events.append(("cleanup",)))
    with pytest.raises(RuntimeError, match="body failed"):
        with distributed_cli("cpu") as (info, say):
            assert info.rank == 1
            say("only rank 0 prints")
            raise RuntimeError("body failed")
    assert events == [("init", "cpu"), ("cleanup",)]
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(distributed, "init_distributed", lambda device: events.append(("init", device)) or DistInfo())
    with distributed_cli() as run:
        run.say("rank 0 prints")
    assert events[2:] == [("init", "auto"), ("cleanup",)] and capsys.readouterr().out == "rank 0 prints\n"


@pytest.mark.timeout(60)
def test_distributed_cli_leaves_a_real_process_group_when_the_body_exits(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit):
            with distributed_cli("cpu") as (info, _):
                assert dist.is_initialized() and info.world_size == 1 and info.device.type == "cpu"
                raise SystemExit("error: a CLI gives up")
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("system", sorted(TRAIN_CLIS))
def test_every_training_main_leaves_the_process_group_when_it_fails(system, monkeypatch, tmp_path):
    from reference_models.common import distributed

    mod = _train_module(system)
    events = []
    init = distributed.init_distributed
    monkeypatch.setattr(distributed, "init_distributed", lambda device: events.append(("init", device)) or init(device))
    monkeypatch.setattr(distributed, "cleanup", lambda: events.append(("cleanup",)))
    _, failing = TRAIN_CLIS[system]
    with pytest.raises((TypeError, ValueError, SystemExit)):
        mod.main([*failing, "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    assert events == [("init", "cpu"), ("cleanup",)]
    assert not (tmp_path / "run").exists()  # it failed before writing anything


def test_parse_cli_args_takes_argv_or_a_parsed_namespace():
    def build():
        p = argparse.ArgumentParser()
        p.add_argument("--steps", type=int, default=1)
        return p

    assert parse_cli_args(build, ["--steps", "3"]).steps == 3
    parsed = argparse.Namespace(steps=5)
    assert parse_cli_args(build, parsed) is parsed
