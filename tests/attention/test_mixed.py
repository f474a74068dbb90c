import math

import pytest
import torch
from einops import rearrange
from hypothesis import given
from hypothesis import strategies as st

from vdblocks import MixedSelfAttention


def independent_forward(m: MixedSelfAttention, tokens: torch.Tensor) -> torch.Tensor:
    """Eq. 11-12 written out with plain tensor ops, per head, in float64."""
    w_qkv, b_qkv = m.to_qkv.weight.double(), m.to_qkv.bias.double()
    x = tokens.double()
    inner = m.heads * m.dim_head
    q, k, v = (x @ w_qkv[i * inner : (i + 1) * inner].T + b_qkv[i * inner : (i + 1) * inner] for i in range(3))
    heads = []
    for h in range(m.heads):
        sl = slice(h * m.dim_head, (h + 1) * m.dim_head)
        a = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(m.dim_head)
        heads.append(torch.softmax(a, dim=-1) @ v[..., sl])
    return torch.cat(heads, dim=-1) @ m.to_out.weight.double().T + m.to_out.bias.double()


@given(
    b=st.integers(1, 3),
    heads=st.integers(1, 3),
    dim_head=st.sampled_from([4, 8, 16]),
    dim=st.sampled_from([8, 12, 32]),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    algorithm=st.sampled_from(["auto", "softmax", "favor"]),
)
def test_shapes_feature_maps_and_tokens(b, heads, dim_head, dim, h, w, algorithm):
    m = MixedSelfAttention(dim, heads=heads, dim_head=dim_head, algorithm=algorithm)
    x = torch.randn(b, dim, h, w)
    assert m(x).shape == (b, dim, h, w)
    tokens = torch.randn(b, h * w, dim)
    assert m(tokens).shape == (b, h * w, dim)


@given(dim_head=st.integers(1, 128), threshold=st.floats(1.0, 8.0), seq_len=st.integers(1, 4096))
def test_select_algorithm_follows_eq14(dim_head, threshold, seq_len):
    m = MixedSelfAttention(8, heads=1, dim_head=dim_head, threshold=threshold)
    expected = "favor" if seq_len > threshold * dim_head else "softmax"
    assert m.select_algorithm(seq_len) == expected


def test_forced_algorithms_ignore_the_gate():
    assert MixedSelfAttention(8, heads=1, dim_head=8, algorithm="softmax").select_algorithm(10_000) == "softmax"
    assert MixedSelfAttention(8, heads=1, dim_head=8, algorithm="favor").select_algorithm(2) == "favor"


@pytest.mark.parametrize("seq_len", [8, 16, 17, 64])
def test_auto_equals_forced_algorithm(seq_len):
    torch.manual_seed(0)
    auto = MixedSelfAttention(16, heads=2, dim_head=8, threshold=2.0)
    chosen = auto.select_algorithm(seq_len)
    forced = MixedSelfAttention(16, heads=2, dim_head=8, algorithm=chosen)
    forced.load_state_dict(auto.state_dict())
    x = torch.randn(2, seq_len, 16)
    assert torch.equal(auto(x), forced(x))
    # the gate really switches: 2 * 8 = 16 tokens is the boundary
    assert chosen == ("favor" if seq_len > 16 else "softmax")


def test_softmax_path_matches_independent_reference():
    torch.manual_seed(1)
    m = MixedSelfAttention(24, heads=3, dim_head=8, algorithm="softmax").double()
    x = torch.randn(2, 24, 5, 7, dtype=torch.float64)
    tokens = rearrange(x, "b c h w -> b (h w) c")
    expected = rearrange(independent_forward(m, tokens), "b (h w) c -> b c h w", h=5)
    torch.testing.assert_close(m(x), expected, atol=1e-10, rtol=1e-10)


def test_favor_approaches_exact_as_features_grow():
    torch.manual_seed(2)
    dim, dim_head, n = 32, 16, 256
    exact = MixedSelfAttention(dim, heads=2, dim_head=dim_head, algorithm="softmax")
    x = torch.randn(2, n, dim) * 0.5
    target = exact(x)

    def error(nb_features: int) -> float:
        errs = []
        for seed in range(4):
            torch.manual_seed(100 + seed)
            approx = MixedSelfAttention(dim, heads=2, dim_head=dim_head, algorithm="favor", nb_features=nb_features)
            state = {k: v for k, v in exact.state_dict().items() if not k.startswith("favor.")}
            approx.load_state_dict(state, strict=False)
            errs.append((approx(x) - target).pow(2).mean().item())
        return sum(errs) / len(errs)

    e_small, e_mid, e_large = error(8), error(128), error(2048)
    assert e_large < e_mid < e_small
    assert e_large < 0.1 * e_small


def test_default_nb_features_is_performers():
    m = MixedSelfAttention(64, heads=2, dim_head=32)
    assert m.nb_features == int(32 * math.log(32))
    assert m.favor.projection_matrix.shape == (m.nb_features, 32)


def test_redraw_changes_features_and_is_saved():
    m = MixedSelfAttention(16, heads=1, dim_head=16)
    before = m.favor.projection_matrix.clone()
    m.redraw_projection_matrix()
    assert not torch.equal(before, m.favor.projection_matrix)
    assert "favor.projection_matrix" in m.state_dict()


@pytest.mark.parametrize("algorithm", ["softmax", "favor"])
def test_every_parameter_gets_gradient(algorithm):
    m = MixedSelfAttention(16, heads=2, dim_head=8, algorithm=algorithm)
    x = torch.randn(2, 16, 4, 4, requires_grad=True)
    m(x).pow(2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


def test_exact_path_uses_requested_backend():
    m = MixedSelfAttention(16, heads=2, dim_head=8, algorithm="softmax", backend="xformers")
    with pytest.raises(ValueError, match="xformers"):
        m(torch.randn(1, 4, 16))


@pytest.mark.parametrize(
    "x, err, pattern",
    [
        (torch.randn(2, 8, 4, 4), ValueError, r"\(b, dim, h, w\) with dim=16"),
        (torch.randn(2, 5, 8), ValueError, r"\(b, n, dim\) with dim=16"),
        (torch.randn(16), ValueError, r"\(b, n, dim\)"),
        (torch.ones(2, 16, 4, 4, dtype=torch.int64), TypeError, "floating-point"),
    ],
)
def test_rejects_malformed_input(x, err, pattern):
    m = MixedSelfAttention(16, heads=2, dim_head=8)
    with pytest.raises(err, match=pattern):
        m(x)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="algorithm"):
        MixedSelfAttention(16, algorithm="linear")
    with pytest.raises(ValueError, match="threshold"):
        MixedSelfAttention(16, threshold=0)
    with pytest.raises(TypeError, match="dim"):
        MixedSelfAttention(16.0)


def test_builds_and_runs_on_meta_device():
    with torch.device("meta"):
        m = MixedSelfAttention(32, heads=2, dim_head=16)
    assert m.favor.projection_matrix.device.type == "meta"
    out = m(torch.empty(2, 64, 32, device="meta"))
    assert out.shape == (2, 64, 32) and out.device.type == "meta"
