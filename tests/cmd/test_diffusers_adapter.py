"""Tiny random diffusers models behind the content-model call: shapes, labels with the null class,
text with a null token, guidance, gradients, rebuilding from the stored record."""

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel

from reference_models.cmd.diffusers_adapter import build_from_record, from_diffusers
from reference_models.cmd.sampling import conditional_model_fn


def unet2d(num_class_embeds=6):
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=(8, 12),
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    )


def unet2d_cond():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=12,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4,
    )


def dit():
    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=5,
        norm_num_groups=4,
    )


def perturb(model, seed=0, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def test_unet2d_with_class_labels_null_class_and_guidance():
    # float64: guidance scales the difference of two forward passes by 3, which in float32 puts the
    # comparison at the rounding level on some CPUs.
    model = from_diffusers(unet2d(), num_classes=5).double().eval()
    perturb(model)
    x, t = torch.randn(2, 3, 8, 12, dtype=torch.float64), torch.tensor([10, 700])
    a = model(x, t, labels=torch.tensor([0, 1]))
    null = model(x, t, labels=torch.tensor([0, 1]), drop=torch.tensor([True, True]))
    assert a.shape == x.shape and not torch.allclose(a, null)
    torch.testing.assert_close(null, model(x, t))  # no labels = the null class
    fn = conditional_model_fn(model, labels=torch.tensor([0, 1]), guidance=3.0)
    torch.testing.assert_close(fn(x, t), null + 3.0 * (a - null), atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="num_classes \\+ 1 = 6 rows"):
        from_diffusers(unet2d(num_class_embeds=5), num_classes=5)


def test_unet2d_condition_takes_text_tokens_or_pooled_text_and_a_learned_null():
    model = from_diffusers(unet2d_cond())
    perturb(model)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 500])
    text = torch.randn(2, 3, 12)
    a = model(x, t, text=text)
    dropped = model(x, t, text=text, drop=torch.tensor([True, False]))
    torch.testing.assert_close(dropped[1], a[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dropped[0], model(x, t)[0], atol=1e-5, rtol=1e-5)
    assert model(x, t, text=torch.randn(2, 12)).shape == x.shape
    a.square().mean().backward()
    assert model.null_text.grad is None or torch.isfinite(model.null_text.grad).all()
    grads = [p.grad for p in model.model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match=r"\(b, n, d\) with b=2, d=12"):
        model(x, t, text=torch.randn(2, 3, 7))


def test_dit_learn_sigma_output_is_cut_to_eps_and_internal_label_dropout_is_off():
    model = from_diffusers(dit(), num_classes=5)
    model.train()
    perturb(model, std=0.2)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([1, 999])
    labels = torch.tensor([3, 4])
    out = model(x, t, labels=labels)
    assert out.shape == x.shape
    torch.testing.assert_close(model(x, t, labels=labels), out)  # no random label dropout in train mode
    assert not torch.allclose(out, model(x, t, labels=labels, drop=torch.tensor([True, True])))


def test_rebuild_from_record_gives_the_same_model_after_loading_weights():
    model = from_diffusers(unet2d(), num_classes=5).eval()
    perturb(model)
    rebuilt = build_from_record(model.config_record()).eval()
    rebuilt.load_state_dict(model.state_dict())
    x, t = torch.randn(1, 3, 8, 12), torch.tensor([100])
    torch.testing.assert_close(rebuilt(x, t, labels=torch.tensor([2])), model(x, t, labels=torch.tensor([2])))
    with pytest.raises(TypeError, match="diffusers model of class"):
        from_diffusers(torch.nn.Linear(2, 2))
