import dataclasses
import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import vdblocks.attention.mixed as mixed_module
from reference_models.evdm.config import PRESETS, VARIANTS, EVDMConfig, get_config
from reference_models.evdm.model import (
    AttentionBlock,
    BRPResBlock,
    EVDMUNet,
    PastFrameEncoder,
    count_model_flops,
)
from vdblocks import ResBlock2d

# Figures the papers state (MCVD's KTH model as EVDM reports it; EVDM Tables 1 and 8): per 64x64
# sample, the paper's batch-64 GFLOPs divided by 64.
PAPER_KTH = {
    "mcvd": (62.83e6, 1376.87e9 / 64),
    "evdm": (28.1e6, 307.41e9 / 64),
    "evdm_l": (20.4e6, 133.99e9 / 64),
}
# Table 1: convolution parameters per layer (M).
PAPER_TABLE1_CONV_PARAMS = {
    "mcvd": (2.59, 8.23, 16.86, 31.14),
    "evdm": (1.66, 4.07, 6.99, 11.40),
    "evdm_l": (1.36, 2.99, 4.72, 7.26),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _params(model):
    return sum(p.numel() for p in model.parameters())


@functools.cache
def _kth_count(variant):
    return count_model_flops(get_config(f"kth_{variant}"))


@functools.cache
def _live(model):
    """``model`` with every all-zero parameter redrawn (small normal noise). ``EVDMUNet`` zeroes its
    residual and conditioning outputs when built (``init_weights``), so until training moves them
    the branches behind them get no gradient and conditioning cannot reach the output; tests of
    those paths need them live."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model


def _tiny(name):
    torch.manual_seed(0)
    return _live(EVDMUNet(get_config(name))).eval()


def _inputs(cfg, b=2, h=None, w=None, seed=0):
    h = h or cfg.image_size
    w = w or h
    g = torch.Generator().manual_seed(seed)

    def frames(n):
        return torch.randn(b, cfg.channels, n, h, w, generator=g) if n else None

    t = torch.randint(0, 1000, (b,), generator=g)
    return frames(cfg.num_frames), t, frames(cfg.num_past), frames(cfg.num_future)


# ---------------------------------------------------------------- presets and config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_the_blocks_its_switches_name(name):
    cfg = PRESETS[name]
    with FakeTensorMode():  # shapes only: the 0.6 B-parameter UCF baseline builds in a blink
        model = EVDMUNet(cfg)
    assert cfg.variant == name.split("_", 1)[1]
    res = [m for m in model.modules() if isinstance(m, (ResBlock2d, BRPResBlock))]
    # per level: N down blocks + 1 downsampler (not at the last), 2 middle, N + 1 up + 1 upsampler (not at 0)
    levels, n = cfg.num_levels, cfg.num_res_blocks
    assert len(res) == levels * (2 * n + 1) + 2 * (levels - 1) + 2
    assert all(isinstance(m, BRPResBlock if cfg.use_brp else ResBlock2d) for m in res)
    for m in res:
        if cfg.use_brp:
            assert m.brp.channel_split == cfg.channel_split
            assert m.brp.temporal_enhancement == cfg.temporal_enhancement
            assert m.brp.bottleneck_ratio == cfg.bottleneck_ratio
            if m.brp.shortcut_kind != "identity":
                assert m.brp.shortcut_kind == ("group_shuffle" if cfg.shortcut_optimization else "conv")
    attn = list(model.attention_blocks())
    assert len(attn) == len(cfg.attn_levels) * (n + 1) + 1
    assert all(blk.attn.algorithm == ("auto" if cfg.mixed_attention else "softmax") for _, blk in attn)
    assert (model.past_encoder is not None) == (cfg.temporal_enhancement and cfg.num_past > 0)


def test_meta_device_build_matches_a_real_one():
    cfg = get_config("tiny_evdm_l")
    with torch.device("meta"):
        meta = EVDMUNet(cfg)
    real = EVDMUNet(cfg)
    assert all(p.is_meta for p in meta.parameters())
    assert {n: p.shape for n, p in meta.named_parameters()} == {n: p.shape for n, p in real.named_parameters()}


@pytest.mark.parametrize("name", ["tiny_evdm_l", "bair_evdm_so_split", "ucf_mcvd"])
def test_json_round_trip(name):
    cfg = PRESETS[name]
    back = EVDMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.variant == cfg.variant
    assert get_config(name, dropout=0.0) == dataclasses.replace(cfg, dropout=0.0)


def test_variant_names_the_table8_row_and_custom_otherwise():
    assert [get_config(f"kth_{v}").variant for v in VARIANTS] == list(VARIANTS)
    assert get_config("kth_evdm", bottleneck_ratio=2).variant == "custom"


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(temporal_enhancement=True), ValueError),  # BRP-eh without BRP
        (dict(use_brp=False, channel_split=True), ValueError),
        (dict(attn_levels=(4,)), ValueError),
        (dict(image_size=60), ValueError),
        (dict(head_channels=64), ValueError),  # 96 channels are not whole heads of 64
        (dict(prob_mask_past=1.5), ValueError),
        (dict(use_brp=1), TypeError),
    ],
)
def test_config_rejects_inconsistent_settings(kwargs, error):
    with pytest.raises(error):
        EVDMConfig(**kwargs)


def test_config_rejects_unknown_fields():
    with pytest.raises(TypeError, match="unknown EVDMConfig fields"):
        EVDMConfig.from_dict({"ngf": 96})
    with pytest.raises(TypeError, match="unknown EVDMConfig fields"):
        get_config("kth_evdm", ngf=96)
    with pytest.raises(ValueError, match="preset name"):
        get_config("kth_evdm_xl")


# ---------------------------------------------------------------- sizes against the papers


def test_kth_baseline_matches_mcvd_within_2_percent():
    model, report = _kth_count("mcvd")
    params, macs = PAPER_KTH["mcvd"]
    assert abs(_params(model) / params - 1) <= 0.02
    assert abs(report.macs / macs - 1) <= 0.02


@pytest.mark.parametrize("variant, min_cut", [("evdm", 4.0), ("evdm_l", 9.0)])
def test_kth_evdm_sizes_within_20_percent_and_cut_the_baseline(variant, min_cut):
    model, report = _kth_count(variant)
    params, macs = PAPER_KTH[variant]
    assert abs(_params(model) / params - 1) <= 0.20
    assert abs(report.macs / macs - 1) <= 0.20
    assert _kth_count("mcvd")[1].macs / report.macs >= min_cut


@pytest.mark.parametrize("variant", sorted(PAPER_TABLE1_CONV_PARAMS))
def test_per_layer_res_block_parameters_follow_table1(variant):
    model, _ = _kth_count(variant)
    per_layer = [0] * model.cfg.num_levels
    for name, module in model.named_modules():
        if isinstance(module, (ResBlock2d, BRPResBlock)):
            per_layer[model.layer_of(name)] += _params(module)
    for ours, paper in zip(per_layer, PAPER_TABLE1_CONV_PARAMS[variant]):
        assert abs(ours / 1e6 / paper - 1) <= 0.02


# ---------------------------------------------------------------- mixed attention (eq. 14)


def test_kth_mixed_attention_picks_favor_exactly_where_eq14_says():
    model, _ = _kth_count("evdm")
    cfg = model.cfg
    plan = model.attention_plan()
    assert len(plan) == len(list(model.attention_blocks()))
    for entry in plan:
        n = entry["level"]
        width = cfg.base_channels * cfg.channel_mult[n]  # C = C_0 M_n
        heads = max(1, width // cfg.head_channels)  # h_n
        d = width // heads  # d = C / h_n
        tokens = cfg.image_size**2 // 4**n  # L = HW / 4^n
        assert (entry["tokens"], entry["heads"], entry["dim_head"]) == (tokens, heads, d)
        assert entry["algorithm"] == ("favor" if tokens > cfg.attn_threshold * d else "softmax")
    # Table 1: EVDM's attention is cheaper than MCVD's at Layers 2 and 3 only.
    assert {e["level"] for e in plan if e["algorithm"] == "favor"} == {1, 2}
    assert all(e["algorithm"] == "softmax" for e in _kth_count("mcvd")[0].attention_plan())


def test_forward_runs_the_algorithm_the_plan_names(monkeypatch):
    model = _tiny("tiny_evdm")
    calls = []
    real = mixed_module.attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q.shape[-2], q.shape[-1], kwargs.get("backend")))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(mixed_module, "attention", spy)
    x, t, past, future = _inputs(model.cfg, b=1)
    with torch.no_grad():
        model(x, t, past, future)
    algorithms = ["favor" if backend == "favor" else "softmax" for _, _, backend in calls]
    assert algorithms == [e["algorithm"] for e in model.attention_plan()]
    assert algorithms == ["favor" if n > 2 * d else "softmax" for n, d, _ in calls]
    assert set(algorithms) == {"favor", "softmax"}


# ---------------------------------------------------------------- forward / backward


@pytest.mark.parametrize(
    "name, b, size",
    [
        ("tiny_mcvd", 2, 32),
        ("tiny_evdm_l", 2, 32),
        ("tiny_evdm_split", 2, 16),
        ("kth_evdm", 1, 32),
        ("kth_evdm_l", 1, 32),
    ],
)
def test_every_parameter_gets_a_finite_gradient(name, b, size):
    torch.manual_seed(0)
    model = _live(EVDMUNet(get_config(name))).train()
    x, t, past, future = _inputs(model.cfg, b=b, h=size)
    masks = {}
    if b == 2:  # one sample keeps its conditioning, the other drops it
        masks = dict(
            past_mask=torch.tensor([True, False]),
            future_mask=torch.tensor([0.0, 1.0]) if model.cfg.num_future else None,
        )
    eps = model(x, t, past, future, **masks)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    eps.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@settings(max_examples=6)
@given(b=st.integers(1, 2), h=st.sampled_from([16, 24, 32]), w=st.sampled_from([16, 24, 32]), float_t=st.booleans())
def test_output_is_shaped_like_the_noisy_frames(b, h, w, float_t):
    model = _tiny("tiny_evdm_l")
    x, t, past, future = _inputs(model.cfg, b=b, h=h, w=w)
    with torch.no_grad():
        eps = model(x, t.float() + 0.5 if float_t else t, past, future)
    assert eps.shape == x.shape and eps.dtype == x.dtype
    assert torch.isfinite(eps).all()


@pytest.mark.parametrize("name", ["bair_evdm_l", "ucf_mcvd"])
def test_paper_size_presets_run_at_their_size(name):
    cfg = get_config(name)
    size = cfg.image_size
    with FakeTensorMode():
        model = EVDMUNet(cfg)

        def frames(n):
            return torch.zeros(2, cfg.channels, n, size, size) if n else None

        x = frames(cfg.num_frames)
        eps = model(x, torch.zeros(2), frames(cfg.num_past), frames(cfg.num_future))
    assert eps.shape == x.shape


# ---------------------------------------------------------------- masked conditioning (eq. 7)


def test_masked_out_conditioning_cannot_reach_the_output():
    model = _tiny("tiny_evdm")  # temporal enhancement: the past also feeds G_emb(p, t)
    cfg = model.cfg
    x, t, past, future = _inputs(cfg, b=2, seed=1)
    _, _, past2, future2 = _inputs(cfg, b=2, seed=2)
    past_mask, future_mask = torch.tensor([1.0, 0.0]), torch.tensor([False, True])
    with torch.no_grad():
        ref = model(x, t, past, future, past_mask, future_mask)
        # new content only where the masks drop it: sample 1's past, sample 0's future
        p = torch.stack([past[0], past2[1]])
        f = torch.stack([future2[0], future[1]])
        assert torch.equal(model(x, t, p, f, past_mask, future_mask), ref)
        # dropping = passing nothing = passing zeros
        both_dropped = model(x, t, None, None)
        zeros = torch.zeros(2)
        assert torch.equal(model(x, t, past2, future2, zeros, zeros), both_dropped)
        # kept content does matter, and only for its own sample
        p = torch.stack([past2[0], past[1]])
        changed = model(x, t, p, future, past_mask, future_mask)
    assert not torch.allclose(changed[0], ref[0])
    assert torch.equal(changed[1], ref[1])


# ---------------------------------------------------------------- init_weights


@pytest.mark.parametrize("name", ["tiny_mcvd", "tiny_evdm"])
def test_init_weights_starts_every_branch_as_identity(name):
    torch.manual_seed(0)
    model = EVDMUNet(get_config(name)).eval()  # as built: init_weights runs in __init__
    seen = []

    def check(module, args, out):
        x = args[0]
        if isinstance(module, AttentionBlock):
            expected = x / math.sqrt(2.0)
        else:
            inner = module.brp if isinstance(module, BRPResBlock) else module
            skip = module.resample(x) if module.resample is not None else x
            expected = inner.shortcut(skip) / math.sqrt(2.0)
        torch.testing.assert_close(out, expected)
        seen.append(type(module))

    hooks = [
        m.register_forward_hook(check)
        for m in model.modules()
        if isinstance(m, (AttentionBlock, ResBlock2d, BRPResBlock))
    ]
    emb_seen = []
    if model.past_encoder is not None:
        hooks.append(model.past_encoder.register_forward_hook(lambda m, a, out: emb_seen.append(out)))
    x, t, past, future = _inputs(model.cfg, b=2)
    with torch.no_grad():
        eps = model(x, t, past, future)
    for h in hooks:
        h.remove()
    assert AttentionBlock in seen and len(seen) > 10
    assert all(torch.count_nonzero(e) == 0 for e in emb_seen)
    assert torch.count_nonzero(eps) == 0  # the output convolution starts at zero, as MCVD's


# ---------------------------------------------------------------- boundary checks


def test_rejects_malformed_input():
    model = _tiny("tiny_evdm")
    cfg = model.cfg
    x, t, past, future = _inputs(cfg, b=2)
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\) with c=1"):
        model(x.repeat(1, 3, 1, 1, 1), t, past, future)
    with pytest.raises(ValueError, match=r"t=2"):
        model(x[:, :, :1], t, past, future)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(x[..., :12, :12], t, past[..., :12, :12], future[..., :12, :12])
    with pytest.raises(ValueError, match=r"t of shape \(b,\)"):
        model(x, t[:1], past, future)
    with pytest.raises(ValueError, match=r"past of shape \(b, c, t, h, w\)"):
        model(x, t, past[:, :, :1], future)
    with pytest.raises(ValueError, match=r"future_mask of shape \(b,\)"):
        model(x, t, past, future, future_mask=torch.ones(3))
    with pytest.raises(TypeError):
        model(x.long(), t, past, future)
    with pytest.raises(TypeError, match="dtype torch.float32"):
        model(x.double(), t, past, future)
    no_future = EVDMUNet(get_config("tiny_mcvd", num_future=0, prob_mask_future=0.0))
    with pytest.raises(ValueError, match="num_future=0"):
        no_future(x, t, past, future)


def test_past_encoder_pools_any_frame_size_to_one_vector():
    enc = PastFrameEncoder(6, 40, hidden=16)
    for h, w in [(8, 8), (16, 24), (64, 64)]:
        assert enc(torch.randn(2, 6, h, w)).shape == (2, 40)


def test_bench_quick_json_reports_the_kth_rows_and_passing_checks():
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / "evdm_table.py"), "--quick", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"machine", "results", "table8", "checks"} <= payload.keys()
    assert [row["preset"] for row in payload["table8"]] == ["kth_mcvd", "kth_evdm", "kth_evdm_l"]
    assert payload["checks"] and all(payload["checks"].values())
