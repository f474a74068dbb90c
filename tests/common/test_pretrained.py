"""Hub-style save_pretrained / from_pretrained: exact round trips for every system's models, clear
errors for the wrong class, format, config or tensors, atomic writes, tied tensors, export from a
training checkpoint (EMA weights, model tensors only) and the sampling CLI on a pretrained directory.
Nothing here touches the network."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

from reference_models.cmd.autoencoder import CMDAutoencoder
from reference_models.cmd.config import PRESETS as CMD_PRESETS
from reference_models.cmd.config import get_config as cmd_config
from reference_models.cmd.content_model import ContentDiT, ContentUNet
from reference_models.cmd.motion_model import MotionDiT
from reference_models.common import checkpoint as checkpoint_mod
from reference_models.common.checkpoint import StateDictMismatchError, save_checkpoint
from reference_models.common.cli import check_checkpoint_kind
from reference_models.common.config import ConfigBase
from reference_models.common.ema import EMA
from reference_models.common.pretrained import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    PretrainedError,
    PretrainedMixin,
    export_pretrained,
    is_pretrained_dir,
    load_pretrained,
    read_pretrained_config,
)
from reference_models.etc.config import PRESETS as ETC_PRESETS
from reference_models.etc.config import get_config as etc_config
from reference_models.etc.model import ETCSystem, ETCUNet
from reference_models.evdm import sample as evdm_sample
from reference_models.evdm.config import PRESETS as EVDM_PRESETS
from reference_models.evdm.config import get_config as evdm_config
from reference_models.evdm.model import EVDMUNet
from reference_models.evdm.sampling import load_model as evdm_load_model
from reference_models.pvdm.autoencoder import PVDMAutoencoder
from reference_models.pvdm.config import (
    AUTOENCODER_PRESETS,
    DIFFUSION_PRESETS,
    get_autoencoder_config,
    get_diffusion_config,
)
from reference_models.pvdm.sampling import load_autoencoder
from reference_models.pvdm.unet import TriplaneUNet

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails the test: loading and saving are local."""

    def refuse(*args, **kwargs):
        raise AssertionError("save_pretrained / from_pretrained must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Nudge every weight: zero-initialised branches would hide most of the model from the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


T = torch.tensor([3, 700])


def _evdm(m: nn.Module) -> torch.Tensor:
    return m(randn(2, 1, 2, 32, 32), T, past=randn(2, 1, 2, 32, 32, seed=1), future=randn(2, 1, 1, 32, 32, seed=2))


def _cmd_ae(m: nn.Module) -> tuple:
    x_hat, latents = m(randn(2, 3, 8, 24, 32))
    return (x_hat, *latents)


# name -> (build the tiny model, run it on a fixed input)
CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], torch.Tensor | tuple]]] = {
    "evdm": (lambda: EVDMUNet(evdm_config("tiny_evdm")), _evdm),
    "mcvd_baseline": (lambda: EVDMUNet(evdm_config("tiny_mcvd")), _evdm),
    "etc_unet": (
        lambda: ETCUNet(etc_config("tiny")),
        lambda m: m(randn(2, 3, 4, 16, 16), T, torch.tensor([8.0, 0.0]), randn(2, 3, 64, seed=1)),
    ),
    "etc_system": (
        lambda: ETCSystem(etc_config("tiny")),
        lambda m: m(
            randn(2, 3, 4, 16, 16),
            T,
            torch.tensor([8.0, 30.0]),
            labels=torch.tensor([1, -1]),
            captions=["a red circle moving left", ""],
        ),
    ),
    "pvdm_autoencoder": (lambda: PVDMAutoencoder(get_autoencoder_config("tiny")), lambda m: m(randn(2, 3, 8, 32, 32))),
    "pvdm_unet": (
        lambda: TriplaneUNet(get_diffusion_config("tiny")),
        lambda m: m(randn(2, 8, 3 * 64), T, cond=randn(2, 8, 3 * 64, seed=1)),
    ),
    "cmd_autoencoder": (lambda: CMDAutoencoder(cmd_config("tiny")), _cmd_ae),
    "cmd_content_unet": (
        lambda: ContentUNet(cmd_config("tiny")),
        lambda m: m(randn(2, 3, 24, 32), T, labels=torch.tensor([0, 4])),
    ),
    "cmd_content_dit": (
        lambda: ContentDiT(cmd_config("tiny", content_model="dit")),
        lambda m: m(randn(2, 3, 24, 32), T, labels=torch.tensor([0, 4])),
    ),
    "cmd_motion": (
        lambda: MotionDiT(cmd_config("tiny")),
        lambda m: m(randn(2, 4, 8, 14), T, randn(2, 3, 24, 32, seed=1), labels=torch.tensor([0, 4])),
    ),
}


def outputs(model: nn.Module, run: Callable) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    with torch.no_grad():
        out = run(model)
    return out if isinstance(out, tuple) else (out,)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_gives_the_same_weights_and_outputs(name: str, tmp_path: Path) -> None:
    build, run = CASES[name]
    torch.manual_seed(0)
    model = perturbed(build())
    path = model.save_pretrained(tmp_path / name)
    assert path == tmp_path / name and is_pretrained_dir(path)
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temporary files left
    torch.manual_seed(123)  # a fresh build draws other random weights: everything must come from the files
    loaded = type(model).from_pretrained(path)
    assert type(loaded) is type(model) and loaded.cfg == model.cfg and not loaded.training
    assert_same_state(model, loaded)
    for a, b in zip(outputs(model, run), outputs(loaded, run), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "config",
    [
        *EVDM_PRESETS.values(),
        *ETC_PRESETS.values(),
        *AUTOENCODER_PRESETS.values(),
        *DIFFUSION_PRESETS.values(),
        *CMD_PRESETS.values(),
    ],
    ids=[
        *(f"evdm-{k}" for k in EVDM_PRESETS),
        *(f"etc-{k}" for k in ETC_PRESETS),
        *(f"pvdm_ae-{k}" for k in AUTOENCODER_PRESETS),
        *(f"pvdm_diffusion-{k}" for k in DIFFUSION_PRESETS),
        *(f"cmd-{k}" for k in CMD_PRESETS),
    ],
)
def test_every_preset_config_survives_json_exactly(config: ConfigBase) -> None:
    text = json.dumps(config.to_dict(), allow_nan=False)
    again = type(config).from_dict(json.loads(text))
    assert again == config and hash(again) == hash(config)
    assert json.dumps(again.to_dict(), allow_nan=False) == text


def test_config_json_names_the_model_and_holds_the_config(tmp_path: Path) -> None:
    model = TriplaneUNet(get_diffusion_config("tiny"))
    model.save_pretrained(tmp_path, metadata={"note": "tiny"})
    info = read_pretrained_config(tmp_path)
    assert (info["model_class"], info["kind"], info["config_class"]) == (
        "TriplaneUNet",
        "pvdm_diffusion",
        "DiffusionConfig",
    )
    assert info["config"] == model.cfg.to_dict() and info["metadata"] == {"note": "tiny"}
    header = json.loads(
        (tmp_path / WEIGHTS_NAME).read_bytes()[
            8 : 8 + int.from_bytes((tmp_path / WEIGHTS_NAME).read_bytes()[:8], "little")
        ]
    )
    assert header["__metadata__"] == {"format": "pt"}  # what transformers and diffusers expect


def test_load_moves_and_casts(tmp_path: Path) -> None:
    model = perturbed(PVDMAutoencoder(get_autoencoder_config("tiny")))
    model.save_pretrained(tmp_path)
    half = PVDMAutoencoder.from_pretrained(tmp_path, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in half.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(half.state_dict()[name], value.double())


def test_load_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    perturbed(ContentUNet(cmd_config("tiny"))).save_pretrained(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("from_pretrained must not unpickle")

    for target, attr in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(target, attr, forbidden)
    ContentUNet.from_pretrained(tmp_path)


def test_load_pretrained_picks_the_class_the_directory_names(tmp_path: Path) -> None:
    perturbed(ContentDiT(cmd_config("tiny", content_model="dit"))).save_pretrained(tmp_path / "dit")
    perturbed(ContentUNet(cmd_config("tiny"))).save_pretrained(tmp_path / "unet")
    assert type(load_pretrained(tmp_path / "dit", (ContentDiT, ContentUNet))) is ContentDiT
    assert type(load_pretrained(tmp_path / "unet", (ContentDiT, ContentUNet))) is ContentUNet
    with pytest.raises(PretrainedError, match=r"holds a CMD content-frame model \(ContentUNet\), not a CMD motion"):
        load_pretrained(tmp_path / "unet", (MotionDiT,))


# --------------------------------------------------------------------------- tied tensors


@dataclasses.dataclass(frozen=True)
class TiedConfig(ConfigBase):
    dim: int = 4


class TiedModel(nn.Module, PretrainedMixin):
    """Input and output projections share one weight (as tied embeddings do)."""

    pretrained_kind = "tied_test"
    config_class = TiedConfig

    def __init__(self, cfg: TiedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.head = nn.Linear(cfg.dim, cfg.dim)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(x)))


def test_tied_tensors_are_stored_once_and_tied_again_on_load(tmp_path: Path) -> None:
    model = perturbed(TiedModel(TiedConfig()))
    model.save_pretrained(tmp_path)
    stored = safetensors.torch.load_file(str(tmp_path / WEIGHTS_NAME))
    assert sorted(stored) == ["embed.weight", "head.bias"]
    assert read_pretrained_config(tmp_path)["tied_weights"] == {"head.weight": "embed.weight"}
    loaded = TiedModel.from_pretrained(tmp_path)
    assert loaded.head.weight is loaded.embed.weight
    assert_same_state(model, loaded)
    x = randn(3, 4)
    assert torch.equal(model(x), loaded(x))


# --------------------------------------------------------------------------- clear errors


@pytest.fixture
def pvdm_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pvdm"
    perturbed(TriplaneUNet(get_diffusion_config("tiny"))).save_pretrained(path)
    return path


def test_another_models_directory_says_what_it_holds(pvdm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        PretrainedError,
        match=r"holds a PVDM diffusion U-Net \(TriplaneUNet\), not an ETC U-Net "
        r"\(without its conditioner\) \(ETCUNet\)",
    ):
        ETCUNet.from_pretrained(pvdm_dir)
    ETCUNet(etc_config("tiny")).save_pretrained(tmp_path / "unet")
    with pytest.raises(PretrainedError, match=r"not an ETC model \(ETCSystem\).*ETCUNet.from_pretrained"):
        ETCSystem.from_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match=r"is not an EVDM checkpoint \(it holds a PVDM diffusion U-Net"):
        check_checkpoint_kind(pvdm_dir, "evdm", "an EVDM")
    with pytest.raises(SystemExit, match=r"--checkpoint: .* is not an EVDM checkpoint"):
        evdm_sample.main(["--checkpoint", str(pvdm_dir), "--task", "generate", "--out", str(tmp_path / "x")])


def rewrite_config(path: Path, **changes) -> None:
    info = json.loads((path / CONFIG_NAME).read_text())
    for key, value in changes.items():
        if value is None:
            info.pop(key)
        else:
            info[key] = value
    (path / CONFIG_NAME).write_text(json.dumps(info))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "something-else"}, r"is not a vdblocks-pretrained config"),
        ({"version": 7}, r"format version 7, this code reads 1; it was written by a newer vdblocks"),
        ({"config": None}, r"lacks the field\(s\) config"),
        ({"weights_file": "../elsewhere.safetensors"}, r"invalid weights file"),
        ({"config_class": "ETCConfig"}, r"holds a ETCConfig config; TriplaneUNet is built from a DiffusionConfig"),
    ],
)
def test_malformed_config_json_is_named(pvdm_dir: Path, changes: dict, message: str) -> None:
    rewrite_config(pvdm_dir, **changes)
    with pytest.raises(PretrainedError, match=message):
        TriplaneUNet.from_pretrained(pvdm_dir)


def test_a_config_the_dataclass_refuses_is_named(pvdm_dir: Path) -> None:
    info = json.loads((pvdm_dir / CONFIG_NAME).read_text())
    rewrite_config(pvdm_dir, config={**info["config"], "wings": 2})
    with pytest.raises(
        PretrainedError,
        match=r"does not make a valid DiffusionConfig: unknown DiffusionConfig "
        r"fields \['wings'\]",
    ):
        TriplaneUNet.from_pretrained(pvdm_dir)
    rewrite_config(pvdm_dir, config={**info["config"], "base_channels": -3})
    with pytest.raises(PretrainedError, match=r"does not make a valid DiffusionConfig"):
        TriplaneUNet.from_pretrained(pvdm_dir)


def test_a_directory_saved_before_the_diffusion_spec_still_loads(pvdm_dir: Path, tmp_path: Path) -> None:
    """Directories written before ``DiffusionSpec`` hold the diffusion fields flat in the config."""
    info = json.loads((pvdm_dir / CONFIG_NAME).read_text())
    spec = info["config"].pop("diffusion")
    # PVDM's config stored no prediction type (its models predict the noise)
    info["config"].update({k: spec[k] for k in ("schedule", "num_train_steps", "beta_start", "beta_end")})
    rewrite_config(pvdm_dir, config=info["config"])
    model = TriplaneUNet.from_pretrained(pvdm_dir)
    assert model.cfg == get_diffusion_config("tiny") and model.cfg.diffusion.prediction_type == "epsilon"
    # an ETC directory: the clip setting follows the channels, as the old sampler decided it
    ETCUNet(etc_config("tiny")).save_pretrained(tmp_path / "etc")
    info = json.loads((tmp_path / "etc" / CONFIG_NAME).read_text())
    spec = info["config"].pop("diffusion")
    info["config"].update({k: v for k, v in spec.items() if k != "clip_sample"})
    rewrite_config(tmp_path / "etc", config=info["config"])
    assert ETCUNet.from_pretrained(tmp_path / "etc").cfg == etc_config("tiny")


def test_not_a_pretrained_directory(tmp_path: Path) -> None:
    with pytest.raises(PretrainedError, match=r"does not exist .*snapshot_download"):
        TriplaneUNet.from_pretrained("someone/some-model")  # a Hub id is never looked up
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match=r"has no config.json"):
        TriplaneUNet.from_pretrained(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CONFIG_NAME).write_text("{not json")
    with pytest.raises(PretrainedError, match=r"is not valid JSON"):
        TriplaneUNet.from_pretrained(tmp_path / "bad")


def re_search(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return match.group(1)


def edit_weights(path: Path, edit: Callable[[dict], None]) -> None:
    tensors = safetensors.torch.load_file(str(path / WEIGHTS_NAME))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(path / WEIGHTS_NAME))


def test_replaced_weights_fail_the_hash_unless_verify_is_off(pvdm_dir: Path) -> None:
    edit_weights(pvdm_dir, lambda t: t.update({k: v + 1 for k, v in t.items()}))
    with pytest.raises(PretrainedError, match=r"does not match the SHA-256 .*verify=False"):
        TriplaneUNet.from_pretrained(pvdm_dir)
    TriplaneUNet.from_pretrained(pvdm_dir, verify=False)


def test_missing_unexpected_and_misshaped_tensors_are_listed(pvdm_dir: Path) -> None:
    names = list(safetensors.torch.load_file(str(pvdm_dir / WEIGHTS_NAME)))

    def damage(t: dict) -> None:
        for name in names[:6]:
            del t[name]
        t["extra.weight"] = torch.zeros(2)
        t[names[6]] = torch.zeros(5, 5)

    edit_weights(pvdm_dir, damage)
    with pytest.raises(StateDictMismatchError) as info:
        TriplaneUNet.from_pretrained(pvdm_dir, verify=False)
    message = str(info.value)
    listed = re_search(r"6 missing from the checkpoint: (.*?), \.\.\. \(2 more\);", message).split(", ")
    assert len(listed) == 4 and set(listed) <= set(names[:6])
    assert "1 not in the model: extra.weight" in message
    assert f"{names[6]} (5, 5) in the checkpoint" in message and "TriplaneUNet" in message
    assert len(message) < 1000


def test_a_truncated_weights_file_is_named(pvdm_dir: Path) -> None:
    data = (pvdm_dir / WEIGHTS_NAME).read_bytes()
    (pvdm_dir / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedError, match=r"SHA-256"):
        TriplaneUNet.from_pretrained(pvdm_dir)
    with pytest.raises(PretrainedError, match=r"cannot read the weights"):
        TriplaneUNet.from_pretrained(pvdm_dir, verify=False)
    (pvdm_dir / WEIGHTS_NAME).unlink()
    with pytest.raises(PretrainedError, match=r"names the weights model.safetensors, which do not exist"):
        TriplaneUNet.from_pretrained(pvdm_dir)


def test_a_class_without_its_declarations_cannot_save(tmp_path: Path) -> None:
    class Undeclared(nn.Module, PretrainedMixin):
        def __init__(self) -> None:
            super().__init__()
            self.cfg = TiedConfig()

    with pytest.raises(TypeError, match=r"must set the class attributes pretrained_kind"):
        Undeclared().save_pretrained(tmp_path)


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("failing", [0, 1])  # the weights' rename, config.json's rename
def test_an_interrupted_save_never_loads_as_a_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    first = perturbed(PVDMAutoencoder(get_autoencoder_config("tiny")), seed=0)
    first.save_pretrained(tmp_path)
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) - 1 == failing:
            raise OSError("simulated crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        perturbed(PVDMAutoencoder(get_autoencoder_config("tiny")), seed=1).save_pretrained(tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # temporaries removed
    if failing == 0:  # nothing was replaced: the first model, intact
        assert_same_state(first, PVDMAutoencoder.from_pretrained(tmp_path))
    else:  # new weights under the old config.json: refused, not mixed
        with pytest.raises(PretrainedError, match=r"SHA-256"):
            PVDMAutoencoder.from_pretrained(tmp_path)


def test_save_replaces_an_earlier_save_and_keeps_other_files(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("my model\n")
    (tmp_path / ".tmp-config.json-abc123").write_text("left by a crash")
    perturbed(PVDMAutoencoder(get_autoencoder_config("tiny")), seed=0).save_pretrained(tmp_path)
    second = perturbed(PVDMAutoencoder(get_autoencoder_config("tiny")), seed=1)
    second.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_NAME, "README.md", WEIGHTS_NAME])
    assert_same_state(second, PVDMAutoencoder.from_pretrained(tmp_path))


# --------------------------------------------------------------------------- export and sampling


@pytest.fixture
def evdm_run(tmp_path: Path) -> tuple[Path, EVDMUNet, EMA]:
    """A training checkpoint of a tiny EVDM with EMA and optimizer state, the EMA behind the model."""
    torch.manual_seed(0)
    model = EVDMUNet(evdm_config("tiny_evdm"))
    ema = EMA(model, decay=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _evdm(model).square().mean().backward()
    opt.step()
    ema.update(model)
    perturbed(model, seed=3)
    run = tmp_path / "run"
    config = {"model": {"evdm": model.cfg.to_dict(), "data": {"source": "moving_shapes", "fps": 6.0}}}
    save_checkpoint(run / "checkpoints", model=model, ema=ema, optimizer=opt, step=7, config=config)
    return run, model, ema


def test_export_takes_the_ema_weights_and_reads_no_optimizer_state(
    evdm_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, model, ema = evdm_run
    read: list[str] = []
    real_open = safetensors.safe_open

    class Recording:
        def __init__(self, *args, **kwargs) -> None:
            self.inner = real_open(*args, **kwargs)

        def __enter__(self):
            self.handle = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_tensor(self, name: str) -> torch.Tensor:
            read.append(name)
            return self.handle.get_tensor(name)

    monkeypatch.setattr(checkpoint_mod.safetensors, "safe_open", Recording)
    monkeypatch.setattr(checkpoint_mod.safetensors.torch, "load_file", None)  # no whole-file read
    path = export_pretrained(run, tmp_path / "ema", evdm_load_model)
    assert read and all(name.startswith("ema.shadow.") for name in read)
    monkeypatch.undo()
    assert_same_state(ema.module, EVDMUNet.from_pretrained(path))
    meta = read_pretrained_config(path)["metadata"]
    assert (
        meta["step"] == 7
        and meta["weights"] == "ema"
        and meta["run"] == {"data": {"source": "moving_shapes", "fps": 6.0}}
    )
    trained = export_pretrained(run, tmp_path / "trained", evdm_load_model, use_ema=False)
    assert_same_state(model, EVDMUNet.from_pretrained(trained))
    assert read_pretrained_config(trained)["metadata"]["weights"] == "model"
    again = export_pretrained(path, tmp_path / "copy", evdm_load_model)  # a pretrained dir re-exports
    assert read_pretrained_config(again)["metadata"] == meta


def test_training_code_refuses_a_pretrained_directory_clearly(evdm_run, tmp_path: Path) -> None:
    run, _, _ = evdm_run
    path = export_pretrained(run, tmp_path / "pretrained", evdm_load_model)
    with pytest.raises(FileNotFoundError, match=r"save_pretrained directory .* model weights only"):
        checkpoint_mod.load_checkpoint(path)
    with pytest.raises(PretrainedError, match=r"holds training checkpoints .*--export-pretrained"):
        EVDMUNet.from_pretrained(run)


def test_pvdm_autoencoder_exports_without_its_training_wrapper(tmp_path: Path) -> None:
    from reference_models.pvdm.losses import AutoencoderObjective

    objective = AutoencoderObjective(get_autoencoder_config("tiny"))
    perturbed(objective)
    save_checkpoint(
        tmp_path / "ae", model=objective, step=2, config={"model": {"pvdm_autoencoder": objective.cfg.to_dict()}}
    )
    path = export_pretrained(tmp_path / "ae", tmp_path / "pretrained", load_autoencoder)
    assert_same_state(objective.autoencoder, PVDMAutoencoder.from_pretrained(path))
    loaded, ckpt = load_autoencoder(path)  # the sampler's loader takes either
    assert type(loaded) is PVDMAutoencoder and ckpt.step == 2 and ckpt.path == path


@pytest.mark.timeout(180)
def test_sample_cli_runs_from_an_exported_directory(evdm_run, tmp_path: Path, capsys) -> None:
    run, _, ema = evdm_run
    pretrained = tmp_path / "pretrained"
    written = evdm_sample.main(["--checkpoint", str(run), "--export-pretrained", str(pretrained)])
    assert written == [pretrained] and is_pretrained_dir(pretrained)
    common = ["--task", "generate", "--num-samples", "1", "--sampler", "ddim", "--steps", "2", "--device", "cpu"]
    files = evdm_sample.main(["--checkpoint", str(pretrained), *common, "--out", str(tmp_path / "a")])
    assert (tmp_path / "a" / "generate_00.mp4") in files
    assert f"step 7 of {pretrained}" in capsys.readouterr().out
    # A directory saved straight from a model (no training metadata) samples too.
    plain = tmp_path / "plain"
    ema.module.save_pretrained(plain)
    assert (tmp_path / "b" / "generate_00.mp4") in evdm_sample.main(
        ["--checkpoint", str(plain), *common, "--out", str(tmp_path / "b")]
    )


def test_cmd_cli_exports_its_three_runs_and_samples_from_them(tmp_path: Path) -> None:
    from reference_models.cmd import sample as cli

    cfg = cmd_config("tiny")
    models = {"ae": CMDAutoencoder(cfg), "content": ContentUNet(cfg), "motion": MotionDiT(cfg)}
    for stage, model in models.items():  # runs without EMA: the trained weights are exported
        save_checkpoint(
            tmp_path / "runs" / stage,
            model=perturbed(model),
            step=4,
            config={"model": {f"cmd_{stage}": cfg.to_dict(), "stage": stage}},
        )
    runs = [str(tmp_path / "runs" / s) for s in ("ae", "content", "motion")]
    argv = ["--ae", runs[0], "--content", runs[1], "--motion", runs[2]]
    paths = cli.main([*argv, "--export-pretrained", str(tmp_path / "pretrained")])
    assert [p.name for p in paths] == ["ae", "content", "motion"]
    for path, (stage, model) in zip(paths, models.items(), strict=True):
        info = read_pretrained_config(path)
        assert info["kind"] == f"cmd_{stage}" and info["metadata"]["weights"] == "model"
        assert info["metadata"]["run"] == {"stage": stage}
        assert_same_state(model, type(model).from_pretrained(path))
    written = cli.main(
        [
            "--ae",
            str(paths[0]),
            "--content",
            str(paths[1]),
            "--motion",
            str(paths[2]),
            "--labels",
            "0",
            "--content-steps",
            "2",
            "--motion-steps",
            "2",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert (tmp_path / "out" / "cmd_00.mp4") in written


@pytest.mark.timeout(180)
@pytest.mark.parametrize("system", ["etc", "pvdm", "cmd"])
def test_every_sample_cli_takes_save_pretrained_directories(system: str, tmp_path: Path) -> None:
    """Directories saved straight from models (no training run behind them) sample through each CLI."""
    out = tmp_path / "out"
    if system == "etc":
        from reference_models.etc import sample as cli

        perturbed(ETCSystem(etc_config("tiny"))).save_pretrained(tmp_path / "etc")
        argv = ["--checkpoint", str(tmp_path / "etc"), "--label", "1", "--fps", "8", "--steps", "2"]
    elif system == "pvdm":
        from reference_models.pvdm import sample as cli

        perturbed(TriplaneUNet(get_diffusion_config("tiny"))).save_pretrained(tmp_path / "diffusion")
        perturbed(PVDMAutoencoder(get_autoencoder_config("tiny"))).save_pretrained(tmp_path / "ae")
        argv = [
            "--checkpoint",
            str(tmp_path / "diffusion"),
            "--autoencoder",
            str(tmp_path / "ae"),
            "--clips",
            "2",
            "--first-steps",
            "2",
            "--next-steps",
            "1",
            "--num-samples",
            "1",
        ]
    else:
        from reference_models.cmd import sample as cli

        cfg = cmd_config("tiny")
        for name, model in (("ae", CMDAutoencoder(cfg)), ("content", ContentUNet(cfg)), ("motion", MotionDiT(cfg))):
            perturbed(model).save_pretrained(tmp_path / name)
        argv = [
            "--ae",
            str(tmp_path / "ae"),
            "--content",
            str(tmp_path / "content"),
            "--motion",
            str(tmp_path / "motion"),
            "--labels",
            "1",
            "--content-steps",
            "2",
            "--motion-steps",
            "2",
        ]
    written = cli.main([*argv, "--device", "cpu", "--out", str(out)])
    assert any(p.suffix == ".mp4" for p in written) and all(p.is_file() for p in written)


# --------------------------------------------------------------------------- push_to_hub


def test_push_to_hub_uploads_the_two_files(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = pytest.importorskip("huggingface_hub")
    calls: dict = {}

    class FakeApi:
        def __init__(self, token=None) -> None:
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)
            return hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            calls["files"] = sorted(os.listdir(folder_path))
            calls["upload"] = repo_id
            return "commit"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    model = TiedModel(TiedConfig())
    assert model.push_to_hub("someone/tied", token="t", private=True) == "commit"
    assert calls["repo"] == ("someone/tied", True, True) and calls["upload"] == "someone/tied"
    assert calls["files"] == [CONFIG_NAME, WEIGHTS_NAME] and calls["token"] == "t"
