"""Checkpoints: exact round trips without pickle, atomic writes, pruning, RNG states."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from reference_models.common.checkpoint import (
    CheckpointError,
    StateDictMismatchError,
    capture_rng_state,
    decode_state,
    encode_state,
    find_resumable_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_from_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
)
from reference_models.common.ema import EMA
from reference_models.common.optim import build_optimizer, build_scheduler
from reference_models.common.precision import make_grad_scaler


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.norm = nn.LayerNorm(5)
        self.b = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.norm(self.a(x))))


def trained(seed: int, steps: int = 3):
    """A model, EMA, AdamW and scheduler after ``steps`` updates on random data."""
    torch.manual_seed(seed)
    model = Tiny()
    ema = EMA(model, decay=0.9)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.05)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=10, cosine=True, min_lr_ratio=0.1)
    for _ in range(steps):
        loss = model(torch.randn(4, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.update(model)
    return model, ema, opt, sched


def save(directory: Path, step: int, seed: int = 0, **kwargs) -> Path:
    model, ema, opt, sched = trained(seed)
    return save_checkpoint(directory, model=model, ema=ema, optimizer=opt, scheduler=sched, step=step, **kwargs)


def assert_tree_equal(a, b) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_tree_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_tree_equal(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    else:
        assert a == b


# --------------------------------------------------------------------------- encoding

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.builds(
        lambda shape, dtype: torch.randn(shape).to(dtype),
        st.lists(st.integers(0, 3), max_size=3),
        st.sampled_from([torch.float32, torch.bfloat16, torch.int64, torch.float16]),
    ),
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(st.text(min_size=1, max_size=4), children, max_size=3),
        st.dictionaries(st.integers(0, 9), children, max_size=3),
    ),
    max_leaves=10,
)


@given(tree=trees)
def test_encode_decode_round_trip_through_json(tree) -> None:
    tensors: dict[str, torch.Tensor] = {}
    encoded = json.loads(json.dumps(encode_state(tree, "root", tensors)))
    if tensors:  # through the safetensors byte format as well, as a checkpoint does
        tensors = safetensors.torch.load(safetensors.torch.save(tensors))
    assert_tree_equal(decode_state(encoded, tensors), tree)


def test_encode_rejects_unknown_objects() -> None:
    with pytest.raises(CheckpointError, match="cannot store a object at 'x.k'"):
        encode_state({"k": object()}, "x", {})


# --------------------------------------------------------------------------- round trips


def test_full_round_trip_is_exact_and_training_continues_identically(tmp_path: Path) -> None:
    model, ema, opt, sched = trained(seed=0)
    scaler = make_grad_scaler("fp32", "cpu")
    path = save_checkpoint(
        tmp_path,
        model=model,
        ema=ema,
        optimizer=opt,
        scheduler=sched,
        scaler=scaler,
        step=3,
        data_state={"epoch": 1, "batches_done": 2},
        rng_state=capture_rng_state(),
        config={"model": {"width": 5, "sizes": (3, 5)}},
        extra={"note": "x"},
    )
    model2, ema2, opt2, sched2 = trained(seed=1, steps=1)  # different weights and state
    ckpt = load_checkpoint(
        path, model=model2, ema=ema2, optimizer=opt2, scheduler=sched2, scaler=make_grad_scaler("fp32", "cpu")
    )
    assert ckpt.step == 3 and ckpt.path == path
    assert ckpt.data_state == {"epoch": 1, "batches_done": 2}
    assert ckpt.config == {"model": {"width": 5, "sizes": (3, 5)}} and ckpt.extra == {"note": "x"}
    assert_tree_equal(model2.state_dict(), model.state_dict())
    assert_tree_equal(ema2.state_dict(), ema.state_dict())
    assert_tree_equal(opt2.state_dict(), opt.state_dict())  # incl. tuple betas, int keys, step
    assert sched2.state_dict() == sched.state_dict()

    x = torch.randn(4, 3)
    for m, o, s in ((model, opt, sched), (model2, opt2, sched2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
        s.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_load_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path, step=1)

    def forbidden(*args, **kwargs):
        raise AssertionError("load_checkpoint must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    model, ema, opt, sched = trained(seed=5, steps=1)
    load_checkpoint(path, model=model, ema=ema, optimizer=opt, scheduler=sched)
    load_weights(path, Tiny())


def test_load_weights_prefers_ema(tmp_path: Path) -> None:
    model, ema, opt, sched = trained(seed=0)
    path = save_checkpoint(tmp_path, model=model, ema=ema, step=1)
    target = Tiny()
    load_weights(path, target)
    assert_tree_equal(target.state_dict(), ema.module.state_dict())
    load_weights(path, target, use_ema=False)
    assert_tree_equal(target.state_dict(), model.state_dict())


def test_model_is_rebuilt_from_the_stored_config(tmp_path: Path) -> None:
    model, ema, _, _ = trained(seed=0)
    save_checkpoint(tmp_path, model=model, ema=ema, step=3, config={"model": {"tiny": {"seed": 7}}})
    seen = []

    def build(entry):
        seen.append(dict(entry))
        return Tiny()

    rebuilt, ckpt = load_model_from_checkpoint(tmp_path, "tiny", build)
    assert seen == [{"seed": 7}] and ckpt.step == 3 and not rebuilt.training
    assert_tree_equal(rebuilt.state_dict(), ema.module.state_dict())
    with pytest.raises(ValueError, match=r"no 'other' model config"):
        load_model_from_checkpoint(tmp_path, "other", build)


def test_tied_weights_are_saved(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight
    path = save_checkpoint(tmp_path, model=model, step=0)
    other = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    load_checkpoint(path, model=other)
    assert torch.equal(other[0].weight, model[0].weight)
    assert torch.equal(other[1].weight, model[0].weight)


# --------------------------------------------------------------------------- atomicity


@pytest.mark.parametrize("failing_replace", [0, 1, 2])  # tensors, manifest, latest pointer
def test_interrupted_write_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_replace: int
) -> None:
    first = save(tmp_path, step=10, seed=0)
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) - 1 == failing_replace:
            raise OSError("simulated crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save(tmp_path, step=20, seed=1)
    monkeypatch.setattr(os, "replace", real_replace)

    assert latest_checkpoint(tmp_path) == first
    model = Tiny()
    assert load_checkpoint(tmp_path, model=model).step == 10
    expected, *_ = trained(seed=0)
    assert_tree_equal(model.state_dict(), expected.state_dict())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_corrupted_tensor_file_is_detected(tmp_path: Path) -> None:
    path = save(tmp_path, step=1)
    tensor_file = tmp_path / json.loads(path.read_text())["tensors_file"]
    data = bytearray(tensor_file.read_bytes())
    data[-1] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path, model=Tiny())


def test_missing_component_is_reported(tmp_path: Path) -> None:
    model, *_ = trained(seed=0)
    path = save_checkpoint(tmp_path, model=model, step=0)
    _, _, opt, _ = trained(seed=0)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, optimizer=opt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(empty)


def test_keep_last_and_resaving_a_step(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        save(tmp_path, step=step, keep_last=2)
    save(tmp_path, step=4, seed=9, keep_last=2)  # rewrite: the old tensor file goes away
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.json", "step_00000004.json"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    model = Tiny()
    load_checkpoint(tmp_path, model=model)
    expected, *_ = trained(seed=9)
    assert_tree_equal(model.state_dict(), expected.state_dict())


def test_directory_without_latest_resolves_to_the_newest_manifest(tmp_path: Path) -> None:
    for step in (1, 2):
        save(tmp_path, step=step, seed=step)
    (tmp_path / "latest").unlink()
    model = Tiny()
    assert load_checkpoint(tmp_path, model=model).step == 2
    expected, *_ = trained(seed=2)
    assert_tree_equal(model.state_dict(), expected.state_dict())


def test_resumable_checkpoint_takes_the_latest_hint_then_the_newest_that_verifies(
    tmp_path: Path,
) -> None:
    assert find_resumable_checkpoint(tmp_path / "missing") == (None, [])
    paths = [save(tmp_path, step=step) for step in (1, 2, 3)]
    (tmp_path / "latest").write_text(paths[1].name + "\n")  # a hint to an older one is followed
    assert find_resumable_checkpoint(tmp_path) == (paths[1], [])
    paths[1].write_text("[1, 2")
    found, notes = find_resumable_checkpoint(tmp_path)
    assert found == paths[2]
    assert len(notes) == 2 and "skipped checkpoint step_00000002.json" in notes[0]
    (tmp_path / "latest").write_text("step_00000009.json\n")  # names nothing: ignored
    found, notes = find_resumable_checkpoint(tmp_path)
    assert found == paths[2] and "'step_00000009.json', not a checkpoint" in notes[0]


def test_unreadable_manifest_keeps_its_tensor_file_when_pruning(tmp_path: Path) -> None:
    first = save(tmp_path, step=1)
    tensors = tmp_path / json.loads(first.read_text())["tensors_file"]
    first.write_text("{")
    save(tmp_path, step=2)  # prunes, reading every manifest
    assert first.exists() and tensors.exists()


def test_weights_of_another_architecture_are_summarised(tmp_path: Path) -> None:
    path = save(tmp_path, step=1)
    wide = nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 2))
    with pytest.raises(StateDictMismatchError) as info:
        load_weights(path, wide)
    message = str(info.value)
    assert "4 missing from the checkpoint: 0.weight, 0.bias, 1.weight, 1.bias;" in message
    assert "6 not in the model: a.weight, a.bias, norm.weight, norm.bias, ... (2 more)" in message
    assert len(message) < 600 and info.value.summary in message


# --------------------------------------------------------------------------- RNG states


def test_rng_state_round_trip() -> None:
    gen = torch.Generator().manual_seed(3)
    torch.randn(5), random.random(), np.random.rand(), random.gauss(0, 1), np.random.randn()
    state = json.loads(json.dumps(capture_rng_state({"noise": gen})))

    def draw():
        return (torch.randn(4), random.random(), random.gauss(0, 1), np.random.randn(3), torch.randn(4, generator=gen))

    first = draw()
    restore_rng_state(state, {"noise": gen})
    second = draw()
    for a, b in zip(first, second):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        else:
            assert np.array_equal(a, b)
    with pytest.raises(CheckpointError, match="'other'"):
        restore_rng_state(state, {"other": torch.Generator()})
