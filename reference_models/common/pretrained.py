"""Hub-style ``save_pretrained`` / ``from_pretrained`` for the reference models: one JSON config
and one safetensors file, loadable without any training code.

A *pretrained directory* holds two files (the layout diffusers and timm users know)::

    config.json          {"format": "vdblocks-pretrained", "version": 1, "model_class": "EVDMUNet",
                          "kind": "evdm", "config_class": "EVDMConfig", "config": {...},
                          "weights_file": "model.safetensors", "weights_sha256": "...",
                          "tied_weights": {...}, "metadata": {...}}
    model.safetensors    the model's state dict (parameters and persistent buffers), nothing else

``config`` is the model's frozen config dataclass as ``ConfigBase.to_dict()`` gives it, so
``from_dict`` rebuilds it exactly. ``kind`` is the key training runs store the config under
(``config["model"]["evdm"]``), which is how a sampling CLI tells an EVDM directory from a PVDM one.
``metadata`` is free JSON: :func:`export_pretrained` records the training step, which weights were
taken (``"ema"`` or ``"model"``) and the run's other records (data source, sample captions, the
autoencoder a stage was trained on), which the sampling CLIs read as they read a checkpoint's.

A model class opts in with :class:`PretrainedMixin` and two class attributes::

    class EVDMUNet(nn.Module, PretrainedMixin):
        pretrained_kind = "evdm"
        config_class = EVDMConfig

Loading never runs code from the files: ``config.json`` is read with ``json``, the weights with
safetensors, and the class is the one ``from_pretrained`` is called on (the names in the file are
only compared with it). A directory of another model, format or version, a config the config class
refuses, missing or unexpected tensors and tensors of another shape each raise an error that says so.
Nothing here touches the network: ``from_pretrained`` reads a local directory only (fetch a Hub
repository with ``huggingface_hub.snapshot_download`` first); :meth:`PretrainedMixin.push_to_hub`
uploads through ``huggingface_hub`` when it is installed (``pip install "vdblocks[hub]"``).

Tied tensors (two state-dict names for one tensor) are stored once, as safetensors requires and
``transformers`` does; the other names are listed in ``tied_weights`` and filled from the stored
tensor on load when the freshly built model ties them too.

Writes are atomic per file: each file goes to a temporary name in the directory, is synced and
moved into place with ``os.replace``, the weights first, then ``config.json``. ``config.json``
records the SHA-256 of the weights, so a directory left half-written by a crash between the two
renames (new weights, old config) is refused on load instead of silently mixing two models.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import safetensors
import safetensors.torch
import torch
from torch import nn

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    _fsync_dir,
    _fsync_file,
    _load_model_state,
    _plain_tensors,
    _sha256,
    _write_text_atomic,
)
from .cli import MODEL_CONFIG_KEYS
from .config import ConfigBase
from .files import follow_umask, new_file_mode

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "KINDS",
    "VERSION",
    "WEIGHTS_NAME",
    "PretrainedError",
    "PretrainedMixin",
    "export_pretrained",
    "is_pretrained_dir",
    "load_pretrained",
    "pretrained_checkpoint",
    "pretrained_run_config",
    "read_pretrained_config",
]

FORMAT = "vdblocks-pretrained"
VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# The temporary names save_pretrained creates (mkstemp's ".tmp-<target>-<random>"); a save removes
# the ones an interrupted earlier save left, and nothing else.
_TEMP_RE = re.compile(r"^\.tmp-(config\.json|model\.safetensors)-[A-Za-z0-9_]+$")
_REQUIRED = ("model_class", "kind", "config_class", "config", "weights_file")


class PretrainedError(CheckpointError):
    """A pretrained directory is missing, malformed, or holds another model than the one asked for."""


# What each kind is, for messages: the model configs training runs store, and the kinds no training
# run stores on its own (a part of a trained system).
KINDS: dict[str, str] = {**MODEL_CONFIG_KEYS, "etc_unet": "an ETC U-Net (without its conditioner)"}


def _describe(kind: object, model_class: object) -> str:
    what = KINDS.get(kind, f"a {kind!r} model") if isinstance(kind, str) else "an unknown model"
    return f"{what} ({model_class})"


# --------------------------------------------------------------------------- reading


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a ``config.json`` (a ``save_pretrained`` directory,
    as opposed to a training run, whose checkpoints are ``step_*.json`` manifests). Reads nothing."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def read_pretrained_config(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``config.json`` of the pretrained directory ``path`` (JSON only, no tensors).

    Checks that it is this format at a version this code reads and names a model class, its kind,
    config class, config and weights file. Raises :class:`PretrainedError` naming the problem; a
    training run given instead is named as such, with the way to export it.
    """
    path = Path(path)
    if not path.is_dir():
        hint = ""
        if not path.exists() and not path.is_absolute() and len(path.parts) == 2:
            hint = (
                " (a Hub repository id? download it first: "
                "huggingface_hub.snapshot_download(repo_id) returns a local directory)"
            )
        raise PretrainedError(f"pretrained directory {path} does not exist or is not a directory{hint}")
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        if any(path.glob("step_*.json")) or any((path / "checkpoints").glob("step_*.json")):
            raise PretrainedError(
                f"{path} holds training checkpoints (step_*.json), not a save_pretrained directory: export "
                "one with export_pretrained(...) or the sampling CLI's --export-pretrained DIR"
            )
        raise PretrainedError(f"{path} has no {CONFIG_NAME}: not a save_pretrained directory")
    try:
        info = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PretrainedError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format", info.get("_class_name")) if isinstance(info, dict) else None
        raise PretrainedError(
            f"{config_path} is not a {FORMAT} config (format {found!r}); a diffusers or transformers "
            "model directory loads with that library's from_pretrained"
        )
    version = info.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > VERSION
        raise PretrainedError(
            f"{config_path} has format version {version!r}, this code reads {VERSION}"
            + ("; it was written by a newer vdblocks: upgrade to load it" if newer else "")
        )
    missing = [k for k in _REQUIRED if k not in info]
    if missing:
        raise PretrainedError(f"{config_path} lacks the field(s) {', '.join(missing)}")
    if not isinstance(info["config"], dict):
        raise PretrainedError(
            f"{config_path}: expected 'config' to be a JSON object, got {type(info['config']).__name__}"
        )
    name = info["weights_file"]
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise PretrainedError(f"{config_path} names an invalid weights file {name!r}")
    if not isinstance(info.get("metadata", {}), dict):
        raise PretrainedError(f"{config_path}: expected 'metadata' to be a JSON object")
    return info


def pretrained_run_config(info: Mapping[str, Any]) -> dict[str, Any]:
    """What a training checkpoint's stored config would hold for the model of ``info`` (a
    :func:`read_pretrained_config` result): ``{"model": {kind: config, **run records}}``, so that the
    sampling CLIs read a pretrained directory's defaults (data source, sample captions, autoencoder
    run) the way they read a checkpoint's."""
    run = (info.get("metadata") or {}).get("run")
    run = dict(run) if isinstance(run, dict) else {}
    return {"model": {**run, info["kind"]: dict(info["config"])}}


def _check_class(info: Mapping[str, Any], cls: type, path: Path) -> None:
    """Raise :class:`PretrainedError` unless ``info`` describes a ``cls`` (by name: nothing is imported)."""
    if info["model_class"] == cls.__name__ and info["kind"] == cls.pretrained_kind:
        if info["config_class"] != cls.config_class.__name__:
            raise PretrainedError(
                f"{path / CONFIG_NAME} holds a {info['config_class']} config; {cls.__name__} is built from a "
                f"{cls.config_class.__name__}"
            )
        return
    module = info.get("model_module")
    where = f" (load it with {info['model_class']}.from_pretrained from {module})" if isinstance(module, str) else ""
    raise PretrainedError(
        f"{path} holds {_describe(info['kind'], info['model_class'])}, not "
        f"{_describe(cls.pretrained_kind, cls.__name__)}{where}"
    )


def _tie_groups(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Names of ``state`` that are one tensor (same storage, offset, shape, strides, dtype), in
    state-dict order; groups of two or more only."""
    groups: dict[tuple, list[str]] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _read_weights(file: Path, config_path: Path) -> dict[str, torch.Tensor]:
    try:
        with safetensors.safe_open(str(file), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (a file handle, not a dict)
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise PretrainedError(f"cannot read the weights {file} (named in {config_path}): {err}") from err


# --------------------------------------------------------------------------- the mixin


def _declared(cls: type) -> type:
    """``cls`` when it is an ``nn.Module`` declaring ``pretrained_kind`` and ``config_class``, else ``TypeError``."""
    if not issubclass(cls, nn.Module):
        raise TypeError(f"PretrainedMixin is for nn.Module subclasses, not {cls.__name__}")
    kind, config_class = getattr(cls, "pretrained_kind", None), getattr(cls, "config_class", None)
    if not isinstance(kind, str) or not (isinstance(config_class, type) and issubclass(config_class, ConfigBase)):
        raise TypeError(
            f"{cls.__name__} must set the class attributes pretrained_kind (str) and config_class "
            "(a ConfigBase dataclass) to be saved and loaded as a pretrained directory"
        )
    return cls


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for an ``nn.Module`` built from one
    frozen config (``self.cfg``, an instance of ``config_class``) plus optional keyword arguments.

    Subclasses set ``pretrained_kind`` (the key of ``MODEL_CONFIG_KEYS`` their training run stores
    the config under, e.g. ``"evdm"``, or another name listed in ``KINDS``) and ``config_class``
    (the :class:`ConfigBase` dataclass).
    """

    pretrained_kind: ClassVar[str]
    config_class: ClassVar[type[ConfigBase]]

    def save_pretrained(self, directory: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

        Writes: the state dict (parameters and persistent buffers, on CPU; a tied tensor once) to
        ``model.safetensors`` and the config (``self.cfg.to_dict()``), the class names, the weights'
        SHA-256 and ``metadata`` (JSON-able, e.g. ``{"step": 1000}``) to ``config.json``, each
        atomically; other files in ``directory`` are left alone. Returns ``directory``.
        """
        cls = _declared(type(self))
        cfg = getattr(self, "cfg", None)
        if not isinstance(cfg, cls.config_class):
            raise TypeError(
                f"expected {cls.__name__}.cfg to be a {cls.config_class.__name__}, got {type(cfg).__name__}"
            )
        state = self.state_dict()
        tied: dict[str, str] = {}
        for names in _tie_groups(state):
            for alias in names[1:]:
                tied[alias] = names[0]
        tensors = _plain_tensors({k: v for k, v in state.items() if k not in tied})
        info = {
            "format": FORMAT,
            "version": VERSION,
            "model_class": cls.__name__,
            "model_module": cls.__module__,
            "kind": cls.pretrained_kind,
            "config_class": cls.config_class.__name__,
            "config": cfg.to_dict(),
            "weights_file": WEIGHTS_NAME,
            "weights_sha256": None,
            "tied_weights": tied,
            "torch_version": torch.__version__,
            "metadata": dict(metadata or {}),
        }
        try:
            json.dumps(info, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise TypeError(f"config and metadata must be plain JSON (numbers, strings, lists, dicts): {err}") from err

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for p in directory.iterdir():  # leftovers of an interrupted save
            if _TEMP_RE.match(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
        mode = new_file_mode()
        fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{WEIGHTS_NAME}-", dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            # "format": "pt" is the metadata transformers and diffusers expect of a PyTorch file.
            safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
            follow_umask(tmp, mode)
            _fsync_file(tmp)
            info["weights_sha256"] = _sha256(tmp)
            os.replace(tmp, directory / WEIGHTS_NAME)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(directory)
        _write_text_atomic(directory / CONFIG_NAME, json.dumps(info, indent=2, allow_nan=False) + "\n", mode)
        _fsync_dir(directory)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        strict: bool = True,
        verify: bool = True,
        **model_kwargs: Any,
    ) -> Self:
        """Build this class from the ``config.json`` of ``directory`` and load its ``model.safetensors``.

        Reads ``config.json`` (JSON) and the weights (safetensors; never pickle, never the network).
        ``model_kwargs`` go to the constructor after the config (e.g. ETC's ``text_encoder``).
        ``verify`` checks the weights' SHA-256 against ``config.json``; ``strict`` requires the
        stored names to be exactly the model's. The model comes back in eval mode on ``device``
        (cast to ``dtype`` when given). Raises :class:`PretrainedError` for a missing or malformed
        directory or one that holds another model, and
        :class:`~reference_models.common.checkpoint.StateDictMismatchError` naming the first few
        missing, unexpected or mis-shaped tensors.
        """
        directory = Path(directory)
        _declared(cls)
        info = read_pretrained_config(directory)
        _check_class(info, cls, directory)
        config_path = directory / CONFIG_NAME
        try:
            cfg = cls.config_class.from_dict(info["config"])
        except (TypeError, ValueError) as err:
            raise PretrainedError(
                f"the config in {config_path} does not make a valid {cls.config_class.__name__}: {err}"
            ) from err
        weights_path = directory / info["weights_file"]
        if not weights_path.is_file():
            raise PretrainedError(
                f"{config_path} names the weights {info['weights_file']}, which do not exist in {directory}"
            )
        if verify and info.get("weights_sha256") is not None and _sha256(weights_path) != info["weights_sha256"]:
            raise PretrainedError(
                f"{weights_path} does not match the SHA-256 recorded in {config_path} (a save interrupted between "
                "its two files, a damaged file, or weights replaced by hand; pass verify=False to load them anyway)"
            )
        model = cls(cfg, **model_kwargs)
        weights = _read_weights(weights_path, config_path)
        for names in _tie_groups(model.state_dict()):
            stored = [n for n in names if n in weights]
            for alias in names:
                if stored and alias not in weights:
                    weights[alias] = weights[stored[0]]
        _load_model_state(model, weights, strict, weights_path)
        model = model.to(device)
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload with vdblocks save_pretrained",
        metadata: Mapping[str, Any] | None = None,
    ) -> Any:
        """Upload ``save_pretrained``'s two files to the Hub model repository ``repo_id`` (created if
        needed) with ``huggingface_hub`` and return its commit info. Writes the files to a temporary
        directory first; needs ``huggingface_hub`` (``pip install "vdblocks[hub]"``) and Hub access."""
        try:
            from huggingface_hub import HfApi
        except ImportError as err:
            raise ImportError('push_to_hub needs huggingface_hub: pip install "vdblocks[hub]"') from err
        api = HfApi(token=token)
        repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, metadata=metadata)
            return api.upload_folder(
                repo_id=getattr(repo, "repo_id", repo_id),
                repo_type="model",
                folder_path=tmp,
                commit_message=commit_message,
                revision=revision,
            )


# --------------------------------------------------------------------------- loaders and export


def load_pretrained(
    directory: str | os.PathLike,
    classes: type | Sequence[type],
    **kwargs: Any,
) -> nn.Module:
    """Load ``directory`` with whichever of ``classes`` its ``config.json`` names (e.g. CMD's
    ``(ContentDiT, ContentUNet)``); ``kwargs`` go to ``from_pretrained``. Reads as
    :meth:`PretrainedMixin.from_pretrained` does; a directory of any other class raises
    :class:`PretrainedError` naming what it holds and what was expected."""
    classes = tuple(classes) if isinstance(classes, Sequence) else (classes,)
    directory = Path(directory)
    info = read_pretrained_config(directory)
    for cls in classes:
        if info["model_class"] == cls.__name__ and info["kind"] == cls.pretrained_kind:
            return cls.from_pretrained(directory, **kwargs)
    if len(classes) == 1:
        _check_class(info, classes[0], directory)  # raises, naming the class to load it with
    expected = " or ".join(_describe(c.pretrained_kind, c.__name__) for c in classes)
    raise PretrainedError(f"{directory} holds {_describe(info['kind'], info['model_class'])}, not {expected}")


def pretrained_checkpoint(
    directory: str | os.PathLike,
    classes: type | Sequence[type],
    key: str,
    *,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, Checkpoint]:
    """``(model, Checkpoint)`` from a pretrained directory, shaped like a training checkpoint's load
    (what :func:`~reference_models.common.checkpoint.load_model_from_checkpoint` returns for one).

    ``key`` is the model config key a sampler expects (``"evdm"``, ``"pvdm_autoencoder"`` ...): another
    kind raises ``ValueError`` naming what the directory holds. The ``Checkpoint`` has ``path`` the
    directory, ``step`` the exported training step (0 when the directory does not say), ``config``
    from :func:`pretrained_run_config`, no data or RNG state and an empty ``state``.
    """
    directory = Path(directory)
    info = read_pretrained_config(directory)
    if info["kind"] != key:
        raise ValueError(
            f"{directory} is not {KINDS.get(key, repr(key))} directory (it holds "
            f"{_describe(info['kind'], info['model_class'])})"
        )
    model = load_pretrained(directory, classes, device=device)
    step = (info.get("metadata") or {}).get("step", 0)
    ckpt = Checkpoint(
        path=directory,
        step=int(step) if isinstance(step, int) else 0,
        data_state=None,
        rng_state=None,
        config=pretrained_run_config(info),
        extra=None,
    )
    return model, ckpt


def export_pretrained(
    checkpoint: str | os.PathLike,
    directory: str | os.PathLike,
    load: Callable[..., tuple],
    *,
    use_ema: bool = True,
) -> Path:
    """Write the model of a training checkpoint as a pretrained directory; returns ``directory``.

    ``load(checkpoint, use_ema=use_ema)`` is the system's loader, returning ``(model, Checkpoint,
    ...)`` (``reference_models.evdm.load_model``, ``reference_models.pvdm.load_autoencoder`` ...): it
    rebuilds the model from the stored config and reads only its weights, the EMA shadow when the
    run kept one and ``use_ema`` (as the samplers do), never the optimizer state. Writes
    ``config.json`` and ``model.safetensors`` with ``metadata`` ``{"step", "weights" ("ema" or
    "model"), "source", "run"}``, ``run`` being the checkpoint's other model records. ``checkpoint``
    may itself be a pretrained directory (then it is copied, its metadata kept).
    """
    loaded = load(checkpoint, use_ema=use_ema)
    model, ckpt = loaded[0], loaded[1]
    if not isinstance(model, PretrainedMixin):
        raise PretrainedError(f"a {type(model).__name__} (from {checkpoint}) has no save_pretrained")
    if is_pretrained_dir(checkpoint):
        metadata = dict(read_pretrained_config(checkpoint).get("metadata") or {})
    else:
        run = dict((ckpt.config or {}).get("model") or {})
        run.pop(model.pretrained_kind, None)
        weights = "ema" if "ema" in ckpt.state else "model"
        metadata = {"step": ckpt.step, "weights": weights, "source": str(ckpt.path), "run": run}
    return model.save_pretrained(directory, metadata=metadata)
