"""ResBlock2d: one residual block in three configurations (Stable Diffusion, MCVD's BigGAN++, ADM).

The references here are written from the formulas, not from the block's code: the three residual
blocks the library had before ``ResBlock2d`` replaced them (ETC's SD block, EVDM's MCVD baseline
block, PVDM's and CMD's ADM block) are re-implemented below as small modules with their own state
dict layouts, the FIR resampling as score_sde's ``upfirdn2d``, and diffusers' ``ResnetBlock2D``
serves as a third-party reference where it is installed. Every configuration the four systems build
must reproduce its reference's outputs (float64), parameter count and MACs, block by block and for
whole tiny/small models.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from vdblocks import PointwiseConv2d, Resample2d, ResBlock2d, ScaleShiftGroupNorm
from vdblocks.flops import count_flops

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

F64 = dict(dtype=torch.float64)
TIGHT = dict(rtol=1e-10, atol=1e-10)


def divisor_at_most(channels: int, bound: int) -> int:
    """The GroupNorm group count both old codebases used: the largest divisor of ``channels`` <= ``bound``."""
    return max(g for g in range(1, min(bound, channels) + 1) if channels % g == 0)


def small_map(channels: int) -> int:
    """PVDM's / CMD's group bound (at least two channels per group, at most 32), written out again."""
    return max(1, min(32, channels // 2))


# ------------------------------------------------------------------------------------ references


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, pad: tuple[int, int]) -> torch.Tensor:
    """score_sde's ``upfirdn2d_native``: zero-insertion upsampling, padding, FIR filter, decimation."""
    b, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(b, c, h * up, w * up)
        z[..., ::up, ::up] = x
        x = z
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).to(x)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=c)[..., ::down, ::down]


def fir_kernel() -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], **F64)
    k = torch.outer(k, k)
    return k / k.sum()


def resample_reference(x: torch.Tensor, mode: str, fir: bool) -> torch.Tensor:
    """score_sde's ``upsample_2d`` / ``downsample_2d`` (factor 2, k = [1, 3, 3, 1]) and their naive forms."""
    if fir:
        if mode == "up":
            return upfirdn2d(x, fir_kernel() * 4, up=2, down=1, pad=(2, 1))
        return upfirdn2d(x, fir_kernel(), up=1, down=2, pad=(1, 1))
    if mode == "up":
        return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    b, c, h, w = x.shape
    x = x[..., : 2 * (h // 2), : 2 * (w // 2)]
    return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


def old_resample(x: torch.Tensor, mode: str, fir: bool) -> torch.Tensor:
    """The removed ``reference_models.evdm.model.Resample``'s arithmetic: a depthwise (transposed)
    convolution with the FIR kernel, so that MAC counters see it as the old block did."""
    if not fir:
        return F.interpolate(x, scale_factor=2.0, mode="nearest") if mode == "up" else F.avg_pool2d(x, 2)
    c = x.shape[1]
    weight = (fir_kernel() * (4.0 if mode == "up" else 1.0)).to(x)[None, None].expand(c, 1, 4, 4)
    if mode == "up":
        return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)
    return F.conv2d(F.pad(x, (1, 1, 1, 1)), weight, stride=2, groups=c)


class RefScaleShiftNorm(nn.Module):
    """``GN(x) (1 + s) + t``, ``[s, t] = Linear(SiLU(emb))``: keys ``norm.*``, ``proj.*``."""

    def __init__(self, channels: int, emb_dim: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.proj = nn.Linear(emb_dim, 2 * channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(F.silu(emb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[..., None, None]) + shift[..., None, None]


class RefSD(nn.Module):
    """ETC's old ``ResBlock`` (Stable Diffusion's ResnetBlock2D), with its state-dict keys; ETC's
    ``norm_groups`` bounds the groups (32 in SD 2.1)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, max_groups: int = 32) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(divisor_at_most(c_in, max_groups), c_in, eps=1e-5)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(divisor_at_most(c_out, max_groups), c_out, eps=1e-5)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[..., None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class RefBigGAN(nn.Module):
    """EVDM's old ``BigGANResBlock`` (MCVD's ResnetBlockBigGANppGN), with its state-dict keys."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, resample: str | None, fir: bool) -> None:
        super().__init__()
        self.resample, self.fir = resample, fir
        self.norm0 = RefScaleShiftNorm(c_in, emb_dim, divisor_at_most(c_in, 32), 1e-6)
        self.conv0 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = RefScaleShiftNorm(c_out, emb_dim, divisor_at_most(c_out, 32), 1e-6)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1)
        project = c_in != c_out or resample is not None
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if project else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm0(x, emb))
        if self.resample is not None:
            h, x = old_resample(h, self.resample, self.fir), old_resample(x, self.resample, self.fir)
        h = self.conv0(h)
        h = self.conv1(F.silu(self.norm1(h, emb)))
        return (self.shortcut(x) + h) / math.sqrt(2.0)


class RefADM(nn.Module):
    """PVDM's and CMD's old ``ADMResBlock``, with its state-dict keys."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(divisor_at_most(c_in, small_map(c_in)), c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = RefScaleShiftNorm(c_out, emb_dim, divisor_at_most(c_out, small_map(c_out)), 1e-6)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h, emb)))
        return self.skip(x) + h


# The state-dict keys of each old block, from ResBlock2d's (one rename at a time, no chains).
OLD_KEYS = {
    "bias": {},  # SD / ETC: unchanged (diffusers' names but time_emb_proj -> emb_proj, conv_shortcut -> shortcut)
    "scale_shift_both": {"norm1.": "norm0.", "conv1.": "conv0.", "norm2.": "norm1.", "conv2.": "conv1."},
    "scale_shift": {"shortcut.": "skip."},
}


def old_state(block: ResBlock2d) -> dict[str, torch.Tensor]:
    renames = OLD_KEYS[block.emb_mode]
    out = {}
    for key, value in block.state_dict().items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        out[renames[prefix] + key[len(prefix) :] if prefix else key] = value
    return out


def reference_for(block: ResBlock2d, sd_norm_groups: int = 32) -> nn.Module:
    """The old block ``block`` replaces, built from its sizes alone (and, for ETC's, the config's
    ``norm_groups``): the rest of each configuration is the old block's."""
    c_in, c_out, e = block.in_channels, block.out_channels, block.emb_dim
    if block.emb_mode == "bias":
        return RefSD(c_in, c_out, e, sd_norm_groups)
    if block.emb_mode == "scale_shift_both":
        resample = None if block.resample is None else block.resample.mode
        return RefBigGAN(c_in, c_out, e, resample, True if block.resample is None else block.resample.fir)
    return RefADM(c_in, c_out, e)


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """A float64 copy with every parameter redrawn, so that no zero-initialised branch hides a term."""
    module = copy.deepcopy(module).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, **F64) + (1.0 if p.ndim == 1 else 0.0))
    return module


# ----------------------------------------------------------------------------- the generic formula


def formula(block: ResBlock2d, x, emb, *, g1, g2, eps, resample, fir, project, rescale):
    """The docstring's formulas, on the block's own weights."""

    def gn(t, norm, groups):
        return F.group_norm(t, groups, norm.weight, norm.bias, eps)

    def scale_shift(t, ssgn, groups):
        scale, shift = F.linear(F.silu(emb), ssgn.proj.weight, ssgn.proj.bias).chunk(2, dim=1)
        return gn(t, ssgn.norm, groups) * (1 + scale[..., None, None]) + shift[..., None, None]

    mode = block.emb_mode
    h = scale_shift(x, block.norm1, g1) if mode == "scale_shift_both" else gn(x, block.norm1, g1)
    h = F.silu(h)
    if resample is not None:
        h, x = resample_reference(h, resample, fir), resample_reference(x, resample, fir)
    h = F.conv2d(h, block.conv1.weight, block.conv1.bias, padding=1)
    if mode == "bias":
        h = h + F.linear(F.silu(emb), block.emb_proj.weight, block.emb_proj.bias)[..., None, None]
        h = gn(h, block.norm2, g2)
    else:
        h = scale_shift(h, block.norm2, g2)
    h = F.conv2d(F.silu(h), block.conv2.weight, block.conv2.bias, padding=1)
    skip = F.conv2d(x, block.shortcut.weight, block.shortcut.bias) if project else x
    out = skip + h
    return out / math.sqrt(2.0) if rescale else out


def expected_params(c: int, o: int, e: int, mode: str, project: bool) -> int:
    n = 2 * c + (9 * c * o + o) + 2 * o + (9 * o * o + o)  # GN, conv3x3, GN, conv3x3
    n += (e * o + o) if mode == "bias" else (2 * o * e + 2 * o)  # emb bias, or norm2's scale-shift
    n += (2 * c * e + 2 * c) if mode == "scale_shift_both" else 0
    return n + ((c * o + o) if project else 0)


def expected_macs(b, c, o, e, h, w, mode, resample, fir, project) -> int:
    hp, wp = {None: (h, w), "up": (2 * h, 2 * w), "down": (h // 2, w // 2)}[resample]
    m = 9 * c * o * hp * wp + 9 * o * o * hp * wp + (c * o * hp * wp if project else 0)
    m += {"bias": e * o, "scale_shift": 2 * o * e, "scale_shift_both": 2 * o * e + 2 * c * e}[mode]
    if resample is not None and fir:  # branch and shortcut input, c channels each
        m += 2 * 16 * c * (h * w if resample == "up" else hp * wp)
    return b * m


@st.composite
def block_case(draw):
    c_in, c_out = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    resample = draw(st.sampled_from([None, "up", "down"]))
    projects = [None, True] + ([False] if c_in == c_out else [])
    small = draw(st.booleans())
    return dict(
        c_in=c_in,
        c_out=c_out,
        emb_dim=draw(st.integers(1, 6)),
        emb_mode=draw(st.sampled_from(["bias", "scale_shift", "scale_shift_both"])),
        resample=resample,
        fir=draw(st.booleans()),
        project_shortcut=draw(st.sampled_from(projects)),
        skip_rescale=draw(st.booleans()),
        norm_groups=small_map if small else draw(st.integers(1, 8)),
        eps=draw(st.sampled_from([1e-5, 1e-6])),
        b=draw(st.integers(1, 3)),
        h=draw(st.integers(2, 7)),
        w=draw(st.integers(2, 7)),
        seed=draw(st.integers(0, 2**16)),
    )


def _build(case: dict) -> ResBlock2d:
    keys = ("emb_dim", "emb_mode", "resample", "fir", "project_shortcut", "skip_rescale", "norm_groups", "eps")
    return ResBlock2d(case["c_in"], case["c_out"], **{k: case[k] for k in keys})


@given(case=block_case())
def test_any_configuration_follows_its_formula_in_value_gradient_size_and_macs(case):
    torch.manual_seed(case["seed"])
    c, o, e, b, h, w = (case[k] for k in ("c_in", "c_out", "emb_dim", "b", "h", "w"))
    block = _build(case)
    project = (
        case["project_shortcut"] if case["project_shortcut"] is not None else (c != o or case["resample"] is not None)
    )
    assert isinstance(block.shortcut, PointwiseConv2d if project else nn.Identity)
    assert sum(p.numel() for p in block.parameters()) == expected_params(c, o, e, case["emb_mode"], project)
    x, emb = torch.randn(b, c, h, w), torch.randn(b, e)
    hp, wp = {None: (h, w), "up": (2 * h, 2 * w), "down": (h // 2, w // 2)}[case["resample"]]
    bound = case["norm_groups"]
    if b * hp * wp == 1 and o // divisor_at_most(o, bound(o) if callable(bound) else bound) == 1:
        # The second norm would see one value per group (zero variance): a clear error, not a silent zero.
        with pytest.raises(ValueError, match=r"\(b, c, h, w\) with b\*h\*w > 1.*single values"):
            block(x, emb)
        return
    with torch.no_grad():
        macs = count_flops(block, x, emb).macs
    assert macs == expected_macs(b, c, o, e, h, w, case["emb_mode"], case["resample"], case["fir"], project)

    block = randomised(block, case["seed"])
    x = x.double().requires_grad_()
    emb = emb.double().requires_grad_()
    out = block(x, emb)
    assert out.shape == (b, o, hp, wp) and out.dtype == torch.float64
    g1, g2 = (divisor_at_most(n, bound(n) if callable(bound) else bound) for n in (c, o))
    ref = formula(
        block,
        x,
        emb,
        g1=g1,
        g2=g2,
        eps=case["eps"],
        resample=case["resample"],
        fir=case["fir"],
        project=project,
        rescale=case["skip_rescale"],
    )
    torch.testing.assert_close(out, ref, **TIGHT)
    grad = torch.randn(out.shape, **F64)
    got = torch.autograd.grad(out, (x, emb), grad)  # the in-place activations keep gradients exact
    want = torch.autograd.grad(ref, (x, emb), grad)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, **TIGHT)


# ------------------------------------------------------------- the three configurations the systems build


def _system_blocks() -> dict[str, list[ResBlock2d]]:
    """Every distinct res block (by configuration and sizes) of the four systems' tiny presets."""
    from reference_models.cmd.config import get_config as cmd_config
    from reference_models.cmd.content_model import ContentUNet
    from reference_models.etc.config import get_config as etc_config
    from reference_models.etc.model import ETCUNet
    from reference_models.evdm.config import get_config as evdm_config
    from reference_models.evdm.model import EVDMUNet
    from reference_models.pvdm.config import get_diffusion_config
    from reference_models.pvdm.unet import TriplaneUNet

    models = {
        "etc": ETCUNet(etc_config("tiny")),
        "evdm_mcvd": EVDMUNet(evdm_config("tiny_mcvd")),
        "cmd": ContentUNet(cmd_config("tiny")),
        "pvdm": TriplaneUNet(get_diffusion_config("tiny")),
    }
    found = {"etc_norm_groups": models["etc"].cfg.norm_groups}
    for name, model in models.items():
        seen, blocks = set(), []
        for m in model.modules():
            if isinstance(m, ResBlock2d):
                key = (m.in_channels, m.out_channels, None if m.resample is None else m.resample.mode)
                if key not in seen:
                    seen.add(key)
                    blocks.append(m)
        found[name] = blocks
    return found


SYSTEM_MODES = {"etc": "bias", "evdm_mcvd": "scale_shift_both", "cmd": "scale_shift", "pvdm": "scale_shift"}


@pytest.fixture(scope="module")
def system_blocks():
    torch.manual_seed(0)
    return _system_blocks()


@pytest.mark.parametrize("system", sorted(SYSTEM_MODES))
def test_system_blocks_equal_the_old_blocks_with_their_weights(system_blocks, system):
    """Each system's blocks, loaded into the old block they replace (old state-dict keys), give the
    same output in float64: SD's for ETC, MCVD's BigGAN++ (up/down included) for EVDM's baseline,
    ADM's for PVDM and CMD."""
    blocks = system_blocks[system]
    assert blocks and all(b.emb_mode == SYSTEM_MODES[system] for b in blocks)
    if system == "evdm_mcvd":
        assert {None, "up", "down"} == {None if b.resample is None else b.resample.mode for b in blocks}
    assert any(isinstance(b.shortcut, nn.Identity) for b in blocks)
    assert any(not isinstance(b.shortcut, nn.Identity) for b in blocks)
    g = torch.Generator().manual_seed(1)
    for i, block in enumerate(blocks):
        block = randomised(block, seed=i)
        ref = reference_for(block, system_blocks["etc_norm_groups"]).double().eval()
        ref.load_state_dict(old_state(block), strict=True)  # the old layout holds exactly these tensors
        x = torch.randn(2, block.in_channels, 4, 6, generator=g, **F64)
        emb = torch.randn(2, block.emb_dim, generator=g, **F64)
        with torch.no_grad():
            torch.testing.assert_close(block(x, emb), ref(x, emb), **TIGHT)


def test_etc_keeps_sd_state_dict_keys():
    """ETC's blocks keep the old ResBlock's keys: diffusers' ResnetBlock2D names with ``emb_proj``
    for ``time_emb_proj`` and ``shortcut`` for ``conv_shortcut``."""
    block = ResBlock2d(64, 96, emb_dim=32, emb_mode="bias", norm_groups=32, eps=1e-5)
    assert (
        set(block.state_dict())
        == set(RefSD(64, 96, 32).state_dict())
        == {
            f"{m}.{p}" for m in ("norm1", "conv1", "emb_proj", "norm2", "conv2", "shortcut") for p in ("weight", "bias")
        }
    )


def test_old_resample_arithmetic_is_score_sde_upfirdn2d():
    """The MAC-visible (transposed) convolutions of the old block and Resample2d are upfirdn2d."""
    g = torch.Generator().manual_seed(0)
    for h, w in ((4, 4), (3, 5), (2, 7)):
        x = torch.randn(2, 3, h, w, generator=g, **F64)
        for mode in ("up", "down"):
            for fir in (True, False):
                want = resample_reference(x, mode, fir)
                torch.testing.assert_close(old_resample(x, mode, fir), want, **TIGHT)
                torch.testing.assert_close(Resample2d(mode, fir).double()(x), want, **TIGHT)


# ------------------------------------------------------------------ whole models: params, MACs, outputs


def _swap_in_references(model: nn.Module) -> int:
    """Replace every ResBlock2d of ``model`` by the old block it stands for (weights copied); return
    how many were replaced."""
    sd_norm_groups = getattr(model.cfg, "norm_groups", 32)  # ETC's config bounds its groups
    swaps = [(name, m) for name, m in model.named_modules() if isinstance(m, ResBlock2d)]
    for name, block in swaps:
        parent, _, child = name.rpartition(".")
        ref = reference_for(block, sd_norm_groups)
        dtype = next(block.parameters()).dtype
        if dtype != torch.float32:
            ref = ref.to(dtype)
        ref.load_state_dict(old_state(block))
        setattr(model.get_submodule(parent), child, ref)
    return len(swaps)


def _etc(name):
    from reference_models.etc.config import get_config
    from reference_models.etc.model import ETCUNet

    cfg = get_config(name)

    def inputs(dtype=torch.float32):
        return (
            torch.randn(1, cfg.in_channels, cfg.frames, cfg.height, cfg.width, dtype=dtype),
            torch.tensor([17]),
            torch.tensor([8.0], dtype=dtype),
            torch.randn(1, 5, cfg.context_dim, dtype=dtype),
        )

    return lambda: ETCUNet(cfg), inputs


def _evdm(name):
    from reference_models.evdm.config import get_config
    from reference_models.evdm.model import EVDMUNet

    cfg = get_config(name)

    def inputs(dtype=torch.float32):
        def frames(n):
            return torch.randn(1, cfg.channels, n, cfg.image_size, cfg.image_size, dtype=dtype) if n else None

        return frames(cfg.num_frames), torch.tensor([17]), frames(cfg.num_past), frames(cfg.num_future)

    return lambda: EVDMUNet(cfg), inputs


def _cmd(name):
    from reference_models.cmd.config import get_config
    from reference_models.cmd.content_model import ContentUNet

    cfg = get_config(name)

    def inputs(dtype=torch.float32):
        return torch.randn(1, cfg.channels, cfg.height, cfg.width, dtype=dtype), torch.tensor([17])

    return lambda: ContentUNet(cfg), inputs


def _pvdm(name):
    from reference_models.pvdm.config import get_diffusion_config
    from reference_models.pvdm.unet import TriplaneUNet

    cfg = get_diffusion_config(name)
    t, h, w = cfg.latent_grid

    def inputs(dtype=torch.float32):
        return torch.randn(1, cfg.latent_channels, h * w + t * w + t * h, dtype=dtype), torch.tensor([17])

    return lambda: TriplaneUNet(cfg), inputs


PRESET_MODELS = {
    "etc/tiny": lambda: _etc("tiny"),
    "etc/small": lambda: _etc("small"),
    "evdm/tiny_mcvd": lambda: _evdm("tiny_mcvd"),
    "evdm/kth_mcvd": lambda: _evdm("kth_mcvd"),  # the paper's baseline: MCVD's KTH U-Net
    "cmd/tiny": lambda: _cmd("tiny"),
    "pvdm/tiny": lambda: _pvdm("tiny"),
}


@pytest.mark.parametrize("preset", sorted(PRESET_MODELS))
def test_preset_parameters_and_macs_equal_a_build_with_the_old_blocks(preset):
    """The model with every ResBlock2d replaced by the old block it stands for has the same parameter
    count and forward MACs (shapes only: fake tensors, so the KTH baseline counts in a second)."""
    build, inputs = PRESET_MODELS[preset]()

    def measure(model: nn.Module) -> tuple[int, int]:
        with torch.no_grad():
            macs = count_flops(model, *inputs()).macs
        return sum(p.numel() for p in model.parameters()), macs

    with FakeTensorMode():  # one mode for both: the models may share cached fake tables
        ours, reference = build().eval(), build().eval()
        assert _swap_in_references(reference) > 0
        assert not any(isinstance(m, ResBlock2d) for m in reference.modules())
        assert measure(ours) == measure(reference)


@pytest.mark.parametrize("preset", ["etc/tiny", "evdm/tiny_mcvd", "cmd/tiny", "pvdm/tiny"])
def test_tiny_models_equal_their_old_block_builds_in_float64(preset):
    """Whole tiny models (randomised weights) give the same output with the old blocks swapped in."""
    build, inputs = PRESET_MODELS[preset]()
    torch.manual_seed(0)
    model = randomised(build(), seed=3)
    reference = copy.deepcopy(model)
    assert _swap_in_references(reference) > 0
    torch.manual_seed(1)
    args = inputs(torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(*args), reference(*args), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- diffusers as a reference


@pytest.mark.parametrize(
    "emb_mode, resample, fir",
    [
        ("bias", None, True),
        ("scale_shift", None, True),
        ("scale_shift", "up", True),
        ("scale_shift", "down", True),
        ("bias", "up", False),
        ("bias", "down", False),
    ],
)
@pytest.mark.parametrize("c_in, c_out", [(8, 12), (12, 12)])
def test_matches_diffusers_resnet_block(emb_mode, resample, fir, c_in, c_out):
    """SD's configuration is diffusers' ``ResnetBlock2D`` (``time_embedding_norm="default"``), ADM's its
    ``"scale_shift"`` form; resampling is its ``kernel="fir"`` (score_sde) or ``"sde_vp"`` (naive)."""
    resnet = pytest.importorskip("diffusers.models.resnet")
    torch.manual_seed(0)
    groups, e = 4, 6
    ours = ResBlock2d(
        c_in,
        c_out,
        emb_dim=e,
        emb_mode=emb_mode,
        resample=resample,
        fir=fir,
        project_shortcut=c_in != c_out,
        norm_groups=groups,
        eps=1e-5,
        skip_rescale=True,
    )
    theirs = resnet.ResnetBlock2D(
        in_channels=c_in,
        out_channels=c_out,
        temb_channels=e,
        groups=groups,
        eps=1e-5,
        time_embedding_norm="default" if emb_mode == "bias" else "scale_shift",
        output_scale_factor=math.sqrt(2.0),
        up=resample == "up",
        down=resample == "down",
        kernel="fir" if fir else "sde_vp",
    )
    ours = randomised(ours)
    renames = {
        "emb_proj.": "time_emb_proj.",
        "norm2.proj.": "time_emb_proj.",
        "norm2.norm.": "norm2.",
        "shortcut.": "conv_shortcut.",
    }
    state = {}
    for key, value in ours.state_dict().items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        state[renames[prefix] + key[len(prefix) :] if prefix else key] = value
    theirs.double().eval().load_state_dict(state, strict=True)
    x, emb = torch.randn(2, c_in, 4, 6, **F64), torch.randn(2, e, **F64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, emb), theirs(x, emb), **TIGHT)


# ------------------------------------------------------------------------------ init, gradients, errors


@pytest.mark.parametrize("emb_mode", ["bias", "scale_shift", "scale_shift_both"])
@pytest.mark.parametrize("resample", [None, "up", "down"])
def test_every_parameter_gets_a_gradient(emb_mode, resample):
    torch.manual_seed(0)
    block = ResBlock2d(4, 6, emb_dim=5, emb_mode=emb_mode, resample=resample, dropout=0.1, norm_groups=2)
    out = block(torch.randn(2, 4, 4, 4), torch.randn(2, 5))
    (out * torch.randn(out.shape)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "c_in, c_out, resample, rescale",
    [
        (6, 6, None, False),
        (6, 6, None, True),
        (4, 6, None, False),
        (6, 6, "down", True),
        (4, 6, "up", True),
    ],
)
@pytest.mark.parametrize("emb_mode", ["bias", "scale_shift", "scale_shift_both"])
def test_zero_residual_makes_the_block_its_rescaled_shortcut(emb_mode, c_in, c_out, resample, rescale):
    torch.manual_seed(0)
    block = ResBlock2d(
        c_in, c_out, emb_dim=5, emb_mode=emb_mode, resample=resample, skip_rescale=rescale, norm_groups=2
    )
    block.zero_residual_()
    x, emb = torch.randn(2, c_in, 4, 4), torch.randn(2, 5)
    skip = block.resample(x) if block.resample is not None else x
    expected = block.shortcut(skip) * (1 / math.sqrt(2.0) if rescale else 1.0)
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), expected)
    if c_in == c_out and resample is None:
        torch.testing.assert_close(block(x, emb), x * (1 / math.sqrt(2.0) if rescale else 1.0))


def test_attributes_follow_the_embedding_mode():
    bias = ResBlock2d(4, 4, emb_dim=3, emb_mode="bias")
    assert isinstance(bias.emb_proj, nn.Linear)
    assert isinstance(bias.norm1, nn.GroupNorm) and isinstance(bias.norm2, nn.GroupNorm)
    adm = ResBlock2d(4, 4, emb_dim=3, emb_mode="scale_shift")
    assert adm.emb_proj is None and isinstance(adm.norm1, nn.GroupNorm)
    assert isinstance(adm.norm2, ScaleShiftGroupNorm)
    both = ResBlock2d(4, 4, emb_dim=3, emb_mode="scale_shift_both")
    assert isinstance(both.norm1, ScaleShiftGroupNorm) and isinstance(both.norm2, ScaleShiftGroupNorm)
    assert "emb_mode='scale_shift_both'" in repr(both)


EMB = r"expected emb of shape \(b, emb_dim\)"


@pytest.mark.parametrize(
    "x, emb, match",
    [
        (
            torch.randn(2, 5, 4, 4),
            torch.randn(2, 3),
            r"expected x of shape \(b, c, h, w\) with c=4, got \(2, 5, 4, 4\)",
        ),
        (torch.randn(2, 4, 4), torch.randn(2, 3), r"expected x of shape \(b, c, h, w\)"),
        (torch.randn(2, 4, 4, 4), torch.randn(2, 5), EMB + r" with b=2, emb_dim=3, got \(2, 5\)"),
        (torch.randn(2, 4, 4, 4), torch.randn(2, 3, 1), EMB),
        (torch.randn(2, 4, 4, 4), torch.randn(3, 3), EMB + r" with b=2, emb_dim=3, got \(3, 3\)"),
        (torch.randn(2, 4, 1, 4), torch.randn(2, 3), r"expected x of shape \(b, c, h, w\) with h, w >= 2"),
    ],
)
def test_bad_inputs_name_the_layout(x, emb, match):
    block = ResBlock2d(4, 6, emb_dim=3, resample="down")
    with pytest.raises(ValueError, match=match):
        block(x, emb)


def test_dtype_mismatch_is_a_type_error():
    with pytest.raises(TypeError, match=r"expected x of shape \(b, c, h, w\) .*torch.float32"):
        ResBlock2d(4, emb_dim=3)(torch.randn(2, 4, 3, 3).double(), torch.randn(2, 3))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(emb_mode="film"), ValueError, "emb_mode"),
        (dict(resample="sideways"), ValueError, "resample"),
        (dict(project_shortcut=False, out_channels=8), ValueError, "project_shortcut=False"),
        (dict(project_shortcut="yes"), TypeError, "project_shortcut"),
        (dict(dropout=1.5), ValueError, "dropout"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(norm_groups=0), ValueError, "norm_groups"),
        (dict(norm_groups=lambda c: 0), ValueError, "norm_groups"),
        (dict(emb_dim=0), ValueError, "emb_dim"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    kwargs = {"emb_dim": 3, **kwargs}
    with pytest.raises(error, match=match):
        ResBlock2d(4, **kwargs)


def test_meta_build_and_bf16_autocast():
    with torch.device("meta"):
        block = ResBlock2d(4, 6, emb_dim=5, emb_mode="scale_shift_both", resample="up", norm_groups=2)
        assert block(torch.empty(2, 4, 3, 3), torch.empty(2, 5)).shape == (2, 6, 6, 6)
    block = ResBlock2d(4, 6, emb_dim=5, emb_mode="bias", norm_groups=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(torch.randn(2, 4, 3, 3).bfloat16(), torch.randn(2, 5))
    assert out.shape == (2, 6, 3, 3) and torch.isfinite(out.float()).all()
