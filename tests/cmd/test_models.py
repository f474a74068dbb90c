"""CMD's diffusion models: shapes, the motion DiT's sequence (motion + content tokens), conditioning
that reaches the prediction, the null class and guidance, the normaliser, configs, gradients."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference_models.cmd.config import (
    DIT_SIZES,
    PRESETS,
    CMDConfig,
    get_config,
    with_dit,
)
from reference_models.cmd.content_model import ContentDiT, ContentUNet, DataNormalizer, build_native_content_model
from reference_models.cmd.motion_model import MotionDiT, motion_sequence_length
from reference_models.cmd.sampling import conditional_model_fn
from vdblocks.diffusion import guided_eps

SMALL = dict(
    ae_dim=16,
    ae_depth=1,
    ae_heads=2,
    ae_dim_head=8,
    motion_channels=3,
    content_dit_dim=16,
    content_dit_heads=2,
    content_dit_depth=1,
    motion_dim=16,
    motion_heads=2,
    motion_depth=2,
    content_dit_patch=2,
    content_patch=2,
    motion_patch=2,
    ae_patch=2,
    frames=4,
    height=8,
    width=12,
)


def small_cfg(**kw):
    return get_config("tiny", **{**SMALL, **kw})


def perturb_zero_init(model, seed=0, std=0.2):
    """Random values for the zero-initialised adaLN and output layers (a fresh model predicts 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def motion_inputs(cfg, b=2, frames=None, height=None, width=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames, height, width = frames or cfg.frames, height or cfg.height, width or cfg.width
    z = torch.randn(b, cfg.motion_channels, frames, height // cfg.ae_patch + width // cfg.ae_patch, generator=g)
    content = torch.randn(b, cfg.channels, height, width, generator=g)
    return z, torch.randint(0, 1000, (b,), generator=g), content


@given(gh=st.integers(1, 3), gw=st.integers(1, 4), seed=st.integers(0, 50))
def test_content_dit_shapes_for_non_square_frames(gh, gw, seed):
    cfg = small_cfg()
    model = ContentDiT(cfg)
    perturb_zero_init(model, seed)
    x = torch.randn(2, 3, 2 * gh, 2 * gw)
    eps = model(x, torch.tensor([3, 500]), labels=torch.tensor([0, 4]))
    assert eps.shape == x.shape and torch.isfinite(eps).all()


UNET = dict(
    content_model="unet",
    content_unet_channels=8,
    content_unet_mult=(1, 2),
    content_unet_blocks=1,
    content_unet_attention=(2,),
    content_unet_heads=2,
)


@given(
    h=st.integers(1, 13), w=st.integers(1, 13), mult=st.sampled_from([(1,), (1, 2), (1, 2, 2)]), seed=st.integers(0, 50)
)
def test_content_unet_shapes_for_any_frame_size(h, w, mult, seed):
    cfg = small_cfg(**{**UNET, "content_unet_mult": mult})
    model = ContentUNet(cfg)
    perturb_zero_init(model, seed)
    x = torch.randn(2, 3, h, w)
    eps = model(x, torch.tensor([3, 500]), labels=torch.tensor([0, 4]))
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_content_unet_conditions_on_class_and_text_and_its_nulls_guide():
    cfg = small_cfg(**UNET, text_dim=4)
    # float64: guidance recombines two forward passes and scales their difference by 4, which in
    # float32 puts the comparison at the rounding level (1e-5) on some CPUs.
    model = ContentUNet(cfg).double().eval()
    perturb_zero_init(model, 2)
    x, t = torch.randn(2, 3, 8, 12, dtype=torch.float64), torch.tensor([10, 900])
    text = torch.randn(2, 4, dtype=torch.float64)
    a = model(x, t, labels=torch.tensor([0, 1]), text=text)
    assert not torch.allclose(a, model(x, t, labels=torch.tensor([2, 3]), text=text))
    assert not torch.allclose(a, model(x, t, labels=torch.tensor([0, 1]), text=text + 1))
    null = model(x, t, labels=torch.tensor([0, 1]), text=text, drop=torch.tensor([True, True]))
    torch.testing.assert_close(null, model(x, t, labels=torch.full((2,), cfg.num_classes)))
    fn = conditional_model_fn(model, labels=torch.tensor([0, 1]), guidance=4.0, extra={"text": text})
    torch.testing.assert_close(fn(x, t), null + 4.0 * (a - null), atol=1e-10, rtol=1e-10)


def test_content_unet_gradients_zero_start_and_the_config_switch():
    cfg = small_cfg(**UNET)
    x, t = torch.randn(2, 3, 8, 12), torch.tensor([1, 999])
    assert torch.equal(ContentUNet(cfg)(x, t), torch.zeros_like(x))  # ADM's zero_module init
    model = ContentUNet(cfg)
    perturb_zero_init(model, 1)
    model(x, t, labels=torch.tensor([0, 5])).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert isinstance(build_native_content_model(cfg), ContentUNet)
    assert isinstance(build_native_content_model(small_cfg(content_model="dit")), ContentDiT)
    assert with_dit(cfg, content="S").content_model == "dit"
    # the U-Net takes sizes no DiT patch divides
    assert small_cfg(**UNET, content_dit_patch=4, height=6, width=10, ae_patch=1, content_patch=2).height == 6
    with pytest.raises(ValueError, match="content_model 'dit' or 'unet'"):
        small_cfg(content_model="vit")
    with pytest.raises(ValueError, match="divisible by content_unet_heads=3"):
        small_cfg(**{**UNET, "content_unet_heads": 3})
    with pytest.raises(ValueError, match="content_unet_mult to be a tuple of positive ints"):
        small_cfg(**{**UNET, "content_unet_mult": (1, 0)})
    with pytest.raises(ValueError, match=r"\(b, C, H, W\) with C=3"):
        model(x[:, :2], t)


@given(lt=st.integers(1, 3), gh=st.integers(1, 3), gw=st.integers(1, 3), q=st.sampled_from([2, 4]))
def test_motion_dit_sequence_is_motion_plus_content_tokens(lt, gh, gw, q):
    cfg = small_cfg(content_patch=q, content_dit_patch=2)
    model = MotionDiT(cfg)
    frames, height, width = 2 * lt, 4 * gh, 4 * gw  # divisible by q, and by ae_patch * motion_patch
    z, t, content = motion_inputs(cfg, frames=frames, height=height, width=width)
    seen = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    eps = model(z, t, content, labels=torch.tensor([1, 2]))
    handle.remove()
    motion_tokens = (frames // 2) * (height // 2 // 2) + (frames // 2) * (width // 2 // 2)
    content_tokens = (height // q) * (width // q)
    assert seen == [motion_tokens + content_tokens]
    assert motion_sequence_length(cfg, frames, height, width) == (motion_tokens, content_tokens)
    assert eps.shape == z.shape


def test_larger_content_patch_shortens_the_sequence():
    cfg = get_config("ucf101")
    lengths = [sum(motion_sequence_length(cfg.replace(content_patch=q))) for q in (2, 4, 8, 16)]
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == 4
    motion, _ = motion_sequence_length(cfg)
    assert [motion_sequence_length(cfg.replace(content_patch=q))[0] for q in (2, 4, 8, 16)] == [motion] * 4


def test_class_condition_and_content_frame_reach_the_motion_prediction_and_null_class_guides():
    cfg = small_cfg()
    # float64: guidance scales a difference of forward passes by 4 (float32 rounding is CPU-dependent).
    model = MotionDiT(cfg).double().eval()
    perturb_zero_init(model)
    z, t, content = motion_inputs(cfg)
    z, content = z.double(), content.double()
    a = model(z, t, content, labels=torch.tensor([0, 1]))
    b = model(z, t, content, labels=torch.tensor([2, 3]))
    null = model(z, t, content, labels=torch.tensor([0, 1]), drop=torch.tensor([True, True]))
    assert not torch.allclose(a, b) and not torch.allclose(a, null)
    # Null by drop and by label index num_classes are the same condition.
    torch.testing.assert_close(null, model(z, t, content, labels=torch.full((2,), cfg.num_classes)))
    assert not torch.allclose(a, model(z, t, content + 1.0, labels=torch.tensor([0, 1])))
    # Guidance: eps_null + s (eps_cond - eps_null), through the sampler's model_fn.
    labels = torch.tensor([0, 1])
    fn = conditional_model_fn(model, labels=labels, guidance=4.0, extra={"content": content})
    torch.testing.assert_close(fn(z, t), null + 4.0 * (a - null), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(conditional_model_fn(model, labels=labels, extra={"content": content})(z, t), a)
    direct = guided_eps(
        lambda x, tt, drop, content: model(x, tt, content, labels=labels.repeat(2), drop=drop),
        z,
        t,
        {"drop": torch.zeros(2, dtype=torch.bool), "content": content},
        {"drop": torch.ones(2, dtype=torch.bool), "content": content},
        1.0,
    )
    torch.testing.assert_close(direct, a, atol=1e-10, rtol=1e-10)


def test_text_condition_through_a_pooled_vector():
    cfg = small_cfg(num_classes=None, text_dim=5)
    for model in (ContentDiT(cfg).eval(), MotionDiT(cfg).eval()):
        perturb_zero_init(model, 3)
        z, t, content = motion_inputs(cfg)
        args = (z, t, content) if isinstance(model, MotionDiT) else (content, t)
        text = torch.randn(2, 5)
        a, b = model(*args, text=text), model(*args, text=text + 1)
        assert not torch.allclose(a, b)
        torch.testing.assert_close(model(*args, text=text, drop=torch.tensor([True, True])), model(*args))
        with pytest.raises(ValueError, match="no class conditioning"):
            model(*args, labels=torch.tensor([0, 1]))


def test_every_parameter_of_both_dits_gets_a_gradient():
    cfg = small_cfg(text_dim=4)
    z, t, content = motion_inputs(cfg)
    for model, args in ((MotionDiT(cfg), (z, t, content)), (ContentDiT(cfg), (content, t))):
        perturb_zero_init(model, 1)
        out = model(*args, labels=torch.tensor([0, 5]), text=torch.randn(2, 4), drop=torch.tensor([False, True]))
        out.square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_fresh_models_predict_zero_adaln_zero():
    cfg = small_cfg()
    z, t, content = motion_inputs(cfg)
    assert torch.equal(MotionDiT(cfg)(z, t, content), torch.zeros_like(z))
    assert torch.equal(ContentDiT(cfg)(content, t), torch.zeros_like(content))


def test_malformed_inputs_are_rejected():
    cfg = small_cfg()
    model = MotionDiT(cfg)
    z, t, content = motion_inputs(cfg)
    with pytest.raises(ValueError, match=r"h \+ w"):
        model(z[..., :-1], t, content)
    with pytest.raises(ValueError, match=r"\(b, C, H, W\) with C=3"):
        model(z, t, content[:, :2])
    with pytest.raises(ValueError, match=r"integer classes in \[0, 5\]"):
        model(z, t, content, labels=torch.tensor([0, 6]))
    with pytest.raises(TypeError, match="bool"):
        model(z, t, content, drop=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="divisible by motion_patch=2"):
        model(z[:, :, :3], t, content)
    with pytest.raises(ValueError, match=r"w divisible by the patch size 2"):
        ContentDiT(cfg)(torch.randn(2, 3, 8, 7), t)


@given(seed=st.integers(0, 50))
def test_normalizer_round_trip_and_unit_statistics(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, 4, 5, generator=g) * torch.tensor([0.5, 2.0, 1.0])[:, None, None] - 0.7
    norm = DataNormalizer(3).fit(x)
    y = norm.normalize(x)
    torch.testing.assert_close(y.transpose(0, 1).reshape(3, -1).mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    assert abs(float(y.std()) - 1) < 1e-4 and float(y.abs().max()) <= float(norm.bound) + 1e-6
    torch.testing.assert_close(norm.denormalize(y), x, atol=1e-5, rtol=1e-5)
    identity = DataNormalizer(3)
    assert torch.equal(identity.normalize(x), x)


def test_configs_presets_and_dit_sizes():
    for name, cfg in PRESETS.items():
        assert CMDConfig.from_dict(cfg.to_dict()) == cfg, name
    paper = get_config("ucf101")
    assert (
        paper.channels,
        paper.frames,
        paper.height,
        paper.ae_patch,
        paper.ae_dim,
        paper.motion_channels,
        paper.ae_depth,
        paper.ae_dim_head,
        paper.ae_heads,
    ) == (4, 16, 32, 2, 384, 8, 12, 64, 8)  # Table 5
    assert (paper.motion_dim, paper.motion_depth, paper.motion_heads) == DIT_SIZES["L"]  # Table 6
    assert paper.content_patch == 4 and paper.motion_patch == 2
    assert get_config("webvid_sd21").content_patch == 8
    for size in DIT_SIZES:
        for q in (2, 4, 8, 16):
            cfg = with_dit(paper, motion=size, content_patch=q)
            assert (cfg.motion_dim, cfg.motion_depth, cfg.motion_heads, cfg.content_patch) == (*DIT_SIZES[size], q)
    with pytest.raises(ValueError, match="divisible by content_patch"):
        get_config("tiny", content_patch=5)
    with pytest.raises(ValueError, match="divisible by motion_patch"):
        get_config("tiny", frames=7)
    with pytest.raises(ValueError, match="DiT size"):
        with_dit(paper, motion="XXL")
