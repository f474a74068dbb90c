import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.attention import (
    ENV_VAR,
    AttentionBackend,
    AttentionBackendError,
    attention,
    attention_backend,
    list_backends,
    select_backend,
)


def reference_attention(q, k, v, scale):
    """Independent reference: an explicit loop over batch and heads in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            logits = q[b, h] @ k[b, h].T * scale
            weights = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
            weights = weights / weights.sum(dim=-1, keepdim=True)
            out[b, h] = weights @ v[b, h]
    return out


shapes = st.tuples(
    st.integers(1, 3), st.integers(1, 4), st.integers(1, 40), st.integers(1, 40), st.sampled_from([4, 8, 16, 33])
)


@given(shape=shapes, backend=st.sampled_from(["math", "sdpa"]))
def test_exact_backends_match_reference(shape, backend):
    b, k, n, m, d = shape
    g = torch.Generator().manual_seed(n * 100 + m)
    q = torch.randn(b, k, n, d, generator=g)
    kk = torch.randn(b, k, m, d, generator=g)
    v = torch.randn(b, k, m, d, generator=g)
    out = attention(q, kk, v, backend=backend)
    assert out.shape == (b, k, n, d)
    torch.testing.assert_close(out.double(), reference_attention(q, kk, v, 1 / math.sqrt(d)), atol=1e-5, rtol=1e-4)


def test_custom_scale_respected():
    q, k, v = (torch.randn(1, 2, 9, 8) for _ in range(3))
    for backend in ("math", "sdpa"):
        out = attention(q, k, v, scale=0.3, backend=backend)
        torch.testing.assert_close(out.double(), reference_attention(q, k, v, 0.3), atol=1e-5, rtol=1e-4)


def test_sdpa_matches_math_in_bfloat16():
    q, k, v = (torch.randn(2, 2, 64, 32).bfloat16() for _ in range(3))
    a = attention(q, k, v, backend="math")
    b = attention(q, k, v, backend="sdpa")
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)


def test_forced_unavailable_backend_lists_reasons():
    q = k = v = torch.randn(1, 1, 4, 8)
    with pytest.raises(AttentionBackendError) as err:
        attention(q, k, v, backend="xformers")
    msg = str(err.value)
    assert "xformers" in msg and "device=cpu" in msg and "forced" in msg


def test_favor_without_projection_lists_reason():
    q = k = v = torch.randn(1, 1, 4, 8)
    with pytest.raises(AttentionBackendError, match="projection_matrix"):
        attention(q, k, v, backend="favor")


def test_priority_list_skips_unfit_backend():
    q = k = v = torch.randn(1, 1, 4, 8)
    assert select_backend(q, k, v, backend=["xformers", "sdpa", "math"]).name == "sdpa"
    assert select_backend(q, k, v, backend="xformers,math").name == "math"


def test_priority_list_with_nothing_fitting_lists_every_reason():
    q = k = v = torch.randn(1, 1, 4, 8, dtype=torch.float64)

    class Fp32Only(AttentionBackend):
        def __call__(self, q, k, v, *, scale, projection_matrix=None):
            return attention(q, k, v, scale=scale, backend="math")

    fp32 = Fp32Only(name="fp32only", dtypes=(torch.float32,))
    with pytest.raises(AttentionBackendError) as err:
        select_backend(q, k, v, backend=["xformers", fp32])
    assert "xformers:" in str(err.value) and "fp32only: dtype=float64" in str(err.value)
    q32 = q.float()
    assert select_backend(q32, q32, q32, backend=[fp32]) is fp32
    torch.testing.assert_close(attention(q32, q32, q32, backend=fp32), attention(q32, q32, q32, backend="math"))


def test_precedence_argument_over_context_over_env(monkeypatch):
    q = k = v = torch.randn(1, 1, 4, 8)
    monkeypatch.setenv(ENV_VAR, "math")
    assert select_backend(q, k, v).name == "math"
    with attention_backend("sdpa"):
        assert select_backend(q, k, v).name == "sdpa"
        with attention_backend("math"):
            assert select_backend(q, k, v).name == "math"
        assert select_backend(q, k, v, backend="math").name == "math"
    monkeypatch.delenv(ENV_VAR)
    assert select_backend(q, k, v).name == "sdpa"  # default priority


def test_default_never_picks_third_party_backend():
    q = k = v = torch.randn(1, 1, 4, 8)
    assert select_backend(q, k, v).name in ("sdpa", "math")


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown attention backend"):
        with attention_backend("nope"):
            pass


def test_registry_lists_all_backends():
    assert {"math", "sdpa", "xformers", "favor"} <= set(list_backends())
    from vdblocks.attention import get_backend

    assert [get_backend(n).exact for n in ("math", "sdpa", "xformers")] == [True] * 3
    assert not get_backend("favor").exact


@pytest.mark.parametrize(
    "q_shape, k_shape, err",
    [
        ((2, 4, 8), (2, 4, 8), ValueError),
        ((1, 2, 4, 8), (1, 3, 4, 8), ValueError),
        ((1, 2, 4, 8), (1, 2, 4, 7), ValueError),
    ],
)
def test_rejects_malformed(q_shape, k_shape, err):
    q = torch.randn(*q_shape)
    k = torch.randn(*k_shape)
    with pytest.raises(err, match=r"\(b, k, [nm], d\)"):
        attention(q, k, k)


def test_rejects_integer_and_mixed_dtypes():
    q = torch.ones(1, 1, 4, 8, dtype=torch.int64)
    with pytest.raises(TypeError, match="floating-point"):
        attention(q, q, q)
    with pytest.raises(TypeError, match=r"k of shape \(b, k, m, d\) with dtype torch.float32"):
        attention(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8).double(), torch.randn(1, 1, 4, 8))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "xformers"])
def test_cuda_backends_match_math(backend):
    pytest.importorskip("xformers") if backend == "xformers" else None
    q, k, v = (torch.randn(2, 4, 128, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    torch.testing.assert_close(
        attention(q, k, v, backend=backend), attention(q, k, v, backend="math"), atol=2e-3, rtol=2e-3
    )
