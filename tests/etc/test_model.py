import functools
import json

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from reference_models.etc.conditioning import ETCConditioner
from reference_models.etc.config import PRESETS, ETCConfig, get_config
from reference_models.etc.model import ETCUNet, SpatialTransformer
from vdblocks.layers.grid import SpatialTemporalMixedEmbedding, grid_for, video_to_grid


@functools.cache
def _tiny():
    torch.manual_seed(0)
    return ETCUNet(get_config("tiny")).eval()


def _randomised(model):
    """A copy whose zero-initialised outputs are re-drawn, so every branch affects the output."""
    model = ETCUNet(model.cfg)
    for module in model.zero_init_modules():
        module.reset_parameters()
    return model


def _inputs(cfg, b=2, t=4, h=8, w=8, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, t, h, w, generator=g)
    timesteps = torch.randint(0, cfg.diffusion.num_train_steps, (b,), generator=g)
    fps = torch.rand(b, generator=g) * cfg.max_fps
    context = torch.randn(b, n, cfg.context_dim, generator=g)
    return x, timesteps, fps, context


# ---------------------------------------------------------------- shapes


def _check_shapes(b, t, h, w, n, float_t):
    model = _tiny()
    x, timesteps, fps, context = _inputs(model.cfg, b, t, h, w, n)
    if float_t:
        timesteps = timesteps.float() + 0.5
    with torch.no_grad():
        eps = model(x, timesteps, fps, context)
    assert eps.shape == x.shape and eps.dtype == x.dtype
    assert torch.isfinite(eps).all()
    assert model.check_input(x.shape) == grid_for(t)


@given(
    b=st.integers(1, 2),
    t=st.integers(1, 9),
    h=st.integers(1, 4).map(lambda k: 4 * k),  # tiny has 3 levels: frame sizes are multiples of 4
    w=st.integers(1, 4).map(lambda k: 4 * k),
    n=st.integers(1, 5),
    float_t=st.booleans(),
)
def test_any_frame_count_and_size(b, t, h, w, n, float_t):
    _check_shapes(b, t, h, w, n, float_t)


@pytest.mark.parametrize("t", [1, 3, 4, 8, 9])
def test_non_square_frames_at_training_size(t):
    _check_shapes(2, t, 16, 24, 3, False)


def test_batch_items_are_independent():
    model = _randomised(_tiny()).eval()
    x, timesteps, fps, context = _inputs(model.cfg, b=3, t=3, h=8, w=12)
    with torch.no_grad():
        full = model(x, timesteps, fps, context)
        single = model(x[1:2], timesteps[1:2], fps[1:2], context[1:2])
    torch.testing.assert_close(full[1:2], single, rtol=1e-4, atol=1e-5)


def test_configured_grid_is_used_for_every_clip():
    model = ETCUNet(get_config("tiny", grid=(2, 4)))
    seen = []
    model.conv_in.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    x, timesteps, fps, context = _inputs(model.cfg, b=1, t=5, h=8, w=12)
    assert model(x, timesteps, fps, context).shape == x.shape
    assert seen[-1][-2:] == (2 * 8, 4 * 12)
    with pytest.raises(ValueError, match=r"rows\*cols = 8"):
        model.check_input((1, 3, 9, 8, 8))


# ---------------------------------------------------------------- ETC specifics (sections 4.1-4.2)


@pytest.mark.parametrize("t,h,w", [(8, 16, 24), (4, 8, 8), (1, 12, 4)])
def test_mixed_embedding_is_added_before_the_first_layer(t, h, w):
    model = _tiny()
    captured = []
    handle = model.conv_in.register_forward_pre_hook(lambda m, args: captured.append(args[0].clone()))
    try:
        x, timesteps, fps, context = _inputs(model.cfg, b=2, t=t, h=h, w=w)
        with torch.no_grad():
            model(x, timesteps, fps, context)
    finally:
        handle.remove()
    grid = grid_for(t)
    image = video_to_grid(x, grid)  # eq. 1, built independently
    me = SpatialTemporalMixedEmbedding(model.cfg.in_channels, model.cfg.theta).embedding(*image.shape[-2:], grid)
    torch.testing.assert_close(captured[0], image + me)


def test_mixed_embedding_matters_and_is_a_recorded_step():
    model = _randomised(_tiny()).eval()
    x, timesteps, fps, context = _inputs(model.cfg, t=4)

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, image, grid):
            self.calls.append((image.shape, grid))
            return image

    with torch.no_grad():
        with_me = model(x, timesteps, fps, context)
        model.mixed_embed = Recorder()
        without = model(x, timesteps, fps, context)
    assert model.mixed_embed.calls == [((2, 3, 16, 16), (2, 2))]
    assert not torch.allclose(with_me, without)


def test_fps_shares_the_timestep_sinusoid_and_starts_as_identity():
    model = ETCUNet(get_config("tiny"))
    assert model.fps_embed.sinusoid is model.time_embed.sinusoid
    assert not {id(p) for p in model.fps_embed.parameters()} & {id(p) for p in model.time_embed.parameters()}
    x, timesteps, _, context = _inputs(model.cfg)
    with torch.no_grad():
        a = model(x, timesteps, torch.tensor([0.0, 0.0]), context)
        b = model(x, timesteps, torch.tensor([30.0, 120.0]), context)
    torch.testing.assert_close(a, b)  # init_weights: the FPS branch is the identity


def test_fps_changes_the_output():
    model = _randomised(_tiny()).eval()
    x, timesteps, _, context = _inputs(model.cfg)
    with torch.no_grad():
        outs = [model(x, timesteps, torch.full((2,), f), context) for f in (0.0, 8.0, 120.0)]
    for i in range(3):
        for j in range(i):
            assert (outs[i] - outs[j]).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-4


def test_labels_captions_and_null_context_condition_the_output():
    cfg = get_config("tiny")
    torch.manual_seed(1)
    model = _randomised(ETCUNet(cfg)).eval()
    cond = ETCConditioner(cfg)
    x, timesteps, fps, _ = _inputs(cfg)
    with torch.no_grad():
        run = lambda ctx: model(x, timesteps, fps, ctx)  # noqa: E731
        by_label = [run(cond(labels=torch.tensor([k, k]))) for k in (0, 3)]
        by_caption = [run(cond(captions=[c, c])) for c in ("a red circle", "a large blue square moving up")]
        both = run(cond(labels=torch.tensor([1, 2]), captions=["a red circle", "a cross"]))
        null = run(cond.null_context(2))
    for pair in (by_label, by_caption):
        assert (pair[0] - pair[1]).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-5
    for out in (*by_label, *by_caption, both, null):
        assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(null, by_label[0])


def test_cross_attention_starts_as_identity():
    # proj_out zeroed: a fresh model ignores the context until it has trained.
    model = ETCUNet(get_config("tiny"))
    x, timesteps, fps, context = _inputs(model.cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(x, timesteps, fps, context), model(x, timesteps, fps, -context))


# ---------------------------------------------------------------- gradients


def _is_zero(module):
    return module.weight.abs().sum() == 0 and (module.bias is None or module.bias.abs().sum() == 0)


def _backward(model, cond):
    x, timesteps, fps, _ = _inputs(model.cfg, b=2, t=3, h=8, w=12)
    context = cond(labels=torch.tensor([0, -1]), captions=["a red circle moving left", ""])
    model(x, timesteps, fps, context).square().mean().backward()


def test_after_init_weights_grads_are_finite_and_zeroed_layers_learn():
    cfg = get_config("tiny")
    model, cond = ETCUNet(cfg), ETCConditioner(cfg)
    zeroed = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and _is_zero(m)]
    assert {id(m) for m in zeroed} == {id(m) for m in model.zero_init_modules()}
    assert len(zeroed) == sum(1 for m in model.modules() if isinstance(m, SpatialTransformer)) + sum(
        len(level.layers) for level in (*model.down, *model.up)
    ) + len(model.mid) + 1 + (model.context_embed is not None)  # FPS MLP, pooled-context MLP
    _backward(model, cond)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Residual outputs learn from the first step. (The FPS MLP's last layer waits one step more:
    # every consumer of the time embedding sits inside a residual branch whose output is zero.)
    late = {id(model.fps_embed.mlp[-1])} | ({id(model.context_embed[-1])} if model.context_embed is not None else set())
    for m in zeroed:
        if id(m) not in late:
            assert m.weight.grad.abs().sum() > 0 and m.bias.grad.abs().sum() > 0


def test_every_parameter_gets_a_gradient_once_branches_are_live():
    cfg = get_config("tiny")
    torch.manual_seed(2)
    model, cond = _randomised(ETCUNet(cfg)), ETCConditioner(cfg)
    _backward(model, cond)
    for name, p in [*model.named_parameters(), *cond.named_parameters()]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_grad_checkpointing_gives_the_same_output_and_grads():
    cfg = get_config("tiny")
    torch.manual_seed(3)
    ref = _randomised(ETCUNet(cfg))
    ckpt = ETCUNet(cfg)
    ckpt.load_state_dict(ref.state_dict())
    ckpt.set_grad_checkpointing(True)
    inputs = _inputs(cfg, t=3, h=12, w=8)
    outs = []
    for model in (ref, ckpt):
        out = model(*inputs)
        out.square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- input checks


def test_check_input_names_the_constraint():
    model = ETCUNet(get_config("tiny", channel_mult=(1, 2, 2), attention_levels=(1,)))
    assert model.check_input((2, 3, 8, 12, 20)) == (3, 3)
    assert model.check_input((3, 4, 8, 8)) == (2, 2)  # one unbatched clip
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(levels-1\) = 4"):
        model.check_input((1, 3, 8, 16, 18))
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(levels-1\) = 4"):
        model.check_input(torch.zeros(1, 3, 2, 6, 8))
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\) with c=3"):
        model.check_input((1, 4, 8, 16, 16))
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\)"):
        model.check_input((16, 16))


def test_forward_rejects_malformed_inputs():
    model = _tiny()
    x, timesteps, fps, context = _inputs(model.cfg)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(levels-1\) = 4"):
        model(x[..., :6], timesteps, fps, context)
    with pytest.raises(ValueError, match=r"\(b, n, context_dim\) with context_dim=64"):
        model(x, timesteps, fps, context[..., :32])
    with pytest.raises(ValueError, match="batch size"):
        model(x, timesteps, fps, context[:1])
    with pytest.raises(ValueError, match=r"\(b,\)"):
        model(x, timesteps[:, None], fps, context)
    with pytest.raises(ValueError, match=r"\[0, 120\]"):
        model(x, timesteps, torch.tensor([10.0, 121.0]), context)
    with pytest.raises(TypeError, match="null_context"):
        model(x, timesteps, fps, None)
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\) with c=3"):
        model(x[:, :2], timesteps, fps, context)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_json_round_trip(name):
    cfg = PRESETS[name]
    back = ETCConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and hash(back) == hash(cfg)
    assert get_config(name) == cfg
    assert get_config(name, frames=4).frames == 4


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"attention_levels": (3,)}, "attention_levels"),
        ({"num_head_channels": 24}, "divisible by num_head_channels=24"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"diffusion.schedule": "quadratic"}, "schedule"),
        ({"grid": (1, 2)}, "frames <= rows\\*cols"),
        ({"cond_dropout": 1.5}, "cond_dropout"),
        ({"diffusion.beta_start": 0.5, "diffusion.beta_end": 0.1}, "beta_start"),
        ({"snr_gamma": 0.0}, "snr_gamma"),
    ],
)
def test_config_rejects_inconsistent_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_config("tiny", **overrides)


def test_config_rejects_unknown_names():
    with pytest.raises(TypeError, match="unknown ETCConfig fields"):
        ETCConfig.from_dict({"frames": 8, "temporal_layers": 2})
    with pytest.raises(TypeError, match="unknown ETCConfig fields"):
        get_config("tiny", temporal_layers=2)
    with pytest.raises(ValueError, match="preset name"):
        get_config("sd15")


# ---------------------------------------------------------------- shaped like SD 2.1


def test_sd21_preset_matches_diffusers_sd21_unet_part_by_part():
    diffusers = pytest.importorskip("diffusers")
    cfg = get_config("sd21")
    sd21 = dict(  # Stable Diffusion 2.1's unet/config.json
        act_fn="silu",
        attention_head_dim=[5, 10, 20, 20],
        block_out_channels=[320, 640, 1280, 1280],
        cross_attention_dim=1024,
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        downsample_padding=1,
        flip_sin_to_cos=True,
        freq_shift=0,
        in_channels=4,
        layers_per_block=2,
        mid_block_scale_factor=1,
        norm_eps=1e-5,
        norm_num_groups=32,
        out_channels=4,
        sample_size=96,
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        use_linear_projection=True,
    )
    with torch.device("meta"):
        ours = ETCUNet(cfg)
        ref = diffusers.UNet2DConditionModel(**sd21)

    def count(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    assert count(ours.conv_in) == count(ref.conv_in)
    assert count(ours.time_embed) == count(ref.time_embedding)
    for mine, theirs in zip(ours.down, ref.down_blocks, strict=True):
        assert count(mine) == count(theirs)
    assert count(ours.mid) == count(ref.mid_block)
    for mine, theirs in zip(ours.up, ref.up_blocks, strict=True):
        assert count(mine) == count(theirs)
    assert count(ours.norm_out, ours.conv_out) == count(ref.conv_norm_out, ref.conv_out)
    assert count(ours) - count(ours.fps_embed) == count(ref)
    # FPS MLP (section 4.2): three linears, 4x wider in the middle, from SD's 320-wide sinusoid.
    e, f = cfg.time_embed_dim, cfg.model_channels
    assert count(ours.fps_embed) == (f * 4 * e + 4 * e) + (4 * e * 4 * e + 4 * e) + (4 * e * e + e)
    heads = [blk.attn.heads for m in ours.down.modules() if isinstance(m, SpatialTransformer) for blk in m.blocks]
    assert sorted(set(heads)) == sorted(set(sd21["attention_head_dim"][:3]))
