import functools
import sys
import threading

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel  # noqa: E402

from reference_models.etc.diffusers_adapter import ETCDiffusersVideoModel, from_diffusers  # noqa: E402
from vdblocks.layers.grid import grid_for, grid_to_video, video_to_grid  # noqa: E402

CTX = 32


def tiny_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    kwargs = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=CTX,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        sample_size=32,
        in_channels=4,
        out_channels=4,
        norm_num_groups=8,
    )
    kwargs.update(overrides)
    return UNet2DConditionModel(**kwargs)


def inputs(b=2, t=4, h=8, w=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, t, h, w, generator=g)
    timesteps = torch.randint(0, 1000, (b,), generator=g)
    fps = torch.tensor([0.0, 8.0, 30.0, 120.0])[:b]
    context = torch.randn(b, 3, CTX, generator=g)
    return x, timesteps, fps, context


def perturb_fps_mlp(model: ETCDiffusersVideoModel, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        last = model.fps_embed.mlp[-1]
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.5)
        last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.5)


def plain_unet_on_grid(unet, x, timesteps, context, model):
    """The reference: the unet alone on the frame grid plus ME, cut back into frames."""
    grid = grid_for(x.shape[2])
    image = model.mixed_embed(video_to_grid(x, grid), grid)
    out = unet(image, timesteps, encoder_hidden_states=context).sample
    return grid_to_video(out, grid, x.shape[2])


@functools.lru_cache(maxsize=1)
def shared_model() -> ETCDiffusersVideoModel:
    """Read-only model for the property test (built once: no test below mutates it)."""
    return from_diffusers(tiny_unet())


@given(
    b=st.integers(1, 2),
    t=st.integers(1, 6),
    h=st.sampled_from([2, 4, 6]),
    w=st.sampled_from([2, 4, 8]),
)
def test_output_shape_for_any_frame_count_and_size(b, t, h, w):
    model = shared_model()
    x, timesteps, fps, context = inputs(b, t, h, w)
    with torch.no_grad():
        out = model(x, timesteps, fps, context)
    assert out.shape == (b, 4, t, h, w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("t,h,w", [(1, 8, 8), (4, 8, 16), (6, 16, 8)])
def test_forward_backward_and_identity_at_init(t, h, w):
    unet = tiny_unet()
    model = from_diffusers(unet)
    x, timesteps, fps, context = inputs(2, t, h, w)
    out = model(x, timesteps, fps, context)
    assert out.shape == (2, 4, t, h, w)
    # Zero-initialised FPS branch: the pretrained unet's behaviour on the grid + ME input.
    torch.testing.assert_close(out, plain_unet_on_grid(unet, x, timesteps, context, model))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_every_parameter_gets_a_gradient_after_one_step():
    model = from_diffusers(tiny_unet())
    x, timesteps, fps, context = inputs(2, 4, 8, 8)
    fps_params = dict(model.fps_embed.named_parameters())
    model(x, timesteps, fps, context).square().mean().backward()
    # Only the zeroed last layer learns at first: the layers before it are behind a zero weight.
    assert model.fps_embed.mlp[-1].weight.grad.abs().sum() > 0
    assert model.fps_embed.mlp[0].weight.grad.abs().sum() == 0
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    model.zero_grad()
    model(x, timesteps, fps, context).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for name, p in fps_params.items():
        assert p.grad.abs().sum() > 0, name


def test_fps_changes_the_output_once_the_fps_mlp_is_nonzero():
    model = from_diffusers(tiny_unet())
    x, timesteps, _, context = inputs(2, 4, 8, 8)
    low, high = torch.tensor([1.0, 1.0]), torch.tensor([60.0, 60.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, timesteps, low, context), model(x, timesteps, high, context))
        perturb_fps_mlp(model)
        assert not torch.allclose(model(x, timesteps, low, context), model(x, timesteps, high, context))


def test_fps_shares_the_unets_own_time_proj():
    unet = tiny_unet()
    model = from_diffusers(unet)
    assert model.fps_embed.sinusoid.time_proj is unet.time_proj
    values = torch.tensor([0.0, 1.0, 24.0, 120.0])
    torch.testing.assert_close(model.fps_embed.sinusoid(values), unet.time_proj(values))
    # The only new weights are the FPS MLP's; the sinusoid is parameter-free and shared.
    new = {k for k in model.state_dict() if not k.startswith("unet.")}
    assert new == {f"fps_embed.mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}


def test_fps_embedding_is_added_to_the_time_embedding():
    unet = tiny_unet()
    model = from_diffusers(unet)
    perturb_fps_mlp(model)
    x, timesteps, fps, context = inputs(2, 4, 8, 8)
    seen = []
    handle = (
        unet.down_blocks[0]
        .resnets[0]
        .time_emb_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    )
    try:
        with torch.no_grad():
            model(x, timesteps, fps, context)
            # Independent: timestep MLP on the sinusoid, plus the FPS branch, through the block's SiLU.
            emb = unet.time_embedding(unet.time_proj(timesteps).float()) + model.fps_embed(fps)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], F.silu(emb))


def test_hook_is_removed_after_forward_even_on_error():
    unet = tiny_unet()
    model = from_diffusers(unet)
    perturb_fps_mlp(model)
    x, timesteps, fps, context = inputs(2, 4, 8, 8)
    image = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        before = unet(image, timesteps, encoder_hidden_states=context).sample
        model(x, timesteps, fps, context)
        assert len(unet.time_embedding._forward_hooks) == 0
        torch.testing.assert_close(unet(image, timesteps, encoder_hidden_states=context).sample, before)

        def fail(module, args):
            raise RuntimeError("boom")

        handle = unet.conv_in.register_forward_pre_hook(fail)
        with pytest.raises(RuntimeError, match="boom"):
            model(x, timesteps, fps, context)
        handle.remove()
        assert len(unet.time_embedding._forward_hooks) == 0
        torch.testing.assert_close(unet(image, timesteps, encoder_hidden_states=context).sample, before)


@pytest.mark.parametrize("t,h,w", [(4, 8, 8), (3, 4, 8)])
def test_mixed_embedding_is_added_before_the_first_layer(t, h, w):
    unet = tiny_unet()
    model = from_diffusers(unet)
    x, timesteps, fps, context = inputs(1, t, h, w)
    seen = []
    unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        model(x, timesteps, fps, context)
    grid = grid_for(t)
    added = seen[0] - video_to_grid(x, grid)
    assert added.abs().amax() > 0
    # Exactly ME (eqs. 2-4), the same for every sample, and the frames themselves come back intact.
    emb = model.mixed_embed.embedding(seen[0].shape[-2], seen[0].shape[-1], grid)
    torch.testing.assert_close(added, emb.expand_as(added))
    torch.testing.assert_close(grid_to_video(seen[0] - emb, grid, t), x)


def test_fixed_grid():
    model = from_diffusers(tiny_unet(), grid=(1, 4))
    x, timesteps, fps, context = inputs(2, 3, 8, 8)
    seen = []
    model.unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    with torch.no_grad():
        out = model(x, timesteps, fps, context)
    assert out.shape == x.shape and seen[0] == (2, 4, 8, 32)
    with pytest.raises(ValueError, match=r"rows\*cols = 4"):
        model.check_input((2, 4, 5, 8, 8))
    # Unbatched clips and tensors are accepted as well (the trainer's preflight passes items).
    assert model.check_input((4, 3, 8, 8)) == (1, 4) == model.check_input(x)
    assert from_diffusers(tiny_unet()).check_input((4, 6, 8, 8)) == grid_for(6)


def test_grad_checkpointing_toggles_the_unet():
    model = from_diffusers(tiny_unet())
    model.set_grad_checkpointing(True)
    assert model.unet.is_gradient_checkpointing
    x, timesteps, fps, context = inputs(2, 4, 8, 8)
    model.train()
    model(x, timesteps, fps, context).mean().backward()
    assert all(p.grad is not None for p in model.unet.parameters())
    model.set_grad_checkpointing(False)
    assert not model.unet.is_gradient_checkpointing
    with pytest.raises(TypeError):
        model.set_grad_checkpointing("yes")


def test_malformed_input_rejected():
    model = from_diffusers(tiny_unet())
    x, timesteps, fps, context = inputs(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\) with c=4"):
        model(torch.randn(2, 3, 4, 8, 8), timesteps, fps, context)
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\)"):
        model(torch.randn(4, 8, 8), timesteps, fps, context)
    with pytest.raises(ValueError, match="divisible by 2"):
        model.check_input((2, 4, 4, 5, 8))
    with pytest.raises(ValueError, match=r"\(b, n, d\) with d=32"):
        model(x, timesteps, fps, torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="batch size"):
        model(x, timesteps[:1], fps, context)
    with pytest.raises(ValueError, match=r"\[0, 120\]"):
        model(x, timesteps, torch.tensor([10.0, 121.0]), context)
    with pytest.raises(TypeError, match="fps"):
        model(x, timesteps, [10.0, 20.0], context)


def test_rejects_other_models_and_fourier_time_embeddings():
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        from_diffusers(torch.nn.Conv2d(4, 4, 3))
    with pytest.raises(TypeError, match="Timesteps"):
        from_diffusers(tiny_unet(time_embedding_type="fourier"))
    with pytest.raises(TypeError, match="grid"):
        from_diffusers(tiny_unet(), grid=4)


def test_missing_diffusers_names_the_extra(monkeypatch):
    unet = tiny_unet()
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"pip install 'vdblocks\[diffusers\]'"):
        from_diffusers(unet)


def test_concurrent_forwards_keep_their_own_fps():
    model = from_diffusers(tiny_unet())
    perturb_fps_mlp(model)
    x, timesteps, _, context = inputs(2, 4, 8, 8)
    rates = [torch.tensor([1.0, 2.0]), torch.tensor([60.0, 120.0])]
    with torch.no_grad():
        expected = [model(x, timesteps, r, context) for r in rates]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}

    def run(k: int) -> None:
        with torch.no_grad():
            for _ in range(3):
                results[k].append(model(x, timesteps, rates[k], context))

    workers = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a forward pass hung"
    for k in (0, 1):
        assert len(results[k]) == 3
        for out in results[k]:
            torch.testing.assert_close(out, expected[k])
    assert len(model.unet.time_embedding._forward_hooks) == 0
