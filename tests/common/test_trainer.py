"""The training loop: exact resume, non-finite losses, sampling, data checks, LR, EMA, precision."""

from __future__ import annotations

import copy
import csv
import math
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from reference_models.common.checkpoint import latest_checkpoint, load_checkpoint
from reference_models.common.ema import EMA
from reference_models.common.logging import METRIC_COLUMNS, MetricsLogger
from reference_models.common.optim import build_optimizer, build_scheduler
from reference_models.common.precision import autocast, make_grad_scaler
from reference_models.common.trainer import (
    NonFiniteLossError,
    TrainConfig,
    check_dataset,
    enable_grad_checkpointing,
    train,
)


class ToyVideos(Dataset):
    """Fixed random clips (c, t, h, w) = (1, 2, 4, 4) with targets, from a seeded generator."""

    def __init__(self, n: int = 12, root: str | None = None) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 1, 2, 4, 4, generator=g)
        self.y = torch.randn(n, 3, generator=g)
        if root is not None:
            self.root = root

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"video": self.x[i], "target": self.y[i], "index": torch.tensor(i)}


class ToyNet(nn.Module):
    """A small conv net with dropout (so the global RNG matters) and a buffer (so EMA copies it)."""

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm3d(4)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.norm(self.conv(x))))  # (b, 4, t, h, w)
        return self.head(h.mean(dim=(2, 3, 4)))  # (b, 3)


def noisy_loss(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """Draws noise from the explicit generator, as a diffusion q_sample loss does."""
    x = batch["video"]
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return nn.functional.mse_loss(model(x + 0.1 * noise), batch["target"])


def make_cfg(tmp_path: Path, **overrides) -> TrainConfig:
    base = dict(
        steps=8,
        batch_size=4,
        lr=1e-2,
        weight_decay=0.01,
        warmup_steps=3,
        cosine=True,
        grad_clip=0.5,
        ema_decay=0.9,
        log_every=2,
        ckpt_every=100,
        out_dir=str(tmp_path),
        seed=7,
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def fresh_model(seed: int = 0) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet()


def assert_same_training_state(a, b) -> None:
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), name
    for (name, pa), (_, pb) in zip(a.ema.module.state_dict().items(), b.ema.module.state_dict().items()):
        assert torch.equal(pa, pb), f"ema {name}"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for idx in sa["state"]:
        for key, value in sa["state"][idx].items():
            assert torch.equal(value, sb["state"][idx][key]), (idx, key)
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


# --------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("stop", [3, 5])  # 3 batches per epoch: at an epoch boundary, mid-epoch
def test_resume_is_bitwise_exact(tmp_path: Path, stop: int) -> None:
    data = ToyVideos()
    straight = train(make_cfg(tmp_path / "straight"), fresh_model(), noisy_loss, data)

    cfg = make_cfg(tmp_path / "resumed")
    first = train(cfg, fresh_model(), noisy_loss, data, stop_at=stop)
    assert first.step == stop and latest_checkpoint(tmp_path / "resumed" / "checkpoints")
    torch.manual_seed(999)  # a resumed process starts with unrelated RNG states and weights
    resumed = train(cfg, fresh_model(seed=1), noisy_loss, data, resume=True)

    assert resumed.step == straight.step == cfg.steps
    assert (resumed.epoch, resumed.batches_done) == (straight.epoch, straight.batches_done)
    assert_same_training_state(straight, resumed)
    # The CSV continues where the first run stopped: no duplicated or missing log steps.
    logged = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "resumed" / "metrics.csv"))]
    assert logged == sorted(set(logged))
    assert {r["step"] for r in straight.history} <= set(logged)


def test_resume_with_another_batch_size_continues_the_epoch(tmp_path: Path) -> None:
    seen: list[int] = []

    def recording_loss(model, batch, generator):
        seen.extend(batch["index"].tolist())
        return noisy_loss(model, batch, generator)

    data = ToyVideos()  # 12 items
    train(make_cfg(tmp_path, steps=3), fresh_model(), recording_loss, data, stop_at=2)
    assert len(seen) == 8
    state = train(make_cfg(tmp_path, steps=4, batch_size=2), fresh_model(), recording_loss, data, resume=True)
    # 8 items used = 4 batches of 2; two more batches finish epoch 0 with no item repeated.
    assert (state.epoch, state.batches_done) == (0, 6)
    assert sorted(seen) == list(range(12))


def test_resume_true_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    state = train(make_cfg(tmp_path, steps=2), fresh_model(), noisy_loss, ToyVideos(), resume=True)
    assert state.step == 2


def test_resume_from_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(make_cfg(tmp_path), fresh_model(), noisy_loss, ToyVideos(), resume=tmp_path / "nowhere.json")


# --------------------------------------------------------------------------- non-finite losses


class PoisonedLoss:
    """``noisy_loss`` but NaN on call number ``bad``; records the weights seen at each call."""

    def __init__(self, bad: int) -> None:
        self.bad, self.calls, self.seen = bad, 0, []

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
        self.calls += 1
        self.seen.append([p.detach().clone() for p in model.parameters()])
        loss = noisy_loss(model, batch, generator)
        return loss * float("nan") if self.calls == self.bad else loss


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    model, loss = fresh_model(), PoisonedLoss(bad=5)
    cfg = make_cfg(tmp_path, ckpt_every=2, nonfinite="stop")
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, model, loss, ToyVideos())
    good = tmp_path / "checkpoints" / "step_00000004.json"
    message = str(info.value)
    assert "step 5" in message and str(good) in message and "nan" in message
    assert info.value.step == 5 and info.value.checkpoint == good
    assert latest_checkpoint(tmp_path / "checkpoints") == good
    restored = fresh_model(seed=3)
    load_checkpoint(good, model=restored)
    for p, q in zip(model.parameters(), restored.parameters()):  # the bad step changed nothing
        assert torch.equal(p, q)


def test_nan_loss_without_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet"):
        train(make_cfg(tmp_path, nonfinite="stop"), fresh_model(), PoisonedLoss(bad=1), ToyVideos())


def test_nan_loss_skip_counts_and_continues(tmp_path: Path) -> None:
    loss = PoisonedLoss(bad=4)
    state = train(make_cfg(tmp_path, nonfinite="skip", log_every=1), fresh_model(), loss, ToyVideos())
    assert state.step == 8 and state.skipped_steps == 1 and loss.calls == 8
    for before, after in zip(loss.seen[3], loss.seen[4]):  # weights before/after the bad step
        assert torch.equal(before, after)
    assert state.ema.num_updates == 7
    assert all(s["step"].item() == 7 for s in state.optimizer.state_dict()["state"].values())
    skipped_col = [int(r["skipped_steps"]) for r in state.history]
    assert skipped_col == [0, 0, 0, 1, 1, 1, 1, 1]
    assert math.isnan(state.history[3]["loss"])


# --------------------------------------------------------------------------- sampling


def test_sample_fn_writes_decodable_video(tmp_path: Path) -> None:
    from reference_models.common.video_io import read_video, write_video

    t, h, w = 5, 16, 24
    calls = []

    def sample_fn(ema_model: nn.Module, step: int, out_dir: Path) -> list[Path]:
        assert not ema_model.training
        g = torch.Generator().manual_seed(step)
        video = torch.tanh(torch.randn(3, t, h, w, generator=g) + ema_model.head.bias.mean())
        calls.append(step)
        return [write_video(out_dir / f"sample_{step:06d}.mp4", video, fps=8)]

    state = train(
        make_cfg(tmp_path, steps=4, sample_every=2), fresh_model(), noisy_loss, ToyVideos(), sample_fn=sample_fn
    )
    assert calls == [2, 4] and state.step == 4
    for step in calls:
        frames, timestamps, fps = read_video(tmp_path / "samples" / f"sample_{step:06d}.mp4")
        assert frames.shape == (t, h, w, 3) and frames.dtype == torch.uint8
        assert len(timestamps) == t and fps == pytest.approx(8)


def test_sampling_does_not_shift_training_rng(tmp_path: Path) -> None:
    def greedy_sampler(ema_model: nn.Module, step: int, out_dir: Path) -> list[Path]:
        torch.rand(1000)  # consumes the global RNG, which must not leak into training
        return []

    data = ToyVideos()
    plain = train(make_cfg(tmp_path / "a"), fresh_model(), noisy_loss, data)
    sampled = train(make_cfg(tmp_path / "b", sample_every=1), fresh_model(), noisy_loss, data, sample_fn=greedy_sampler)
    assert_same_training_state(plain, sampled)


# --------------------------------------------------------------------------- bad input


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(1)


@pytest.mark.parametrize(
    "dataset, error, match",
    [
        (ToyVideos(n=0), ValueError, "empty"),
        (ToyVideos(n=3), ValueError, "fewer than one global batch of 4"),
        (ToyVideos(root="/nonexistent/vdblocks-data"), FileNotFoundError, "does not exist"),
        (Stream(), TypeError, "map-style"),
    ],
)
def test_bad_dataset_rejected_before_training(tmp_path: Path, dataset, error, match) -> None:
    loss = PoisonedLoss(bad=0)
    with pytest.raises(error, match=match):
        train(make_cfg(tmp_path), fresh_model(), loss, dataset)
    assert loss.calls == 0 and not (tmp_path / "metrics.csv").exists()


def test_preflight_rejects_unfit_resolution_before_training(tmp_path: Path) -> None:
    def needs_8x8(model: nn.Module, item: dict) -> None:
        h, w = item["video"].shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"expected frames whose size is a multiple of 8, got {h}x{w}")

    loss = PoisonedLoss(bad=0)
    with pytest.raises(ValueError, match="multiple of 8, got 4x4"):
        train(make_cfg(tmp_path), fresh_model(), loss, ToyVideos(), preflight=needs_8x8)
    assert loss.calls == 0 and not (tmp_path / "metrics.csv").exists()


def test_check_dataset_counts_all_processes() -> None:
    assert check_dataset(ToyVideos(n=8), batch_size=4, world_size=2) == 8
    with pytest.raises(ValueError, match="batch_size 4 x 3 process"):
        check_dataset(ToyVideos(n=8), batch_size=4, world_size=3)


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        ("batch_size", -1),
        ("precision", "fp8"),
        ("nonfinite", "ignore"),
        ("ema_decay", 1.5),
        ("lr", 0.0),
        ("keep_last", 0),
    ],
)
def test_bad_config_rejected(tmp_path: Path, field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        make_cfg(tmp_path, **{field: value})


def test_loss_must_be_scalar(tmp_path: Path) -> None:
    def vector_loss(model, batch):
        return model(batch["video"]).sum(dim=1)

    with pytest.raises(ValueError, match="scalar"):
        train(make_cfg(tmp_path, steps=1), fresh_model(), vector_loss, ToyVideos())


# --------------------------------------------------------------------------- LR, EMA, precision


@given(
    warmup=st.integers(1, 6),
    extra=st.integers(1, 10),
    cosine=st.booleans(),
    min_ratio=st.floats(0.0, 0.5),
)
def test_warmup_schedule(warmup: int, extra: int, cosine: bool, min_ratio: float) -> None:
    base, total = 0.1, warmup + extra
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=base)
    sched = build_scheduler(opt, warmup, total, cosine=cosine, min_lr_ratio=min_ratio)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for i in range(warmup):  # linear ramp reaching the base rate on update number `warmup`
        assert lrs[i] == pytest.approx(base * (i + 1) / warmup)
    after = lrs[warmup:]
    if not cosine:
        assert after == pytest.approx([base] * len(after))
    else:
        assert after[0] == pytest.approx(base)
        assert all(a >= b - 1e-12 for a, b in zip(after, after[1:]))
        assert min(after) >= base * min_ratio - 1e-12


@given(decay=st.floats(0.0, 1.0), seed=st.integers(0, 100))
def test_ema_update_math(decay: float, seed: int) -> None:
    torch.manual_seed(seed)
    model = ToyNet()
    ema = EMA(model, decay=0.5)
    old = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.norm.running_mean.add_(1.0)
    ema.update(model, decay)
    live = model.state_dict()
    for name, p in model.named_parameters():
        expected = decay * old[name] + (1 - decay) * p
        assert torch.allclose(ema.module.state_dict()[name], expected, atol=1e-6)
    assert torch.equal(ema.module.norm.running_mean, live["norm.running_mean"])
    assert ema.num_updates == 1

    copy = ToyNet()
    ema.copy_to(copy)
    for a, b in zip(copy.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_extreme_decays_are_exact() -> None:
    model = fresh_model()
    ema = EMA(model, decay=1.0)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    ema.update(model)
    assert not torch.equal(ema.module.head.weight, model.head.weight)
    ema.update(model, decay=0.0)
    assert torch.equal(ema.module.head.weight, model.head.weight)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=2.0)


def test_bf16_autocast_on_cpu_trains(tmp_path: Path) -> None:
    dtypes = []

    def loss_fn(model, batch, generator):
        out = model(batch["video"])
        dtypes.append(out.dtype)
        return nn.functional.mse_loss(out.float(), batch["target"])

    model = fresh_model()
    before = [p.detach().clone() for p in model.parameters()]
    state = train(make_cfg(tmp_path, steps=2, precision="bf16"), model, loss_fn, ToyVideos())
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in state.model.parameters())
    assert all(math.isfinite(r["loss"]) for r in state.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, state.model.parameters()))


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        with autocast("fp16", "cpu"):
            pass
    with pytest.raises(ValueError, match="fp16"):
        make_grad_scaler("fp16", "cpu")
    assert not make_grad_scaler("bf16", "cpu").is_enabled()


def test_optimizer_decays_matrices_only() -> None:
    model = fresh_model()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for p in model.parameters():
        assert (id(p) in decay) == (p.ndim >= 2)


def test_optimizer_is_fused_on_cpu_and_matches_the_plain_adamw_update() -> None:
    # Both optimizers get the very same gradients, in float64: ToyNet's conv bias sits before
    # BatchNorm, so its true gradient is zero and what backward leaves there is rounding noise,
    # which Adam turns into full +-lr steps. In float32 that noise (~1e-9) is comparable to eps and
    # its sign depends on the CPU's summation order; in float64 (~1e-17) it is far below eps.
    torch.manual_seed(0)
    model = ToyNet(dropout=0.0).double()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 1, 3, 4, 4, dtype=torch.float64)
    fused = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    plain = build_optimizer(twin, lr=1e-2, weight_decay=0.1, fused=False)
    assert all(g["fused"] for g in fused.param_groups) and not any(g["fused"] for g in plain.param_groups)
    for _ in range(3):
        fused.zero_grad()
        model(x).square().sum().backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        fused.step()
        plain.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        # Three updates of size ~lr: float64 rounding of the update, with a wide margin.
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert not any(g["fused"] for g in build_optimizer(model, 1e-3, fused=False).param_groups)


# --------------------------------------------------------------------------- logging, checkpointing


def test_metrics_csv_columns_and_resume_truncation(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for step in (1, 2, 3):
            log.log(step, loss=0.5, lr=1e-3, grad_norm=1.0, it_per_s=10.0, skipped_steps=0)
    with MetricsLogger(tmp_path, resume_step=2, tensorboard=False) as log:
        log.log(3, loss=0.25)
        with pytest.raises(ValueError, match="unknown metric"):
            log.log(4, accuracy=1.0)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert tuple(rows[0].keys()) == METRIC_COLUMNS
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "0.5"), ("2", "0.5"), ("3", "0.25")]


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, enabled=False) as log:
        log.log(1, loss=1.0)
    assert not (tmp_path / "metrics.csv").exists()


def test_keep_last_and_config_in_checkpoint(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, steps=6, ckpt_every=1, keep_last=2)
    train(cfg, fresh_model(), noisy_loss, ToyVideos(), config_dict={"name": "toy", "width": 4})
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert [n for n in ckpts if n.endswith(".json")] == ["step_00000005.json", "step_00000006.json"]
    assert len([n for n in ckpts if n.endswith(".safetensors")]) == 2
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 6 and ckpt.config["model"] == {"name": "toy", "width": 4}
    assert ckpt.config["train"]["steps"] == 6 and ckpt.data_state["epoch"] == 1


def test_grad_checkpointing_flag_reaches_the_model(tmp_path: Path) -> None:
    class Checkpointable(ToyNet):
        enabled = False

        def set_grad_checkpointing(self, enable: bool = True) -> None:
            self.enabled = enable

    torch.manual_seed(0)
    model = Checkpointable()
    train(make_cfg(tmp_path, steps=1, grad_checkpointing=True), model, noisy_loss, ToyVideos())
    assert model.enabled
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not enable_grad_checkpointing(ToyNet(), True)
    assert any("grad_checkpointing" in str(w.message) for w in caught)
