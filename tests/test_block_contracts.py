"""Contracts every public block keeps (DESIGN conventions 7 and 9).

1. **Float64 is kept.** Every public block and function with a differentiable forward passes
   ``torch.autograd.gradcheck`` in float64: no step downcasts (a float32 softmax cast back, say,
   breaks it at the 1e-7 level).
2. **One error style at every public boundary.** Wrong rank, channel count, dtype (integer,
   complex, fp16/fp64 into an fp32 module), device (meta into a CPU module), empty axes and
   NaN/inf/out-of-range conditioning scalars raise ``ValueError`` (shape, value, device) or
   ``TypeError`` (dtype) whose message says "expected" and names the einops layout, never a
   ``RuntimeError`` from inside torch.

Both tests are parametrised by public name, and :func:`test_every_public_name_is_covered` checks
the names against ``vdblocks.__all__``: a new public block without an entry here fails the suite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vdblocks
from vdblocks import (
    Attention,
    AxisProjector,
    BottleneckResidualPathway,
    ChannelShuffle,
    ChannelSplit,
    ContentFrameHead,
    DiTBlock,
    DiTFinalLayer,
    DividedSpaceTimeBlock,
    FeedForward,
    FPSEmbedding,
    JointPlaneAttention,
    MixedSelfAttention,
    MotionLatentHead,
    PatchEmbed2d,
    PointwiseConv2d,
    Resample2d,
    ResBlock2d,
    ScaleShiftGroupNorm,
    SinusoidalEmbedding,
    SpatialTemporalMixedEmbedding,
    TimestepEmbedding,
    TransformerBlock,
    TriplaneProjector,
    VideoPatchEmbed,
    VideoPatchUnembed,
    VideoTransformer,
    add_channel_shuffled,
    channel_shuffle,
    grid_to_video,
    group_norm,
    modulate,
    pointwise_conv2d,
    select_backend,
    sincos_1d,
    sinusoidal_embedding,
    triplane_expand,
    video_to_grid,
)
from vdblocks.attention import attention

# vdblocks.attention.attention is the kernel function; it is public there, not in vdblocks.__all__.
PUBLIC = frozenset(vdblocks.__all__) | {"attention"}

# Public names without a differentiable forward, so without a gradcheck entry.
NOT_DIFFERENTIABLE = {
    "AttentionBackendError": "an exception class",
    "FlopCounter": "FLOP accounting: a context manager that counts, computes nothing",
    "FlopReport": "the FLOP counter's result record",
    "count_flops": "FLOP accounting: runs a callable under the counter",
    "list_backends": "returns the registered backend names",
    "attention_backend": "a context manager choosing the attention backend",
    "select_backend": "returns the backend attention() would run; computes nothing (attention is checked)",
    "grid_for": "integer arithmetic: a (rows, cols) grid for a frame count",
    "sincos_2d": "a fixed table from integer sizes, no tensor input (sincos_1d's gradient is checked)",
    "DiffusionSpec": "a frozen record of the schedule and prediction type (tests/diffusion/test_spec.py)",
}

# Public names without a tensor boundary to feed bad tensors to.
NO_TENSOR_INPUT = {
    "AttentionBackendError": NOT_DIFFERENTIABLE["AttentionBackendError"],
    "FlopCounter": NOT_DIFFERENTIABLE["FlopCounter"],
    "FlopReport": NOT_DIFFERENTIABLE["FlopReport"],
    "count_flops": "runs a user callable; its errors are that callable's",
    "list_backends": NOT_DIFFERENTIABLE["list_backends"],
    "attention_backend": "takes a backend spec, no tensor (unknown names raise ValueError)",
    "grid_for": "takes an int (check_positive_int names it)",
    "sincos_2d": "takes ints (check_positive_int names them)",
    "group_norm": "a factory returning torch's nn.GroupNorm, whose forward (and errors) are torch's",
    "DiffusionSpec": "takes strings and numbers, validated at construction (tests/diffusion/test_spec.py)",
}


def f64(*shape: int, low: float | None = None) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64)
    if low is not None:
        x = x.abs() + low
    return x.requires_grad_()


# --------------------------------------------------------------------------------------------
# 1. gradcheck in float64


@dataclass
class Grad:
    """``fn(*inputs)`` with every input a float64 leaf; ``fast``: gradcheck's fast mode."""

    fn: Callable[..., object]
    inputs: tuple[torch.Tensor, ...]
    fast: bool = False
    atol: float = 1e-5  # gradcheck's default


# FAVOR+ runs performer-pytorch's own softmax_kernel, which detaches its stabiliser m (the max of
# w^T x). The features are ratio * (exp(w^T x - |x|^2/2 - m) + eps) with eps = 1e-4, so the output
# still depends on m, by O(eps / feature), and performer's backward leaves that term out by design.
# With queries and keys of norm ~0.6 every feature is within a factor of a few of the largest, so
# that term stays near eps: over 30 seeds it was at most 1.5e-4 against Jacobian entries up to
# 0.46. The forward keeps float64 (asserted before the gradcheck); the gradient is checked to 1e-3.
FAVOR_GRAD_ATOL = 1e-3
FAVOR_INPUT_SCALE = 0.3


def f64_small(*shape: int) -> torch.Tensor:
    return (torch.randn(*shape, dtype=torch.float64) * FAVOR_INPUT_SCALE).requires_grad_()


def _mod(module: torch.nn.Module) -> torch.nn.Module:
    return module.double().eval()


def _planes_fn(block: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, ...]]:
    """A block on a list of planes as a function of the planes, returning a tuple (for gradcheck)."""
    return lambda *planes: tuple(block(list(planes)))


def _grad_cases() -> dict[str, list[Callable[[], Grad]]]:
    def brp(**kw):
        return lambda: Grad(
            _mod(BottleneckResidualPathway(4, 8, 6, bottleneck_ratio=2, **kw)), (f64(2, 4, 3, 3), f64(2, 6)), True
        )

    def mixed(algorithm, four_d=False):
        def make():
            m = _mod(MixedSelfAttention(8, heads=2, dim_head=4, algorithm=algorithm))
            favor = m.select_algorithm(6 if four_d else 5) == "favor"
            make_x = f64_small if favor else f64
            x = make_x(2, 8, 2, 3) if four_d else make_x(2, 5, 8)
            return Grad(m, (x,), atol=FAVOR_GRAD_ATOL if favor else 1e-5)

        return make

    def fps():
        te = TimestepEmbedding(8)
        return Grad(_mod(FPSEmbedding(8, te)), (torch.tensor([24.0, 60.5], dtype=torch.float64, requires_grad=True),))

    def favor_attention():
        proj = torch.randn(6, 4, dtype=torch.float64)
        return Grad(
            lambda q, k, v: attention(q, k, v, backend="favor", projection_matrix=proj),
            (f64_small(1, 2, 3, 4), f64_small(1, 2, 5, 4), f64(1, 2, 5, 4)),
            atol=FAVOR_GRAD_ATOL,
        )

    return {
        "Attention": [
            lambda: Grad(_mod(Attention(8, heads=2, dim_head=4)), (f64(2, 3, 8),)),
            lambda: Grad(_mod(Attention(8, heads=2, dim_head=4, context_dim=6)), (f64(2, 3, 8), f64(2, 4, 6))),
        ],
        "AxisProjector": [lambda: Grad(_mod(AxisProjector(8, 3, depth=1, heads=2)), (f64(2, 3, 8),), True)],
        "BottleneckResidualPathway": [
            brp(),
            brp(shortcut="group_shuffle", shortcut_groups=2, channel_split=True, split_shuffle_groups=2),
        ],
        "ChannelShuffle": [lambda: Grad(ChannelShuffle(2), (f64(2, 4, 3),))],
        "ChannelSplit": [
            lambda: Grad(_mod(ChannelSplit(4, 6, emb_dim=5, bottleneck_ratio=2)), (f64(2, 4, 3, 3), f64(2, 5))),
            lambda: Grad(_mod(ChannelSplit(6, 4, bottleneck_ratio=2)), (f64(2, 6, 3, 3),)),
        ],
        "ContentFrameHead": [
            lambda: Grad(_mod(ContentFrameHead(4, 2)), (f64(2, 2, 3, 4, 4), f64(2, 4, 3, 2, 2))),
            lambda: Grad(_mod(ContentFrameHead(4, 2, patch_size=2)), (f64(1, 2, 3, 4, 4), f64(1, 4, 3, 2, 2))),
        ],
        "DiTBlock": [lambda: Grad(_mod(DiTBlock(8, heads=2, zero_init=False)), (f64(2, 3, 8), f64(2, 8)), True)],
        "DiTFinalLayer": [lambda: Grad(_mod(DiTFinalLayer(8, 4, zero_init=False)), (f64(2, 3, 8), f64(2, 8)))],
        "DividedSpaceTimeBlock": [
            lambda: Grad(_mod(DividedSpaceTimeBlock(8, heads=2, dim_head=4)), (f64(1, 2, 2, 2, 8),), True)
        ],
        "FPSEmbedding": [fps],
        "FeedForward": [lambda: Grad(_mod(FeedForward(8, mult=2)), (f64(2, 3, 8),))],
        "JointPlaneAttention": [
            lambda: Grad(
                _planes_fn(_mod(JointPlaneAttention(8, 2, max_groups=4, positions="triplane"))),
                (f64(2, 8, 2, 3), f64(2, 8, 1, 3), f64(2, 8, 1, 2)),
            ),
            lambda: Grad(
                _planes_fn(_mod(JointPlaneAttention(8, 2, attention="mixed", threshold=1e6, max_groups=4))),
                (f64(1, 8, 2, 2), f64(1, 8, 3, 1)),
            ),
        ],
        "MixedSelfAttention": [mixed("softmax"), mixed("favor"), mixed("auto", four_d=True)],
        "MotionLatentHead": [
            lambda: Grad(_mod(MotionLatentHead(4, 3)), (f64(2, 4, 3, 2, 2),)),
            lambda: Grad(_mod(MotionLatentHead(4, 3, shared=False)), (f64(1, 4, 2, 3, 2),)),
        ],
        "PatchEmbed2d": [lambda: Grad(_mod(PatchEmbed2d(3, 8, 2)), (f64(2, 3, 4, 4),))],
        "PointwiseConv2d": [lambda: Grad(_mod(PointwiseConv2d(4, 6, groups=2)), (f64(2, 4, 3, 3),))],
        "ResBlock2d": [
            lambda: Grad(
                _mod(ResBlock2d(4, 6, emb_dim=5, emb_mode="bias", norm_groups=2)), (f64(2, 4, 3, 3), f64(2, 5)), True
            ),
            lambda: Grad(
                _mod(ResBlock2d(4, 4, emb_dim=5, emb_mode="scale_shift", resample="up", norm_groups=2)),
                (f64(2, 4, 2, 3), f64(2, 5)),
                True,
            ),
            lambda: Grad(
                _mod(
                    ResBlock2d(
                        4, 6, emb_dim=5, emb_mode="scale_shift_both", resample="down", skip_rescale=True, norm_groups=2
                    )
                ),
                (f64(2, 4, 4, 5), f64(2, 5)),
                True,
            ),
        ],
        "Resample2d": [
            lambda: Grad(Resample2d("up").double(), (f64(2, 3, 3, 4),)),
            lambda: Grad(Resample2d("down").double(), (f64(2, 3, 5, 4),)),
            lambda: Grad(Resample2d("up", fir=False).double(), (f64(2, 3, 3, 4),)),
            lambda: Grad(Resample2d("down", fir=False).double(), (f64(2, 3, 4, 4),)),
        ],
        "ScaleShiftGroupNorm": [
            lambda: Grad(_mod(ScaleShiftGroupNorm(4, 5, max_groups=2)), (f64(2, 4, 3, 3), f64(2, 5)))
        ],
        "SinusoidalEmbedding": [lambda: Grad(SinusoidalEmbedding(6), (f64(3, low=1.0),))],
        "SpatialTemporalMixedEmbedding": [
            lambda: Grad(lambda x: SpatialTemporalMixedEmbedding(4)(x, (2, 3)), (f64(2, 4, 4, 6),))
        ],
        "TimestepEmbedding": [lambda: Grad(_mod(TimestepEmbedding(8)), (f64(2, low=1.0),))],
        "TransformerBlock": [
            lambda: Grad(
                _mod(TransformerBlock(8, heads=2, dim_head=4, context_dim=6)), (f64(2, 3, 8), f64(2, 4, 6)), True
            )
        ],
        "TriplaneProjector": [
            lambda: Grad(_mod(TriplaneProjector(8, 2, depth=1, heads=2)), (f64(1, 8, 2, 2, 3),), True)
        ],
        "VideoPatchEmbed": [lambda: Grad(_mod(VideoPatchEmbed(3, 8, (1, 2, 2))), (f64(1, 3, 2, 4, 4),))],
        "VideoPatchUnembed": [lambda: Grad(_mod(VideoPatchUnembed(8, 3, (1, 2, 2))), (f64(1, 2, 2, 2, 8),))],
        "VideoTransformer": [
            lambda: Grad(_mod(VideoTransformer(8, depth=1, heads=2, dim_head=4)), (f64(1, 2, 2, 2, 8),), True)
        ],
        "add_channel_shuffled": [
            lambda: Grad(lambda x, y: add_channel_shuffled(x, y, 2, 0.5), (f64(2, 4, 3), f64(2, 4, 3)))
        ],
        "channel_shuffle": [lambda: Grad(lambda x: channel_shuffle(x, 2), (f64(2, 6, 2, 2),))],
        "grid_to_video": [lambda: Grad(lambda x: grid_to_video(x, (2, 3), 5), (f64(2, 3, 4, 6),))],
        "group_norm": [lambda: Grad(_mod(group_norm(4, 2)), (f64(2, 4, 3),))],
        "modulate": [lambda: Grad(modulate, (f64(2, 3, 4, 5), f64(2, 3), f64(2, 3)))],
        "pointwise_conv2d": [
            lambda: Grad(
                lambda x, w, b: pointwise_conv2d(x, w, b, groups=2), (f64(2, 4, 3, 3), f64(6, 2, 1, 1), f64(6))
            )
        ],
        "sincos_1d": [lambda: Grad(lambda p: sincos_1d(6, p), (f64(4),))],
        "sinusoidal_embedding": [lambda: Grad(lambda v: sinusoidal_embedding(v, 7), (f64(3, low=0.5),))],
        "triplane_expand": [
            lambda: Grad(triplane_expand, (f64(2, 3, 4, 5), f64(2, 3, 2, 5), f64(2, 3, 2, 4))),
            lambda: Grad(
                lambda a, b, c: triplane_expand(a, b, c, combine="sum"),
                (f64(2, 3, 4, 5), f64(2, 3, 2, 5), f64(2, 3, 2, 4)),
            ),
        ],
        "video_to_grid": [lambda: Grad(lambda v: video_to_grid(v, (2, 3)), (f64(2, 3, 5, 2, 2),))],
        "attention": [
            lambda: Grad(attention, (f64(1, 2, 3, 4), f64(1, 2, 5, 4), f64(1, 2, 5, 4))),
            lambda: Grad(
                lambda q, k, v: attention(q, k, v, scale=0.3, backend="math"),
                (f64(1, 2, 3, 4), f64(1, 2, 5, 4), f64(1, 2, 5, 4)),
            ),
            favor_attention,
        ],
    }


GRAD_CASES = _grad_cases()


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_gradcheck_in_float64(name):
    for i, make in enumerate(GRAD_CASES[name]):
        torch.manual_seed(i)
        case = make()
        out = case.fn(*case.inputs)
        for o in out if isinstance(out, tuple) else (out,):
            assert o.dtype == torch.float64, f"{name}[{i}] returned {o.dtype}"
        assert torch.autograd.gradcheck(case.fn, case.inputs, fast_mode=case.fast, atol=case.atol), f"{name}[{i}]"


def test_content_frame_weights_sum_to_one_in_float64():
    head = ContentFrameHead(4, 3).double()
    x, u = torch.randn(2, 3, 5, 4, 4, dtype=torch.float64), torch.randn(2, 4, 5, 2, 2, dtype=torch.float64) * 30
    content, weights = head(x, u)
    assert weights.dtype == content.dtype == torch.float64
    # float64 rounding of a 5-term sum: a few ulps of 1
    assert (weights.sum(dim=2) - 1).abs().max() < 1e-14


# --------------------------------------------------------------------------------------------
# 2. one error style at the boundary

DATA = ("rank", "size", "int", "complex", "fp16", "fp64", "meta", "empty")  # float input of an fp32 module
FREE = ("rank", "size", "int", "complex", "empty")  # float input with no module dtype to match
ANY = ("rank", "size", "empty")  # any dtype: a pure rearrangement
SCALAR = ("rank", "complex", "bool", "nan", "inf", "negative", "empty")  # conditioning scalars


@dataclass
class Arg:
    """One tensor argument: its valid value, layout, the corruptions that must be refused, ranks
    that must be refused, and for ``"size"`` the axes with the sizes they must not take."""

    name: str
    value: torch.Tensor
    layout: str
    kinds: tuple[str, ...]
    bad_ranks: tuple[int, ...] = ()
    bad_sizes: dict[int, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class Case:
    call: Callable[..., object]
    args: list[Arg]
    layouts: tuple[str, ...] = ()  # layouts a message may name besides the arguments'

    def named_layouts(self) -> set[str]:
        return {a.layout for a in self.args} | set(self.layouts)


def _ranks(layout: str) -> tuple[int, ...]:
    n = len([s for s in layout.strip("()").split(",") if s.strip()])
    return (n - 1, n + 1)


def _arg(
    name: str,
    value: torch.Tensor,
    layout: str,
    kinds: tuple[str, ...],
    sizes: dict[int, tuple[int, ...]] | None = None,
    bad_ranks: tuple[int, ...] | None = None,
) -> Arg:
    kinds = tuple(k for k in kinds if k != "size" or sizes)
    return Arg(name, value, layout, kinds, _ranks(layout) if bad_ranks is None else bad_ranks, sizes or {})


def _error_cases() -> dict[str, Callable[[], Case | list[Case]]]:
    def r(*shape):
        return torch.randn(*shape)

    def brp():
        m = BottleneckResidualPathway(4, 8, 6, bottleneck_ratio=2)
        return Case(
            m,
            [
                _arg("x", r(2, 4, 3, 3), "(b, c, h, w)", DATA, {1: (3, 5)}),
                _arg("emb", r(2, 6), "(b, e)", DATA, {1: (5, 7)}),
            ],
        )

    def channel_split():
        m = ChannelSplit(4, 6, emb_dim=5, bottleneck_ratio=2)
        return Case(
            m,
            [
                _arg("x", r(2, 4, 3, 3), "(b, c, h, w)", DATA, {1: (3, 5)}),
                _arg("emb", r(2, 5), "(b, e)", DATA, {1: (4, 6)}),
            ],
        )

    def content():
        m = ContentFrameHead(4, 2)
        return Case(
            m,
            [
                _arg("x", r(2, 2, 3, 4, 4), "(b, c, t, H, W)", DATA, {1: (1, 3), 2: (2, 4), 3: (5, 6)}),
                _arg("u", r(2, 4, 3, 2, 2), "(b, dim, t, h, w)", DATA, {1: (3, 5), 2: (2, 4), 4: (3,)}),
            ],
        )

    def dit(cls, *a, **kw):
        def make():
            m = cls(*a, **kw)
            return Case(
                m,
                [
                    _arg("x", r(2, 3, 8), "(b, n, dim)", DATA, {2: (6, 9)}),
                    _arg("c", r(2, 8), "(b, cond_dim)", DATA, {1: (7, 9)}),
                ],
            )

        return make

    def mixed():
        m = MixedSelfAttention(8, heads=2, dim_head=4, algorithm="auto", threshold=0.5)  # 5 > 2: FAVOR+
        return Case(
            m, [_arg("x", r(2, 5, 8), "(b, n, dim)", DATA, {2: (6, 9)}, bad_ranks=(2, 5))], layouts=("(b, dim, h, w)",)
        )

    def mixed_maps():
        m = MixedSelfAttention(8, heads=2, dim_head=4, algorithm="softmax")
        return Case(
            m,
            [_arg("x", r(2, 8, 2, 3), "(b, dim, h, w)", DATA, {1: (6, 9)}, bad_ranks=(2, 5))],
            layouts=("(b, n, dim)",),
        )

    def joint_planes():
        m = JointPlaneAttention(8, 2, max_groups=4, positions="triplane")
        plane = "(b, c, h_i, w_i)"
        other = {0: (1, 3), 1: (6, 9)}  # every plane shares b and c with planes[0]
        return Case(
            lambda *planes: m(list(planes)),
            [
                _arg("planes[0]", r(2, 8, 2, 3), plane, DATA, {1: (6, 9)}),
                _arg("planes[1]", r(2, 8, 1, 3), plane, DATA, other),
                _arg("planes[2]", r(2, 8, 1, 2), plane, DATA, other),
            ],
        )

    def fps():
        m = FPSEmbedding(8, TimestepEmbedding(8))
        return Case(m, [_arg("fps", torch.tensor([24.0, 60.0, 8.0]), "(b,)", SCALAR + ("meta", "above"))])

    def timestep():
        m = TimestepEmbedding(8)
        return Case(m, [_arg("t", torch.tensor([3, 999, 0]), "(b,)", SCALAR + ("meta",))])

    def sinusoid_module():
        return Case(SinusoidalEmbedding(6), [_arg("values", torch.tensor([3.0, 0.5]), "(b,)", SCALAR)])

    def sinusoid_fn():
        return Case(lambda v: sinusoidal_embedding(v, 7), [_arg("values", torch.tensor([3.0, 0.5]), "(b,)", SCALAR)])

    def qkv(fn):
        def make():
            q, k = r(1, 2, 3, 4), r(1, 2, 5, 4)
            return Case(
                fn,
                [
                    _arg("q", q, "(b, k, n, d)", DATA, {3: (3, 5)}),
                    _arg("k", k, "(b, k, m, d)", DATA, {0: (2,), 1: (1, 3), 3: (3, 5)}),
                    _arg("v", r(1, 2, 5, 4), "(b, k, m, d)", DATA, {0: (2,), 1: (1, 3), 2: (4, 6)}),
                ],
            )

        return make

    return {
        "Attention": lambda: Case(
            Attention(8, heads=2, dim_head=4, context_dim=6),
            [
                _arg("x", r(2, 3, 8), "(b, n, dim)", DATA, {2: (6, 9)}),
                _arg("context", r(2, 4, 6), "(b, m, context_dim)", DATA, {2: (5, 8)}),
            ],
        ),
        "AxisProjector": lambda: Case(
            AxisProjector(8, 3, depth=1, heads=2), [_arg("seq", r(2, 3, 8), "(n, l, dim)", DATA, {2: (6, 9)})]
        ),
        "BottleneckResidualPathway": brp,
        "ChannelShuffle": lambda: Case(
            ChannelShuffle(2), [_arg("x", r(2, 4, 3), "(b, c, ...)", ANY, {1: (3, 5)}, bad_ranks=(1,))]
        ),
        "ChannelSplit": channel_split,
        "ContentFrameHead": content,
        "DiTBlock": dit(DiTBlock, 8, heads=2),
        "DiTFinalLayer": dit(DiTFinalLayer, 8, 4),
        "DividedSpaceTimeBlock": lambda: Case(
            DividedSpaceTimeBlock(8, heads=2, dim_head=4),
            [_arg("x", r(1, 2, 2, 3, 8), "(b, t, h, w, dim)", DATA, {4: (6, 9)})],
        ),
        "FPSEmbedding": fps,
        "FeedForward": lambda: Case(
            FeedForward(8, mult=2), [_arg("x", r(2, 3, 8), "(b, ..., dim)", DATA, {2: (6, 9)}, bad_ranks=(1,))]
        ),
        "JointPlaneAttention": joint_planes,
        "MixedSelfAttention": lambda: [mixed(), mixed_maps()],
        "MotionLatentHead": lambda: Case(
            MotionLatentHead(4, 3), [_arg("u", r(2, 4, 3, 2, 2), "(b, dim, t, h, w)", DATA, {1: (3, 5)})]
        ),
        "PatchEmbed2d": lambda: Case(
            PatchEmbed2d(3, 8, 2), [_arg("x", r(2, 3, 4, 6), "(b, c, h, w)", DATA, {1: (2, 4), 2: (3, 5), 3: (5, 7)})]
        ),
        "PointwiseConv2d": lambda: Case(
            PointwiseConv2d(4, 6, groups=2), [_arg("x", r(2, 4, 3, 3), "(b, c, h, w)", DATA, {1: (2, 6)})]
        ),
        "ResBlock2d": lambda: [
            Case(
                ResBlock2d(4, 6, emb_dim=5, emb_mode=mode, resample="down", norm_groups=2),
                [
                    _arg("x", r(2, 4, 4, 4), "(b, c, h, w)", DATA, {1: (3, 5), 2: (1,), 3: (1,)}),
                    _arg("emb", r(2, 5), "(b, emb_dim)", DATA, {0: (1, 3), 1: (4, 6)}),
                ],
            )
            for mode in ("bias", "scale_shift", "scale_shift_both")
        ],
        "Resample2d": lambda: Case(
            Resample2d("down"),
            [
                _arg(
                    "x",
                    r(2, 3, 4, 4),
                    "(b, c, h, w)",
                    ("rank", "size", "int", "complex", "meta", "empty"),
                    {2: (1,), 3: (1,)},
                )
            ],
        ),
        "ScaleShiftGroupNorm": lambda: Case(
            ScaleShiftGroupNorm(4, 5, max_groups=2),
            [
                _arg("x", r(2, 4, 3, 3), "(b, c, *spatial)", DATA, {1: (3, 5)}, bad_ranks=(1, 2)),
                _arg("emb", r(2, 5), "(b, e)", DATA, {1: (4, 6)}),
            ],
        ),
        "SinusoidalEmbedding": sinusoid_module,
        "SpatialTemporalMixedEmbedding": lambda: Case(
            lambda x: SpatialTemporalMixedEmbedding(4)(x, (2, 3)),
            [_arg("x", r(2, 4, 4, 6), "(b, c, rows*h, cols*w)", FREE, {1: (3, 5), 2: (3, 5), 3: (4, 7)})],
        ),
        "TimestepEmbedding": timestep,
        "TransformerBlock": lambda: Case(
            TransformerBlock(8, heads=2, dim_head=4, context_dim=6),
            [
                _arg("x", r(2, 3, 8), "(b, n, dim)", DATA, {2: (6, 9)}),
                _arg("context", r(2, 4, 6), "(b, m, context_dim)", DATA, {2: (5, 8)}),
            ],
        ),
        "TriplaneProjector": lambda: Case(
            TriplaneProjector(8, 2, depth=1, heads=2),
            [_arg("u", r(1, 8, 2, 2, 3), "(b, dim, t, h, w)", DATA, {1: (6, 9)})],
        ),
        "VideoPatchEmbed": lambda: Case(
            VideoPatchEmbed(3, 8, (1, 2, 2)),
            [_arg("x", r(1, 3, 2, 4, 4), "(b, c, t, h, w)", DATA, {1: (2, 4), 3: (3, 5), 4: (5,)})],
        ),
        "VideoPatchUnembed": lambda: Case(
            VideoPatchUnembed(8, 3, (1, 2, 2)), [_arg("x", r(1, 2, 2, 2, 8), "(b, t, h, w, dim)", DATA, {4: (6, 9)})]
        ),
        "VideoTransformer": lambda: Case(
            VideoTransformer(8, depth=1, heads=2, dim_head=4),
            [_arg("x", r(1, 2, 2, 2, 8), "(b, t, h, w, dim)", DATA, {4: (6, 9)})],
        ),
        "add_channel_shuffled": lambda: Case(
            lambda x, y: add_channel_shuffled(x, y, 2, 0.5),
            [
                _arg("x", r(2, 4, 3), "(b, c, ...)", DATA, {1: (3, 5), 2: (2, 4)}, bad_ranks=(1,)),
                _arg("y", r(2, 4, 3), "(b, c, ...)", DATA, {1: (3, 5), 2: (2, 4)}, bad_ranks=(1, 4)),
            ],
        ),
        "channel_shuffle": lambda: Case(
            lambda x: channel_shuffle(x, 2), [_arg("x", r(2, 4, 3), "(b, c, ...)", ANY, {1: (3, 5)}, bad_ranks=(1,))]
        ),
        "grid_to_video": lambda: Case(
            lambda x: grid_to_video(x, (2, 3), 5),
            [_arg("image", r(2, 3, 4, 6), "(b, c, rows*h, cols*w)", ANY, {2: (3, 5), 3: (4, 7)})],
        ),
        "modulate": lambda: Case(
            modulate,
            [
                _arg("x", r(2, 3, 4, 5), "(b, c, *spatial)", DATA, {0: (3,), 1: (2, 4)}, bad_ranks=(1,)),
                _arg("shift", r(2, 3), "(b, c, *spatial)", DATA, {0: (3,), 1: (2, 4)}, bad_ranks=(1, 5)),
                _arg("scale", r(2, 3), "(b, c, *spatial)", DATA, {0: (3,), 1: (2, 4)}, bad_ranks=(1, 5)),
            ],
        ),
        "pointwise_conv2d": lambda: Case(
            lambda x: pointwise_conv2d(x, torch.randn(6, 2, 1, 1), torch.randn(6), groups=2),
            [_arg("x", r(2, 4, 3, 3), "(b, c, h, w)", DATA, {1: (2, 6)})],
        ),
        "select_backend": qkv(select_backend),
        "sincos_1d": lambda: Case(
            lambda p: sincos_1d(6, p),
            [_arg("positions", torch.arange(5), "(n,)", ("rank", "complex", "bool", "empty"))],
        ),
        "sinusoidal_embedding": sinusoid_fn,
        "triplane_expand": lambda: Case(
            triplane_expand,
            [
                _arg("z_s", r(2, 3, 4, 5), "(b, c, h, w)", DATA),
                _arg("z_h", r(2, 3, 2, 5), "(b, c, t, w)", DATA, {0: (1, 3), 1: (2, 4), 3: (4, 6)}),
                _arg("z_w", r(2, 3, 2, 4), "(b, c, t, h)", DATA, {0: (1, 3), 1: (2, 4), 2: (1, 3), 3: (3, 5)}),
            ],
        ),
        "video_to_grid": lambda: Case(
            lambda v: video_to_grid(v, (2, 3)), [_arg("video", r(2, 3, 5, 2, 2), "(b, c, t, h, w)", ANY, {2: (7, 9)})]
        ),
        "attention": qkv(attention),
    }


ERROR_CASES = _error_cases()

_EXPECTED = {"int": TypeError, "complex": TypeError, "bool": TypeError, "fp16": TypeError, "fp64": TypeError}


def _with_rank(x: torch.Tensor, rank: int) -> torch.Tensor:
    if rank == 0:
        return x.flatten()[0]
    if rank < x.ndim:
        return x.reshape(*x.shape[: rank - 1], -1)
    return x.reshape(*x.shape, *([1] * (rank - x.ndim)))


def _corrupt(arg: Arg, kind: str, data: st.DataObject) -> torch.Tensor:
    x = arg.value
    if kind == "rank":
        return _with_rank(x, data.draw(st.sampled_from(arg.bad_ranks), label="rank"))
    if kind == "size":
        axis = data.draw(st.sampled_from(sorted(arg.bad_sizes)), label="axis")
        shape = list(x.shape)
        shape[axis] = data.draw(st.sampled_from(arg.bad_sizes[axis]), label="size")
        return torch.ones(shape, dtype=x.dtype) if not x.is_floating_point() else torch.randn(shape, dtype=x.dtype)
    if kind == "empty":
        shape = list(x.shape)
        shape[data.draw(st.integers(0, x.ndim - 1), label="empty axis")] = 0
        return torch.empty(shape, dtype=x.dtype)
    if kind == "int":
        return x.round().long()
    if kind == "complex":
        return x.to(torch.complex64)
    if kind == "bool":
        return x > 1
    if kind == "fp16":
        return x.half()
    if kind == "fp64":
        return x.double()
    if kind == "meta":
        return x.to("meta")
    bad = x.double().clone()
    i = data.draw(st.integers(0, x.numel() - 1), label="index")
    bad[i] = {
        "nan": math.nan,
        "inf": data.draw(st.sampled_from([math.inf, -math.inf])),
        "negative": -0.5,
        "above": 121.0,
    }[kind]
    return bad


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
@given(data=st.data())
def test_bad_inputs_raise_value_or_type_errors_naming_the_layout(name, data):
    torch.manual_seed(0)
    case = ERROR_CASES[name]()
    if isinstance(case, list):
        case = data.draw(st.sampled_from(case), label="variant")
    with torch.no_grad():
        case.call(*(a.value for a in case.args))  # the valid call runs
        arg = data.draw(st.sampled_from(case.args), label="argument")
        kind = data.draw(st.sampled_from(arg.kinds), label="corruption")
        values = [_corrupt(a, kind, data) if a is arg else a.value for a in case.args]
        with pytest.raises((ValueError, TypeError)) as info:
            case.call(*values)
    message = str(info.value)
    assert info.type is _EXPECTED.get(kind, ValueError), (kind, message)
    assert "expected" in message, message
    assert any(layout in message for layout in case.named_layouts()), (case.named_layouts(), message)


def test_every_public_name_is_covered():
    grad_names = set(GRAD_CASES) | set(NOT_DIFFERENTIABLE)
    assert not set(GRAD_CASES) & set(NOT_DIFFERENTIABLE)
    assert grad_names == PUBLIC, f"missing: {sorted(PUBLIC - grad_names)}, unknown: {sorted(grad_names - PUBLIC)}"
    error_names = set(ERROR_CASES) | set(NO_TENSOR_INPUT)
    assert not set(ERROR_CASES) & set(NO_TENSOR_INPUT)
    assert error_names == PUBLIC, f"missing: {sorted(PUBLIC - error_names)}, unknown: {sorted(error_names - PUBLIC)}"


# --------------------------------------------------------------------------------------------
# 3. dtype and device agreement: the messages, and autocast left alone


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: MixedSelfAttention(8, heads=2, dim_head=4)(torch.randn(2, 5, 8).half()),
            r"expected x of shape \(b, n, dim\) with dtype torch.float32 on cpu \(the module's parameters\), got torch.float16 on cpu",
        ),
        (
            lambda: MixedSelfAttention(8, heads=2, dim_head=4)(torch.randn(2, 5, 8).double()),
            r"expected x of shape \(b, n, dim\) with dtype torch.float32 on cpu .* got torch.float64 on cpu",
        ),
        (
            lambda: ContentFrameHead(4, 2)(torch.randn(1, 2, 3, 4, 4), torch.randn(1, 4, 3, 2, 2).half()),
            r"expected u of shape \(b, dim, t, h, w\) with dtype torch.float32 on cpu .* got torch.float16",
        ),
        (
            lambda: BottleneckResidualPathway(4, 8, 6)(torch.randn(2, 4, 3, 3), torch.randn(2, 6).double()),
            r"expected emb of shape \(b, e\) with dtype torch.float32 on cpu .* got torch.float64",
        ),
    ],
)
def test_dtype_mismatch_is_a_type_error_naming_layout_and_module_dtype(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_meta_input_into_a_cpu_module_is_a_value_error():
    with pytest.raises(
        ValueError, match=r"expected x of shape \(b, c, h, w\) with dtype torch.float32 on cpu .*on meta"
    ):
        BottleneckResidualPathway(4, 8, 6)(torch.randn(2, 4, 3, 3, device="meta"), torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"expected t of shape \(b,\) on cpu"):
        TimestepEmbedding(8)(torch.tensor([1, 2], device="meta"))


def test_meta_modules_take_meta_inputs():
    with torch.device("meta"):
        brp = BottleneckResidualPathway(4, 8, 6)
        dit = DiTBlock(8, heads=2)
        te = TimestepEmbedding(8)
        out = brp(torch.empty(2, 4, 3, 3), torch.empty(2, 6))
        tokens = dit(torch.empty(2, 3, 8), torch.empty(2, 8))
        emb = te(torch.empty(2))
    assert out.shape == (2, 8, 3, 3) and tokens.shape == (2, 3, 8) and emb.shape == (2, 8)


def test_bf16_autocast_inputs_are_accepted():
    """Under torch.autocast, activations come in bf16 into fp32 modules: that is not an error."""
    torch.manual_seed(0)
    brp, mixed, head = (
        BottleneckResidualPathway(4, 8, 6),
        MixedSelfAttention(8, heads=2, dim_head=4),
        ContentFrameHead(4, 2),
    )
    dit = DiTBlock(8, heads=2, zero_init=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert brp(torch.randn(2, 4, 3, 3).bfloat16(), torch.randn(2, 6)).shape == (2, 8, 3, 3)
        assert mixed(torch.randn(2, 5, 8).bfloat16()).shape == (2, 5, 8)
        content, weights = head(torch.randn(1, 2, 3, 4, 4), torch.randn(1, 4, 3, 2, 2).bfloat16())
        assert content.shape == (1, 2, 4, 4)
        assert dit(torch.randn(2, 3, 8).bfloat16(), torch.randn(2, 8)).shape == (2, 3, 8)
    with pytest.raises(TypeError, match="run under torch.autocast"):
        mixed(torch.randn(2, 5, 8).bfloat16())  # the same input outside autocast


def test_value_checks_are_skipped_under_fake_tensors_and_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        te = TimestepEmbedding(8)
        assert te(torch.tensor([1.0, 2.0])).shape == (2, 8)
    te = TimestepEmbedding(8)
    compiled = torch.compile(te, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(torch.tensor([3.0, 7.0])), te(torch.tensor([3.0, 7.0])))
