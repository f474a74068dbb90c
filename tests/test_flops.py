import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import vdblocks.flops as flops
from vdblocks.attention import MixedSelfAttention, attention
from vdblocks.flops import (
    FlopCounter,
    conv2d_macs,
    count_flops,
    favor_attention_macs,
    linear_macs,
    softmax_attention_macs,
)

CPU_SDPA = "aten._scaled_dot_product_flash_attention_for_cpu"

sizes = dict(
    b=st.integers(1, 2), heads=st.integers(1, 3), n=st.integers(1, 12), m=st.integers(1, 12), d=st.integers(1, 9)
)


def qkv(b, heads, n, m, d, requires_grad=False):
    make = lambda length: torch.randn(b, heads, length, d, requires_grad=requires_grad)  # noqa: E731
    return make(n), make(m), make(m)


@given(**sizes)
def test_sdpa_on_cpu_counts_both_matmuls(b, heads, n, m, d):
    q, k, v = qkv(b, heads, n, m, d)
    report = count_flops(attention, q, k, v, backend="sdpa")
    # The fused CPU kernel itself must be what was counted, not a decomposition into bmm.
    assert set(report.by_op) == {CPU_SDPA}
    assert report.macs == softmax_attention_macs(b, heads, n, m, d)
    assert report.flops == 2 * report.macs


@given(**sizes)
def test_sdpa_count_agrees_with_pytorchs_own_bmm_count_of_the_math_reference(b, heads, n, m, d):
    q, k, v = qkv(b, heads, n, m, d)
    fused = count_flops(attention, q, k, v, backend="sdpa")
    reference = count_flops(attention, q, k, v, backend="math")
    assert set(reference.by_op) == {"aten.bmm"}
    assert fused.flops == reference.flops == 2 * softmax_attention_macs(b, heads, n, m, d)


def test_different_value_width():
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4)
    v = torch.randn(2, 3, 7, 6)
    report = count_flops(F.scaled_dot_product_attention, q, k, v)
    assert report.macs == 2 * 3 * 5 * 7 * (4 + 6) == softmax_attention_macs(2, 3, 5, 7, 4, d_v=6)


@given(**sizes)
def test_sdpa_backward_is_the_math_backward_plus_one_recomputed_score_matmul(b, heads, n, m, d):
    fused = count_flops(attention, *qkv(b, heads, n, m, d, True), backend="sdpa", backward=True)
    reference = count_flops(attention, *qkv(b, heads, n, m, d, True), backend="math", backward=True)
    assert fused.backward is not None and reference.backward is not None
    assert set(fused.backward.by_op) == {CPU_SDPA + "_backward"}
    # Autograd through the two bmm of the reference: 2 gradient matmuls each.
    assert reference.backward.macs == 2 * softmax_attention_macs(b, heads, n, m, d)
    # The flash kernel recomputes q k^T (b k n m d MACs) before those four.
    assert fused.backward.macs - reference.backward.macs == b * heads * n * m * d
    # The forward stays apart from the backward.
    assert fused.macs == softmax_attention_macs(b, heads, n, m, d)


def test_plain_flop_counter_mode_counts_cpu_attention_after_import():
    q, k, v = qkv(1, 2, 6, 6, 4)
    with FlopCounterMode(display=False) as mode:
        F.scaled_dot_product_attention(q, k, v)
    assert mode.get_total_flops() == 2 * softmax_attention_macs(1, 2, 6, 6, 4)


def test_registration_is_idempotent_and_covers_the_cpu_ops():
    before = dict(flop_counter.flop_registry)
    # A second registration (as a re-import would run) must neither raise nor replace anything.
    assert flops._register_missing_formulas() == flops.registered_attention_ops()
    assert dict(flop_counter.flop_registry) == before
    for name in (CPU_SDPA, CPU_SDPA + "_backward"):
        assert name in flops.registered_attention_ops()
        assert getattr(torch.ops.aten, name.removeprefix("aten.")) in flop_counter.flop_registry


# torch.einsum turns a contraction over an axis of length 1 into an uncounted element-wise product,
# so the key length, head dim and feature count start at 2 here (see favor_attention_macs).
@given(
    b=st.integers(1, 2),
    heads=st.integers(1, 3),
    n=st.integers(1, 12),
    m=st.integers(2, 12),
    d=st.integers(2, 9),
    features=st.integers(2, 10),
)
def test_favor_counted_by_its_real_operations(b, heads, n, m, d, features):
    q, k, v = qkv(b, heads, n, m, d)
    proj = torch.randn(features, d)
    report = count_flops(attention, q, k, v, backend="favor", projection_matrix=proj)
    assert set(report.by_op) == {"aten.bmm"}
    assert report.macs == favor_attention_macs(b, heads, n, m, d, features)


def test_favor_is_linear_and_softmax_quadratic_in_length():
    assert favor_attention_macs(1, 1, 64, 64, 8, 16) == 2 * favor_attention_macs(1, 1, 32, 32, 8, 16)
    assert softmax_attention_macs(1, 1, 64, 64, 8) == 4 * softmax_attention_macs(1, 1, 32, 32, 8)


@given(
    b=st.integers(1, 2),
    heads=st.integers(1, 3),
    dim_head=st.sampled_from([4, 8]),
    dim=st.sampled_from([4, 8, 12]),
    h=st.integers(1, 5),
    w=st.integers(2, 5),
    algorithm=st.sampled_from(["auto", "softmax", "favor"]),
    image=st.booleans(),
)
def test_mixed_self_attention_total_and_breakdown(b, heads, dim_head, dim, h, w, algorithm, image):
    block = MixedSelfAttention(dim, heads=heads, dim_head=dim_head, algorithm=algorithm)
    x = torch.randn(b, dim, h, w) if image else torch.randn(b, h * w, dim)
    length, inner = h * w, heads * dim_head
    report = count_flops(block, x)
    if block.select_algorithm(length) == "softmax":
        kernel = softmax_attention_macs(b, heads, length, length, dim_head)
    else:
        kernel = favor_attention_macs(b, heads, length, length, dim_head, block.nb_features)
    # Four projections (q, k, v, out), biases not counted.
    assert report.macs == 4 * b * length * dim * inner + kernel
    name = "MixedSelfAttention"
    assert set(report.by_module) == {name, f"{name}.to_qkv", f"{name}.to_out"}
    assert report.by_module[f"{name}.to_qkv"].macs == linear_macs(b * length, dim, 3 * inner)
    assert report.by_module[f"{name}.to_out"].macs == linear_macs(b * length, inner, dim)
    # The kernel belongs to the block itself, in none of its projections.
    assert report.by_module[name].macs == report.macs
    children = sum(report.by_module[f"{name}.{c}"].macs for c in ("to_qkv", "to_out"))
    assert report.by_module[name].macs - children == kernel


@given(
    b=st.integers(1, 2),
    groups=st.sampled_from([1, 2, 4]),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    h=st.integers(5, 9),
    w=st.integers(5, 9),
)
def test_conv2d(b, groups, per_group_in, per_group_out, kernel, stride, padding, dilation, bias, h, w):
    c_in, c_out = groups * per_group_in, groups * per_group_out
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    x = torch.randn(b, c_in, h, w)
    out = conv(x)
    report = count_flops(conv, x)
    # Independent: each output element is one dot product over (c_in / groups) * k * k inputs.
    assert report.macs == out.numel() * per_group_in * kernel * kernel
    assert report.macs == conv2d_macs(
        b, c_in, c_out, h, w, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    assert set(report.by_module) == {"Conv2d"}


def test_bias_is_not_counted():
    x = torch.randn(2, 3, 8, 8)
    with_bias, without = nn.Conv2d(3, 4, 3, bias=True), nn.Conv2d(3, 4, 3, bias=False)
    assert count_flops(with_bias, x).flops == count_flops(without, x).flops > 0
    tokens = torch.randn(2, 5, 3)
    linear = count_flops(nn.Linear(3, 4), tokens)
    assert linear.flops == count_flops(nn.Linear(3, 4, bias=False), tokens).flops


@given(
    lead=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    fan_in=st.integers(1, 9),
    fan_out=st.integers(1, 9),
    bias=st.booleans(),
)
def test_linear(lead, fan_in, fan_out, bias):
    layer = nn.Linear(fan_in, fan_out, bias=bias)
    report = count_flops(layer, torch.randn(*lead, fan_in))
    assert report.macs == linear_macs(math.prod(lead), fan_in, fan_out)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1))
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = self.body(self.stem(x))
        return self.head(x.mean(dim=(-1, -2)))


def test_breakdown_attributes_each_submodule():
    net, x = Net(), torch.randn(2, 3, 8, 8)
    report = count_flops(net, x)
    expect = {
        "Net.stem": conv2d_macs(2, 3, 8, 8, 8, 3, padding=1),
        "Net.body.0": conv2d_macs(2, 8, 8, 8, 8, 1),
        "Net.body.2": conv2d_macs(2, 8, 4, 8, 8, 3, stride=2, padding=1),
        "Net.head": linear_macs(2, 4, 5),
    }
    for name, macs in expect.items():
        assert report.by_module[name].macs == macs
    assert "Net.body.1" not in report.by_module  # ReLU does no matmul work
    assert report.by_module["Net.body"].macs == expect["Net.body.0"] + expect["Net.body.2"]
    assert report.by_module["Net"].macs == report.macs == sum(expect.values())
    assert sum(report.by_op.values()) == report.flops
    as_dict = report.as_dict()
    assert as_dict["macs"] == report.macs and as_dict["by_module"]["Net.head"]["macs"] == expect["Net.head"]


def test_backward_of_module_is_attributed_and_forward_unchanged():
    net, x = Net(), torch.randn(2, 3, 8, 8)
    forward_only = count_flops(net, x)
    both = count_flops(net, x, backward=True)
    assert both.macs == forward_only.macs and both.by_module.keys() == forward_only.by_module.keys()
    assert both.backward is not None
    # Input needs no grad: the stem computes its weight gradient only; the head both gradients.
    assert both.backward.by_module["Net.stem"].macs == forward_only.by_module["Net.stem"].macs
    assert both.backward.by_module["Net.head"].macs == 2 * forward_only.by_module["Net.head"].macs


def test_backward_leaves_out_modules_without_gradient_work():
    frozen, trained = nn.Linear(3, 4), nn.Linear(4, 2)
    frozen.requires_grad_(False)
    report = count_flops(nn.Sequential(frozen, trained), torch.randn(5, 3), backward=True)
    assert report.backward is not None
    assert "Sequential.0" in report.by_module and "Sequential.0" not in report.backward.by_module
    # The trained layer's weight gradient only: nothing upstream wants its input gradient.
    assert report.backward.by_module["Sequential.1"].macs == linear_macs(5, 4, 2) == report.backward.macs


def test_context_manager_matches_function_form():
    net, x = Net(), torch.randn(1, 3, 8, 8)
    with FlopCounter() as counter:
        net(x)
    assert counter.report() == count_flops(net, x)


def test_table_names_modules_and_totals():
    report = count_flops(Net(), torch.randn(1, 3, 8, 8))
    text = str(report)
    assert text == report.table()
    for word in ("MACs", "FLOPs", "Total", "Net.stem", "Net.body.2", "aten.convolution"):
        assert word in text
    assert "Net.body.2" not in report.table(depth=2)
    assert "aten." not in report.table(ops=False)


def test_backward_without_grad_is_rejected():
    with pytest.raises(ValueError, match="requires_grad"):
        count_flops(attention, *qkv(1, 1, 4, 4, 2), backward=True)
    with pytest.raises(TypeError, match="callable"):
        count_flops(3)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: softmax_attention_macs(0, 1, 4, 4, 8), ValueError),
        (lambda: favor_attention_macs(1, 1, 4, 4, 8, -2), ValueError),
        (lambda: linear_macs(2, True, 3), TypeError),
        (lambda: conv2d_macs(1, 3, 4, 8, 8, 3, groups=2), ValueError),
        (lambda: conv2d_macs(1, 4, 4, 2, 2, 5), ValueError),
        (lambda: conv2d_macs(1, 4, 4, 8, 8, (3, 3, 3)), ValueError),
    ],
)
def test_helpers_reject_bad_sizes(call, error):
    with pytest.raises(error):
        call()
