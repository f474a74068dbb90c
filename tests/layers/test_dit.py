"""DiT blocks: patch embedding round trips, adaLN-Zero identity at init, agreement with a plain
re-implementation, permutation equivariance, gradients, and boundary checks."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.layers.dit import (
    DiTBlock,
    DiTFinalLayer,
    PatchEmbed2d,
    dit_positions,
    unpatchify,
)
from vdblocks.layers.embeddings import sincos_2d


def perturb(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Give every (zero-initialised) parameter random values, so the tests see a trained-like block."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@given(b=st.integers(1, 2), c=st.integers(1, 3), p=st.integers(1, 3), gh=st.integers(1, 3), gw=st.integers(1, 4))
def test_patch_embed_matches_unfold_and_linear(b, c, p, gh, gw):
    embed = PatchEmbed2d(c, 8, p)
    x = torch.randn(b, c, gh * p, gw * p)
    tokens = embed(x)
    assert tokens.shape == (b, gh * gw, 8)
    assert embed.grid_size(gh * p, gw * p) == (gh, gw)
    patches = rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)
    reference = patches @ embed.proj.weight.reshape(8, -1).T + embed.proj.bias
    torch.testing.assert_close(tokens, reference, atol=1e-5, rtol=1e-5)


@given(b=st.integers(1, 2), c=st.integers(1, 3), p=st.integers(1, 3), gh=st.integers(1, 3), gw=st.integers(1, 4))
def test_unpatchify_inverts_the_patch_cut(b, c, p, gh, gw):
    x = torch.randn(b, c, gh * p, gw * p)
    tokens = rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)
    assert torch.equal(unpatchify(tokens, p, gh, gw), x)


def test_patch_embed_rejects_sizes_the_patch_does_not_divide():
    embed = PatchEmbed2d(3, 8, 4)
    with pytest.raises(ValueError, match=r"\(b, c, h, w\) with w divisible by the patch size 4"):
        embed(torch.randn(1, 3, 8, 10))
    with pytest.raises(ValueError, match=r"\(b, c, h, w\) with c=3"):
        embed(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\(b, n, c p p\)"):
        unpatchify(torch.randn(1, 4, 7), 2, 2, 2)


def test_positions_are_the_2d_sincos_table():
    pos = dit_positions(16, 3, 5)
    assert pos.shape == (1, 15, 16)
    assert torch.equal(pos[0], sincos_2d(16, 3, 5))


@given(n=st.integers(1, 6), seed=st.integers(0, 50))
def test_adaln_zero_block_and_final_layer_start_as_identity_and_zero(n, seed):
    g = torch.Generator().manual_seed(seed)
    block = DiTBlock(16, heads=2, cond_dim=8)
    final = DiTFinalLayer(16, 12, cond_dim=8)
    x, c = torch.randn(2, n, 16, generator=g), torch.randn(2, 8, generator=g)
    assert torch.equal(block(x, c), x)
    assert torch.equal(final(x, c), torch.zeros(2, n, 12))


def reference_block(block: DiTBlock, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """DiT's block written out with functional ops and the module's weights."""
    ada = F.linear(F.silu(c), block.ada[1].weight, block.ada[1].bias)
    s1, sc1, g1, s2, sc2, g2 = ada.chunk(6, dim=1)
    heads, dh = block.attn.heads, block.attn.dim_head
    h = F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + sc1[:, None]) + s1[:, None]
    q = F.linear(h, block.attn.to_q.weight, block.attn.to_q.bias)
    k, v = F.linear(h, block.attn.to_kv.weight, block.attn.to_kv.bias).chunk(2, dim=-1)
    q, k, v = (t.reshape(*t.shape[:2], heads, dh).transpose(1, 2) for t in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1) @ v
    attn = F.linear(
        attn.transpose(1, 2).reshape(*x.shape[:2], heads * dh), block.attn.to_out.weight, block.attn.to_out.bias
    )
    x = x + g1[:, None] * attn
    h = F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + sc2[:, None]) + s2[:, None]
    lin1, lin2 = block.mlp.net[0], block.mlp.net[3]
    mlp = F.linear(F.gelu(F.linear(h, lin1.weight, lin1.bias)), lin2.weight, lin2.bias)
    return x + g2[:, None] * mlp


@given(n=st.integers(1, 6), heads=st.sampled_from([1, 2, 4]), seed=st.integers(0, 50))
def test_block_matches_a_functional_reimplementation(n, heads, seed):
    block = DiTBlock(16, heads=heads, cond_dim=12)
    perturb(block, seed, std=0.2)
    g = torch.Generator().manual_seed(seed + 1)
    x, c = torch.randn(2, n, 16, generator=g), torch.randn(2, 12, generator=g)
    torch.testing.assert_close(block(x, c), reference_block(block, x, c), atol=1e-4, rtol=1e-4)


@given(n=st.integers(2, 6), seed=st.integers(0, 50))
def test_block_is_equivariant_to_token_permutations(n, seed):
    block = DiTBlock(8, heads=2)
    perturb(block, seed)
    g = torch.Generator().manual_seed(seed)
    x, c = torch.randn(2, n, 8, generator=g), torch.randn(2, 8, generator=g)
    perm = torch.randperm(n, generator=g)
    torch.testing.assert_close(block(x[:, perm], c), block(x, c)[:, perm], atol=1e-5, rtol=1e-5)


def test_condition_changes_the_output_per_sample_and_gradients_reach_every_parameter():
    block, final = DiTBlock(8, heads=2, cond_dim=4), DiTFinalLayer(8, 6, cond_dim=4)
    perturb(block, 1)
    perturb(final, 2)
    x = torch.randn(2, 5, 8)
    c = torch.randn(2, 4, requires_grad=True)
    out = final(block(x, c), c)
    other = final(block(x, c.detach() + 1.0), c.detach() + 1.0)
    assert not torch.allclose(out, other)
    # Each sample's output depends on its own condition only.
    c2 = c.detach().clone()
    c2[1] += 1.0
    torch.testing.assert_close(final(block(x, c2), c2)[0], out[0].detach())
    out.square().mean().backward()
    for name, p in [*block.named_parameters(), *final.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert c.grad is not None and torch.isfinite(c.grad).all()


def test_block_rejects_malformed_inputs():
    block = DiTBlock(8, heads=2, cond_dim=4)
    with pytest.raises(ValueError, match=r"\(b, n, dim\) with dim=8"):
        block(torch.randn(2, 3, 6), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(b, cond_dim\) with cond_dim=4"):
        block(torch.randn(2, 3, 8), torch.randn(2, 5))
    with pytest.raises(ValueError, match="share the batch size"):
        block(torch.randn(2, 3, 8), torch.randn(3, 4))
    with pytest.raises(ValueError, match="divisible by heads"):
        DiTBlock(10, heads=3)
