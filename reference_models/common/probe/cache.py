"""The probe's weight cache: where it lives, atomic writes, and a loader that reads JSON and
safetensors only (never pickle) and verifies the SHA-256 and the spec of what it reads."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch

from ..files import follow_umask
from .net import ProbeNet
from .spec import _FORMAT, PROBE_VERSION, ProbeSpec

__all__ = ["default_cache_dir"]

_SUBDIR = "shapes_probe"


def default_cache_dir() -> Path:
    """``$VDBLOCKS_CACHE``, else ``$XDG_CACHE_HOME/vdblocks``, else ``~/.cache/vdblocks``."""
    if os.environ.get("VDBLOCKS_CACHE"):
        return Path(os.environ["VDBLOCKS_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vdblocks"
    return Path.home() / ".cache" / "vdblocks"


def _cache_paths(cache_dir: str | os.PathLike | bool | None, key: str) -> tuple[Path, Path] | None:
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        root = default_cache_dir()
    elif isinstance(cache_dir, (str, os.PathLike)):
        root = Path(cache_dir).expanduser()
    else:
        raise TypeError(
            f"expected cache_dir to be a path, None (the default location) or False (no cache), "
            f"got {type(cache_dir).__name__}"
        )
    folder = root / _SUBDIR
    return folder / f"probe-{key}.json", folder / f"probe-{key}.safetensors"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        follow_umask(tmp)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save(paths: tuple[Path, Path], net: ProbeNet, meta: dict[str, Any]) -> None:
    manifest_path, tensor_path = paths
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    blob = safetensors.torch.save(state, metadata={"format": _FORMAT, "key": meta["key"]})
    _write_atomic(tensor_path, blob)
    meta = {**meta, "tensors_file": tensor_path.name, "tensors_sha256": hashlib.sha256(blob).hexdigest()}
    _write_atomic(manifest_path, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def _load(paths: tuple[Path, Path], spec: ProbeSpec) -> tuple[ProbeNet, dict[str, Any]]:
    """Read a cached probe (JSON and safetensors only); ``ValueError`` naming what does not verify."""
    manifest_path, tensor_path = paths
    try:
        meta = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{manifest_path.name} is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != PROBE_VERSION:
        raise ValueError(f"{manifest_path.name} is not a {_FORMAT} manifest of version {PROBE_VERSION}")
    if (
        meta.get("key") != spec.key()
        or meta.get("spec") != spec.to_dict()
        or meta.get("tensors_file") != tensor_path.name
    ):
        raise ValueError(f"{manifest_path.name} describes another probe")
    if not isinstance(meta.get("ground_truth"), dict):
        raise ValueError(f"{manifest_path.name} lacks the ground-truth accuracies")
    try:
        blob = tensor_path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {tensor_path.name} ({err})") from err
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise ValueError(f"{tensor_path.name} does not match the SHA-256 in {manifest_path.name}")
    try:
        state = safetensors.torch.load(blob)
        net = ProbeNet(spec)
        net.load_state_dict(state, strict=True)
    except Exception as err:  # safetensors' header errors, missing or mis-shaped tensors
        raise ValueError(f"{tensor_path.name} does not hold this probe's weights ({err})") from err
    return net.eval(), meta
