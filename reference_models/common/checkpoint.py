"""Crash-safe training checkpoints without pickle: tensors in safetensors, everything else in JSON.

Layout of a checkpoint directory::

    step_00001000.json                    manifest: step, data position, RNG states, config,
                                          optimizer/scheduler/EMA non-tensor state, tensor file name
    step_00001000.<sha12>.safetensors     model, EMA and optimizer tensors (named "model.<param>",
                                          "ema.shadow.<param>", "optimizer.state.<i>.exp_avg", ...)
    latest                                one line: the file name of the newest manifest

Atomicity. Each file is written to a temporary name in the same directory, flushed with ``fsync``
and moved into place with ``os.replace`` (atomic on POSIX and Windows). The tensor file is named by
its content hash, so it never overwrites a file a manifest refers to; the manifest is replaced next,
then ``latest``. A crash at any point leaves ``latest`` naming a complete, loadable checkpoint (the
previous one until the final rename). ``load_checkpoint`` checks the tensor file's SHA-256 against
the manifest. A crash leaves at most some ``.tmp-*`` files, which the next save removes. Files are
created with the mode the umask gives every other output (``0o666 & ~umask``), not ``0600``.

Resuming. ``latest`` is a hint: ``find_resumable_checkpoint`` tries the checkpoint it names, then
every other manifest newest first, and takes the first that verifies (manifest parses, format and
version match, tensor file present, SHA-256 matches), saying which it skipped and why.

No pickle. Nested state (``optimizer.state_dict()``, an LR scheduler's, EMA's) is split by
``encode_state``: tensors go to the safetensors file under their dotted path; the rest becomes
JSON, with tuples, non-string dict keys (optimizer state is keyed by parameter index) and bytes
tagged so that ``decode_state`` rebuilds the exact same structure. Loading uses only
``safetensors`` (``load_file``, or ``safe_open`` by name where ``load_weights`` reads the model's
tensors alone, not the optimizer's) and ``json.load``.

Pretrained directories (``config.json`` + ``model.safetensors``, model weights only) are the other
format: see :mod:`reference_models.common.pretrained`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from .ema import EMA, unwrap_model
from .files import follow_umask, new_file_mode

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "StateDictMismatchError",
    "encode_state",
    "decode_state",
    "capture_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "load_model_from_checkpoint",
    "read_checkpoint_config",
    "list_checkpoints",
    "latest_checkpoint",
    "verify_checkpoint",
    "find_resumable_checkpoint",
    "resolve_checkpoint",
    "checkpoint_path",
    "state_mismatch",
]

FORMAT = "vdblocks-checkpoint"
VERSION = 1
LATEST = "latest"
_MANIFEST_RE = re.compile(r"^step_(\d+)\.json$")
_TENSORS_RE = re.compile(r"^step_(\d+)\.[0-9a-f]+\.safetensors$")
# The temporary names save_checkpoint creates: ".tmp-<uuid hex>.safetensors" for the tensors and
# mkstemp's ".tmp-<target name>-<random>" for the manifest and the latest pointer. Nothing else
# in a checkpoint directory is ever removed as a leftover.
_TEMP_RES = (
    re.compile(r"^\.tmp-[0-9a-f]{32}\.safetensors$"),
    re.compile(r"^\.tmp-(latest|step_\d+\.json)-[A-Za-z0-9_]+$"),
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, malformed, or does not match the objects it is loaded into."""


class StateDictMismatchError(CheckpointError):
    """A checkpoint's model weights do not fit the model: ``summary`` names the first few missing,
    unexpected and mis-shaped entries with their counts (instead of torch's full list)."""

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` read besides the tensors it copied into the given objects.

    ``state`` holds the decoded component states (``"model"``, ``"ema"``, ``"optimizer"``, ...)
    for callers that want them without passing objects; after :func:`load_weights`, only the one
    component it read.
    """

    path: Path
    step: int
    data_state: dict | None
    rng_state: dict | None
    config: dict | None
    extra: dict | None
    state: dict = field(repr=False, default_factory=dict)


# --------------------------------------------------------------------------- state encoding


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def encode_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Split ``obj`` into JSON-able data and tensors, which are added to ``tensors`` under their
    dotted path from ``prefix`` and replaced by ``{"__tensor__": path}``."""
    if isinstance(obj, torch.Tensor):
        if prefix in tensors:
            raise CheckpointError(f"two tensors would share the checkpoint name {prefix!r}")
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {
            "__ndarray__": _b64(np.ascontiguousarray(obj).tobytes()),
            "dtype": obj.dtype.str,
            "shape": list(obj.shape),
        }
    if isinstance(obj, (bytes, bytearray)):
        return {"__bytes__": _b64(bytes(obj))}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) and not k.startswith("__") for k in obj)
        if plain:
            return {k: encode_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise CheckpointError(f"cannot store dict key {k!r} at {prefix!r} (need str or int)")
            items.append([k, encode_state(v, f"{prefix}.{k}", tensors)])
        return {"__dict__": items}
    raise CheckpointError(
        f"cannot store a {type(obj).__name__} at {prefix!r} in a checkpoint "
        "(tensors, numbers, strings, bytes, lists, tuples and dicts are supported)"
    )


def decode_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of ``encode_state``: rebuild the structure, taking tensors from ``tensors``."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        name = obj["__tensor__"]
        if name not in tensors:
            raise CheckpointError(f"tensor {name!r} is named in the manifest but not in the file")
        return tensors[name]
    if "__tuple__" in obj:
        return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {k: decode_state(v, tensors) for k, v in obj["__dict__"]}
    if "__bytes__" in obj:
        return _unb64(obj["__bytes__"])
    if "__ndarray__" in obj:
        data = np.frombuffer(_unb64(obj["__ndarray__"]), dtype=np.dtype(obj["dtype"]))
        return data.reshape(obj["shape"]).copy()
    return {k: decode_state(v, tensors) for k, v in obj.items()}


def _plain_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors with no shared storage (safetensors refuses tied tensors,
    e.g. tied input/output embeddings, so later aliases are cloned)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        t = t.to("cpu").contiguous()
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(key)
        out[name] = t
    return out


# --------------------------------------------------------------------------- RNG states


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """Every RNG state as JSON-able data: Python ``random``, NumPy's global RNG, torch's CPU RNG,
    each CUDA device's RNG (when CUDA is in use) and the explicit ``generators`` by name."""
    version, internal, gauss_next = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "python": {
            "version": version,
            "state": _b64(np.asarray(internal, dtype=np.uint32).tobytes()),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "name": np_name,
            "key": _b64(np.asarray(np_key, dtype=np.uint32).tobytes()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": _b64(torch.get_rng_state().numpy().tobytes()),
        "cuda": [],
        "generators": {},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s.numpy().tobytes()) for s in torch.cuda.get_rng_state_all()]
    for name, gen in (generators or {}).items():
        state["generators"][name] = _b64(gen.get_state().numpy().tobytes())
    return state


def _byte_tensor(text: str) -> torch.Tensor:
    return torch.tensor(list(_unb64(text)), dtype=torch.uint8)


def restore_rng_state(state: Mapping, generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Set every RNG from ``capture_rng_state``'s output (and the named ``generators``)."""
    py = state["python"]
    internal = tuple(int(v) for v in np.frombuffer(_unb64(py["state"]), dtype=np.uint32))
    random.setstate((py["version"], internal, py["gauss_next"]))
    npst = state["numpy"]
    key = np.frombuffer(_unb64(npst["key"]), dtype=np.uint32).copy()
    np.random.set_state((npst["name"], key, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(_byte_tensor(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = [_byte_tensor(s) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    for name, gen in (generators or {}).items():
        if name not in state.get("generators", {}):
            raise CheckpointError(f"the checkpoint holds no state for the generator {name!r}")
        gen.set_state(_byte_tensor(state["generators"][name]))


# --------------------------------------------------------------------------- files


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes the renames durable; Windows cannot open directories, and there
    # os.replace is already durable enough.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete the temporary files an interrupted ``save_checkpoint`` left in ``directory`` (only
    names this module creates; rank 0 is the only writer, so none is in use). Returns them."""
    removed = []
    for p in directory.iterdir():
        if any(r.match(p.name) for r in _TEMP_RES) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _write_text_atomic(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` via a synced temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            follow_umask(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _manifest_name(step: int) -> str:
    return f"step_{step:08d}.json"


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """The manifest path ``save_checkpoint(directory, step=step, ...)`` writes."""
    return Path(directory) / _manifest_name(step)


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The manifests in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _MANIFEST_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The manifest that ``directory/latest`` names, or ``None`` when there is no checkpoint."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = Path(directory) / name
    if not path.is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which does not exist")
    return path


def verify_checkpoint(path: str | os.PathLike, *, check_hash: bool = True) -> dict:
    """Check that the manifest ``path`` describes a complete checkpoint and return the manifest.

    Checks that the manifest is JSON of this format and version with every field a load needs, that
    its tensor file exists and (``check_hash``) that the file's SHA-256 is the recorded one. Raises
    ``CheckpointError`` naming the file and the problem.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint manifest {path} does not exist") from err
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"checkpoint manifest {path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{path} has format version {manifest.get('version')}, this code reads {VERSION}")
    missing = [k for k in ("step", "tensors_file", "tensors_sha256", "state") if k not in manifest]
    if missing:
        raise CheckpointError(f"{path} lacks the field(s) {', '.join(missing)}")
    name = manifest["tensors_file"]
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise CheckpointError(f"{path} names an invalid tensor file {name!r}")
    tensor_path = path.parent / name
    if not tensor_path.is_file():
        raise CheckpointError(f"{path} refers to {name}, which does not exist")
    if check_hash and _sha256(tensor_path) != manifest["tensors_sha256"]:
        raise CheckpointError(f"{tensor_path} does not match the SHA-256 recorded in {path} (truncated or corrupted)")
    return manifest


def _latest_name(directory: Path) -> str | None:
    """The name ``directory/latest`` holds, or ``None`` when it is missing or unreadable."""
    try:
        return (directory / LATEST).read_text(encoding="utf-8").strip() or None
    except (OSError, ValueError):
        return None


def find_resumable_checkpoint(directory: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """The checkpoint in ``directory`` to resume from, and a note for each one skipped on the way.

    ``latest`` is a hint, not the only source: the manifest it names is tried first, then every
    other manifest newest step first; the first that passes ``verify_checkpoint`` wins. Returns
    ``(None, notes)`` when ``directory`` holds no manifest. Raises ``CheckpointError`` naming the
    directory and each manifest's problem when there are manifests but none verifies.
    """
    directory = Path(directory)
    manifests = list_checkpoints(directory)
    order = manifests[::-1]
    notes: list[str] = []
    pointer = directory / LATEST
    hint = _latest_name(directory)
    if hint is not None and directory / hint in order:
        order.remove(directory / hint)
        order.insert(0, directory / hint)
    elif manifests and pointer.exists():
        what = "is empty or unreadable" if hint is None else f"names {hint!r}, not a checkpoint there"
        notes.append(f"{pointer} {what}; ignoring it")
    elif manifests:
        notes.append(f"{directory} has no '{LATEST}' pointer; taking the newest checkpoint that verifies")
    problems: list[str] = []
    for path in order:
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            notes.append(f"skipped checkpoint {path.name}: {err}")
            continue
        if problems:
            notes.append(f"falling back to {path.name}, the newest checkpoint that verifies")
        return path, notes
    if manifests:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise CheckpointError(
            f"cannot resume: none of the {len(manifests)} checkpoint(s) in {directory} verifies:\n"
            f"{listing}\nMove them away to start a new run there, restore them from a backup, "
            "or resume from another checkpoint with resume=PATH (--resume PATH)."
        )
    return None, notes


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Turn a manifest path, a checkpoint directory (following ``latest``, else taking the newest
    manifest), a ``latest`` file or a training output directory holding ``checkpoints/`` into a
    manifest path."""
    path = Path(path)
    if path.is_file() and path.name == LATEST:
        path = path.parent
    if path.is_dir():
        for directory in (path, path / "checkpoints"):
            found = latest_checkpoint(directory)
            if found is None:
                manifests = list_checkpoints(directory)
                found = manifests[-1] if manifests else None
            if found is not None:
                return found
        if (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no checkpoint in {path}: it is a save_pretrained directory (config.json + model.safetensors), "
                "which holds model weights only, no training state"
            )
        raise FileNotFoundError(f"no checkpoint in {path} (no step_*.json manifest)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _prune(directory: Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest checkpoints (never the one ``latest`` names), then
    tensor files no manifest refers to (left by a crash between the two renames).

    Only ever called on the directory of the run being trained: ``train`` refuses to start afresh
    in a directory that holds another run's checkpoints. A tensor file whose step has a manifest
    that cannot be read is kept (the manifest may be repaired by hand).
    """
    latest = _latest_name(directory)
    manifests = list_checkpoints(directory)
    for old in manifests[: max(0, len(manifests) - keep_last)]:
        if old.name == latest:
            continue
        old.unlink(missing_ok=True)
    referenced: set[str] = set()
    unreadable_steps: set[int] = set()
    for m in list_checkpoints(directory):
        try:
            name = json.loads(m.read_text(encoding="utf-8"))["tensors_file"]
            referenced.add(str(name))
        except (OSError, ValueError, KeyError, TypeError):
            step = _MANIFEST_RE.match(m.name)
            assert step is not None  # list_checkpoints only returns matching names
            unreadable_steps.add(int(step.group(1)))
    for p in directory.iterdir():
        match = _TENSORS_RE.match(p.name)
        if match and p.name not in referenced and int(match.group(1)) not in unreadable_steps:
            p.unlink(missing_ok=True)


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    step: int,
    ema: EMA | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    data_state: Mapping | None = None,
    rng_state: Mapping | None = None,
    config: Mapping | None = None,
    extra: Mapping | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write a checkpoint of ``step`` into ``directory`` atomically and point ``latest`` at it.

    ``model`` may be DDP-wrapped (its inner module is saved). ``scheduler`` is anything with
    ``state_dict``/``load_state_dict`` whose state is numbers, lists and dicts (PyTorch LR
    schedulers with the ``optim.WarmupCosine`` factor qualify). ``config`` should hold the model
    configuration (and training configuration) so the checkpoint is self-describing.
    ``keep_last=k`` deletes all but the ``k`` newest checkpoints afterwards.
    Returns the manifest path. Call it on one process only (rank 0).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"expected step to be a non-negative int, got {step!r}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"expected keep_last >= 1 or None, got {keep_last}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(directory)  # an earlier save that crashed may have left some
    mode = new_file_mode()

    components: dict[str, Any] = {"model": unwrap_model(model).state_dict()}
    if ema is not None:
        components["ema"] = ema.state_dict()
    if optimizer is not None:
        components["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        components["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        components["scaler"] = scaler.state_dict()
    raw: dict[str, torch.Tensor] = {}
    tree = {name: encode_state(value, name, raw) for name, value in components.items()}
    tensors = _plain_tensors(raw)

    no_tensors: dict[str, torch.Tensor] = {}
    meta = {
        name: encode_state(value, name, no_tensors)
        for name, value in (
            ("data_state", data_state),
            ("rng_state", rng_state),
            ("config", config),
            ("extra", extra),
        )
    }
    if no_tensors:
        raise CheckpointError(f"data_state/rng_state/config/extra must not hold tensors, found {sorted(no_tensors)}")

    tmp = directory / f".tmp-{uuid.uuid4().hex}.safetensors"
    created: Path | None = None
    try:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": FORMAT})
        follow_umask(tmp, mode)
        _fsync_file(tmp)
        digest = _sha256(tmp)
        tensor_path = directory / f"step_{step:08d}.{digest[:12]}.safetensors"
        existed = tensor_path.exists()
        os.replace(tmp, tensor_path)
        created = None if existed else tensor_path

        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "tensors_file": tensor_path.name,
            "tensors_sha256": digest,
            "torch_version": torch.__version__,
            "state": tree,
            **meta,
        }
        manifest_path = directory / _manifest_name(step)
        _write_text_atomic(manifest_path, json.dumps(manifest, indent=1, allow_nan=True), mode)
        created = None
        _fsync_dir(directory)
        _write_text_atomic(directory / LATEST, manifest_path.name + "\n", mode)
        _fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if created is not None:
            created.unlink(missing_ok=True)
        raise
    # A rewrite of the same step leaves the old tensor file unreferenced; _prune removes it.
    _prune(directory, keep_last if keep_last is not None else len(list_checkpoints(directory)))
    return manifest_path


def _read_manifest(path: Path, verify: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    manifest = verify_checkpoint(path, check_hash=verify)
    tensor_path = path.parent / manifest["tensors_file"]
    try:
        tensors = safetensors.torch.load_file(str(tensor_path), device="cpu")
    except Exception as err:  # safetensors raises its own error type for a damaged file
        raise CheckpointError(f"cannot read the tensors of {path} from {tensor_path}: {err}") from err
    return manifest, tensors


def _shown(items: list[str], limit: int) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def state_mismatch(
    expected: Mapping[str, Any], found: Mapping[str, Any], *, strict: bool = True, limit: int = 4
) -> str | None:
    """A short account of why ``found`` (a checkpoint's state dict) does not fit ``expected`` (the
    model's): counts and the first ``limit`` missing, unexpected and mis-shaped entries; ``None``
    when it fits. ``strict=False`` only looks at shapes, as ``load_state_dict`` does."""
    missing = [k for k in expected if k not in found] if strict else []
    unexpected = [k for k in found if k not in expected] if strict else []
    misshaped = [
        f"{k} {tuple(found[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in found
        and isinstance(v, torch.Tensor)
        and isinstance(found[k], torch.Tensor)
        and found[k].shape != v.shape
    ]
    parts = [
        f"{len(items)} {label}: {_shown(items, limit)}"
        for label, items in (
            ("missing from the checkpoint", missing),
            ("not in the model", unexpected),
            ("with another shape", misshaped),
        )
        if items
    ]
    return "; ".join(parts) or None


def _load_model_state(model: nn.Module, weights: Mapping[str, Any], strict: bool, source: Path) -> None:
    """``load_state_dict``, after checking that the weights fit (a short error, not torch's list
    of every key)."""
    target = unwrap_model(model)
    summary = state_mismatch(target.state_dict(), weights, strict=strict)
    # A load_state_dict pre-hook may rename or add entries (old checkpoint layouts): leave those
    # models to torch, which applies the hooks first.
    hooked = any(m._load_state_dict_pre_hooks for m in target.modules())
    if summary is not None and not hooked:
        raise StateDictMismatchError(
            f"the weights in {source} do not fit this {type(target).__name__} (another "
            f"architecture or config?): {summary}",
            summary,
        )
    target.load_state_dict(weights, strict=strict)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    ema: EMA | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    strict: bool = True,
    verify: bool = True,
) -> Checkpoint:
    """Load a checkpoint into the given objects and return its step, data position, RNG states,
    config and extra data. ``path`` is anything ``resolve_checkpoint`` accepts.

    Tensors are read to CPU and copied into the objects (``load_state_dict`` moves optimizer state to
    the parameters' device). Never unpickles. Raises ``CheckpointError`` when an object is passed
    whose state the checkpoint does not hold, ``StateDictMismatchError`` (a short summary) when the
    model weights do not fit ``model``; ``verify`` checks the tensor file's SHA-256.
    """
    manifest_path = resolve_checkpoint(path)
    manifest, tensors = _read_manifest(manifest_path, verify)
    state = {name: decode_state(value, tensors) for name, value in manifest["state"].items()}

    def component(name: str) -> Any:
        if name not in state:
            raise CheckpointError(f"{manifest_path} holds no {name} state")
        return state[name]

    if model is not None:
        _load_model_state(model, component("model"), strict, manifest_path)
    if ema is not None:
        ema.load_state_dict(component("ema"))
    if optimizer is not None:
        optimizer.load_state_dict(component("optimizer"))
    if scheduler is not None:
        scheduler.load_state_dict(component("scheduler"))
    if scaler is not None and scaler.is_enabled():
        scaler_state = component("scaler")
        if scaler_state:  # a disabled scaler saved {}; keep the fresh scale
            scaler.load_state_dict(scaler_state)
    return Checkpoint(
        path=manifest_path,
        step=int(manifest["step"]),
        data_state=decode_state(manifest.get("data_state"), {}),
        rng_state=decode_state(manifest.get("rng_state"), {}),
        config=decode_state(manifest.get("config"), {}),
        extra=decode_state(manifest.get("extra"), {}),
        state=state,
    )


def _tensor_names(tree: Any) -> list[str]:
    """The tensor-file names an ``encode_state`` tree refers to (its ``{"__tensor__": name}`` leaves)."""
    if isinstance(tree, list):
        return [n for v in tree for n in _tensor_names(v)]
    if not isinstance(tree, dict):
        return []
    if "__tensor__" in tree:
        return [tree["__tensor__"]]
    values = [v for _, v in tree["__dict__"]] if "__dict__" in tree else tree.get("__tuple__", tree.values())
    return [n for v in values for n in _tensor_names(v)]


def load_weights(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    use_ema: bool = True,
    strict: bool = True,
    verify: bool = False,
) -> Checkpoint:
    """Load only weights into ``model``: the EMA shadow when the checkpoint has one and ``use_ema``,
    otherwise the trained weights. For sampling scripts.

    Reads the manifest (JSON) and, from the tensor file, only the tensors of that one component
    (``safe_open``, by name): the optimizer state and the other weights are never read. ``verify``
    checks the tensor file's SHA-256, which reads the whole file (optimizer state included); the
    manifest and the file's safetensors header are checked either way. The returned
    :class:`Checkpoint`'s ``state`` holds only the component loaded (``"ema"`` or ``"model"``).
    """
    manifest_path = resolve_checkpoint(path)
    manifest = verify_checkpoint(manifest_path, check_hash=verify)
    tree = manifest["state"]
    name = "ema" if use_ema and "ema" in tree else "model"
    if name not in tree:
        raise CheckpointError(f"{manifest_path} holds no model state")
    tensor_path = manifest_path.parent / manifest["tensors_file"]
    try:
        with safetensors.safe_open(str(tensor_path), framework="pt", device="cpu") as f:
            stored = set(f.keys())
            tensors = {n: f.get_tensor(n) for n in _tensor_names(tree[name]) if n in stored}
    except Exception as err:  # safetensors raises its own error type for a damaged file
        raise CheckpointError(f"cannot read the tensors of {manifest_path} from {tensor_path}: {err}") from err
    component = decode_state(tree[name], tensors)  # a name missing from the file raises here
    weights = component["shadow"] if name == "ema" else component
    _load_model_state(model, weights, strict, manifest_path)
    return Checkpoint(
        path=manifest_path,
        step=int(manifest["step"]),
        data_state=decode_state(manifest.get("data_state"), {}),
        rng_state=decode_state(manifest.get("rng_state"), {}),
        config=decode_state(manifest.get("config"), {}),
        extra=decode_state(manifest.get("extra"), {}),
        state={name: component},
    )


def read_checkpoint_config(checkpoint: str | os.PathLike) -> tuple[Path, dict]:
    """``(manifest path, config)`` of a checkpoint, read from its JSON only (no tensors, no pickle).

    ``checkpoint`` is a manifest, a checkpoint directory or a training output directory, or a
    ``save_pretrained`` directory: then ``(its config.json, {"model": {kind: config, **run records}})``
    (see :func:`reference_models.common.pretrained.pretrained_run_config`).
    """
    from .pretrained import CONFIG_NAME, is_pretrained_dir, pretrained_run_config, read_pretrained_config

    if is_pretrained_dir(checkpoint):
        return Path(checkpoint) / CONFIG_NAME, pretrained_run_config(read_pretrained_config(checkpoint))
    path = resolve_checkpoint(checkpoint)
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return path, decode_state(manifest.get("config") or {}, {})


def load_model_from_checkpoint(
    checkpoint: str | os.PathLike,
    key: str,
    build: Callable[[Mapping[str, Any]], nn.Module],
    *,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    pretrained: type | Sequence[type] | None = None,
) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a model from the config a training run stored and load its EMA (or trained) weights.

    Training scripts store ``config_dict={"model": {key: Config.to_dict()}}``; ``build`` turns that
    dict into the model (e.g. ``lambda d: EVDMUNet(EVDMConfig.from_dict(d))``). The model comes back
    on ``device`` in eval mode with the checkpoint it was loaded from. Only the model's weights are
    read (see :func:`load_weights`), never the optimizer state.

    ``pretrained``: the class (or classes) a ``save_pretrained`` directory of this model may hold.
    With it, ``checkpoint`` may also be such a directory, loaded with ``from_pretrained`` (it holds
    one set of weights, so ``use_ema`` does not apply); see
    :func:`reference_models.common.pretrained.pretrained_checkpoint` for the ``Checkpoint`` returned.
    """
    from .pretrained import is_pretrained_dir, pretrained_checkpoint

    if is_pretrained_dir(checkpoint):
        if pretrained is None:
            raise CheckpointError(
                f"{checkpoint} is a save_pretrained directory, not a training checkpoint: load it with the "
                "model class's from_pretrained"
            )
        return pretrained_checkpoint(checkpoint, pretrained, key, device=device)
    path, config = read_checkpoint_config(checkpoint)
    entry = (config.get("model") or {}).get(key)
    if entry is None:
        raise ValueError(f"checkpoint {path} holds no {key!r} model config (expected config['model'][{key!r}])")
    model = build(entry)
    ckpt = load_weights(path, model, use_ema=use_ema)
    return model.to(device).eval(), ckpt
