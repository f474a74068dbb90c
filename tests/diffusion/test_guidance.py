"""Classifier-free guidance: one batched call, the documented combination, tensor and dict conditions."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.diffusion.guidance import cfg_model_fn, guided_eps
from vdblocks.diffusion.samplers import sample_ddim
from vdblocks.diffusion.spec import DiffusionSpec


class ToyConditional:
    """A per-sample conditional eps model that records the batch of every call."""

    def __init__(self):
        self.batches = []

    @staticmethod
    def _summary(c, b):
        return c.reshape(b, -1).to(torch.float32).sin().sum(dim=1)  # b

    def __call__(self, x, t, cond=None, **kwargs):
        b = x.shape[0]
        self.batches.append(b)
        parts = [cond] if cond is not None else [kwargs[k] for k in sorted(kwargs)]
        c = sum((i + 1) * self._summary(p, b) for i, p in enumerate(parts))
        shift = (c + t.to(torch.float32) / 100).view(b, *[1] * (x.ndim - 1))
        return torch.tanh(x) * (1 + 0.5 * shift) + shift


def make_conditions(kind, b, g):
    if kind == "labels":
        return torch.randint(0, 10, (b,), generator=g), torch.full((b,), 10)
    if kind == "embeddings":
        return torch.randn(b, 3, 4, generator=g), torch.zeros(b, 3, 4)
    cond = {"labels": torch.randint(0, 10, (b,), generator=g), "context": torch.randn(b, 2, 3, generator=g)}
    null = {"labels": torch.full((b,), 10), "context": torch.zeros(b, 2, 3)}
    return cond, null


def call(model, x, t, cond):
    return model(x, t, **cond) if isinstance(cond, dict) else model(x, t, cond)


@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=5),
    kind=st.sampled_from(["labels", "embeddings", "dict"]),
    scale=st.floats(-2.0, 10.0),
    seed=st.integers(0, 2**16),
)
def test_guided_eps_is_one_batched_call_with_the_documented_formula(shape, kind, scale, seed):
    g = torch.Generator().manual_seed(seed)
    b = shape[0]
    x = torch.randn(shape, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    cond, null = make_conditions(kind, b, g)
    model = ToyConditional()
    out = guided_eps(model, x, t, cond, null, scale)
    assert model.batches == [2 * b]
    assert out.shape == x.shape
    # independent reference: two separate unbatched calls
    eps_c, eps_n = call(model, x, t, cond), call(model, x, t, null)
    torch.testing.assert_close(out, eps_n + scale * (eps_c - eps_n))
    torch.testing.assert_close(guided_eps(model, x, t, cond, null, 1.0), eps_c)
    torch.testing.assert_close(guided_eps(model, x, t, cond, null, 0.0), eps_n)


def test_batch_one_null_condition_is_expanded():
    model = ToyConditional()
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([5, 500, 900])
    cond, null = torch.randn(3, 7, 8), torch.randn(1, 7, 8)
    a = guided_eps(model, x, t, cond, null, 4.0)
    b = guided_eps(model, x, t, cond, null.expand(3, 7, 8), 4.0)
    torch.testing.assert_close(a, b)
    a = guided_eps(model, x, 17, {"context": cond}, {"context": null}, 2.0)
    b = guided_eps(model, x, torch.full((3,), 17), {"context": cond}, {"context": null.expand(3, 7, 8)}, 2.0)
    torch.testing.assert_close(a, b)


def test_cfg_model_fn_drives_a_sampler_with_one_call_per_step():
    spec = DiffusionSpec("linear", 100)
    model = ToyConditional()
    labels, null = torch.tensor([1, 2]), torch.tensor([10, 10])
    fn = cfg_model_fn(model, labels, null, 3.0)
    out = sample_ddim(fn, (2, 3, 4, 4), spec, 6, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 4, 4) and torch.isfinite(out).all()
    assert model.batches == [4] * 6
    # at scale 1 guidance is the conditional model itself
    plain = sample_ddim(
        lambda x, t: model(x, t, labels), (2, 3, 4, 4), spec, 6, generator=torch.Generator().manual_seed(0)
    )
    guided = sample_ddim(
        cfg_model_fn(model, labels, null, 1.0), (2, 3, 4, 4), spec, 6, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(guided, plain)


def test_invalid_guidance_inputs():
    model = ToyConditional()
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"cond of shape \(b, \.\.\.\) with b=2"):
        guided_eps(model, x, t, torch.randn(3, 5), torch.randn(3, 5), 2.0)
    with pytest.raises(ValueError, match=r"null_cond of shape \(2, 5\)"):
        guided_eps(model, x, t, torch.randn(2, 5), torch.randn(2, 6), 2.0)
    with pytest.raises(ValueError, match="keys of cond"):
        guided_eps(model, x, t, {"a": torch.randn(2)}, {"b": torch.randn(2)}, 2.0)
    with pytest.raises(TypeError, match=r"cond\['a'\] to be a torch.Tensor"):
        guided_eps(model, x, t, {"a": [1, 2]}, {"a": torch.randn(2)}, 2.0)
    with pytest.raises(ValueError, match=r"t of shape \(b,\) with b=2"):
        guided_eps(model, x, torch.tensor([1, 2, 3]), torch.randn(2), torch.randn(2), 2.0)
    with pytest.raises(TypeError, match="finite"):
        guided_eps(model, x, t, torch.randn(2), torch.randn(2), float("nan"))
    with pytest.raises(TypeError, match="finite"):
        cfg_model_fn(model, torch.randn(2), torch.randn(2), "7.5")
    with pytest.raises(ValueError, match=r"\(2b, \.\.\.\) with 2b=4"):
        guided_eps(lambda x_, t_, c: x_[:2], x, t, torch.randn(2), torch.randn(2), 2.0)
