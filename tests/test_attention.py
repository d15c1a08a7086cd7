"""Cross-attention capture on a tiny diffusers UNet: layers, equality, groups, restore, checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
)

from pipeline.train.attention import (
    AttentionCapture,
    AttentionStore,
    CaptureCrossAttnProcessor,
    CapturedMap,
    supervised_layers,
)

MID_UP = [
    "mid_block.attentions.0.transformer_blocks.0.attn2.processor",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn2.processor",
    "up_blocks.2.attentions.0.transformer_blocks.0.attn2.processor",
    "up_blocks.2.attentions.1.transformer_blocks.0.attn2.processor",
]
HEADS = 8


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """16x16 latents: cross-attention down at 16 and 8, mid at 4, up at 8 (x2) and 16 (x2)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=HEADS,
        norm_num_groups=8,
    )


def unet_inputs(seed: int = 1, b: int = 2, h: int = 16, w: int = 16):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 4, h, w, generator=g),
        torch.tensor([10, 500][:b]),
        torch.randn(b, 77, 32, generator=g),
    )


@pytest.fixture
def unet() -> UNet2DConditionModel:
    return tiny_unet()


# ---------------------------------------------------------------- layer selection

def test_supervised_layers(unet):
    assert supervised_layers(unet) == MID_UP
    assert supervised_layers(unet, ("up", "mid")) == MID_UP
    down = supervised_layers(unet, ("down",))
    assert down == [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
    ]
    everything = supervised_layers(unet, ("down", "mid", "up"))
    assert everything == down + MID_UP
    assert set(everything) <= set(unet.attn_processors)
    assert len(unet.attn_processors) == 14                # 7 self- and 7 cross-attention layers
    assert not any("attn1" in name for name in everything)
    with pytest.raises(ValueError, match="unknown UNet block"):
        supervised_layers(unet, ("middle",))
    with pytest.raises(ValueError, match="non-empty"):
        supervised_layers(unet, ())


def test_no_cross_attention_in_block_is_an_error():
    torch.manual_seed(0)
    plain = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
        mid_block_type=None,
    )
    with pytest.raises(ValueError, match="no cross-attention"):
        supervised_layers(plain, ("mid",))


# ---------------------------------------------------------------- the processor's math

def test_capture_output_equals_default_processors(unet):
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}
    x, t, e = unet_inputs()
    with torch.no_grad():
        ref = unet(x, t, e).sample
        with AttentionCapture(unet) as capture:
            got = unet(x, t, e).sample
            assert len(capture.maps) == 5
        unet.set_attn_processor(AttnProcessor())
        classic = unet(x, t, e).sample
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, classic, rtol=0, atol=1e-5)


ATTENTION_VARIANTS = {
    "plain": dict(query_dim=32, cross_attention_dim=12, heads=4, dim_head=8),
    "group_norm": dict(query_dim=32, cross_attention_dim=12, heads=4, dim_head=8, norm_num_groups=4),
    "norm_cross_layer": dict(query_dim=32, cross_attention_dim=12, heads=4, dim_head=8, cross_attention_norm="layer_norm"),
    "norm_cross_group": dict(
        query_dim=32, cross_attention_dim=12, heads=4, dim_head=8,
        cross_attention_norm="group_norm", cross_attention_norm_num_groups=4,
    ),
    "spatial_norm": dict(query_dim=32, cross_attention_dim=12, heads=4, dim_head=8, spatial_norm_dim=6),
    "residual_rescale": dict(
        query_dim=32, cross_attention_dim=12, heads=2, dim_head=16, residual_connection=True,
        rescale_output_factor=2.0, bias=True,
    ),
    "upcast": dict(query_dim=32, cross_attention_dim=12, heads=4, dim_head=8, upcast_attention=True, upcast_softmax=True),
    "qk_norm": dict(query_dim=32, cross_attention_dim=12, heads=4, dim_head=8, qk_norm="layer_norm"),
}


VARIANT_CASES = [
    (variant, four_d)
    for variant in sorted(ATTENTION_VARIANTS)
    for four_d in (False, True)
    if four_d or variant != "spatial_norm"                # SpatialNorm takes (B, C, h, w) inputs only
]


@pytest.mark.parametrize(("variant", "four_d"), VARIANT_CASES)
def test_processor_matches_default_on_attention_variants(variant, four_d):
    config = ATTENTION_VARIANTS[variant]
    torch.manual_seed(0)
    attn = Attention(**config)
    for param in attn.parameters():                       # move norms off their identity init
        param.data.add_(0.1 * torch.randn_like(param))
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 32, 4, 5, generator=g) if four_d else torch.randn(3, 20, 32, generator=g)
    context = torch.randn(3, 7, 12, generator=g)
    temb = torch.randn(3, 6, 2, 2, generator=g) if config.get("spatial_norm_dim") else None

    store = AttentionStore()
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, hidden, context, temb=temb)
        got = CaptureCrossAttnProcessor("layer", store)(attn, hidden, context, temb=temb)
        if variant != "qk_norm":                          # AttnProcessor ignores norm_q / norm_k
            torch.testing.assert_close(got, AttnProcessor()(attn, hidden, context, temb=temb), rtol=0, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    ((name, probs),) = store.items()
    assert name == "layer"
    assert probs.shape == (3, config["heads"], 20, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, config["heads"], 20))


def test_processor_refuses_self_attention():
    attn = Attention(query_dim=32, heads=4, dim_head=8)
    with pytest.raises(ValueError, match="cross-attention only"):
        CaptureCrossAttnProcessor("x", AttentionStore())(attn, torch.randn(1, 5, 32))


# ---------------------------------------------------------------- captured maps

def test_maps_shapes_probabilities_and_groups(unet):
    x, t, e = unet_inputs()
    originals = unet.attn_processors
    with AttentionCapture(unet) as capture:
        assert capture.maps == []
        with torch.no_grad():
            unet(x, t, e)
        processors = unet.attn_processors
        for name, proc in processors.items():
            if name in MID_UP:
                assert isinstance(proc, CaptureCrossAttnProcessor) and proc.name == name
            else:
                assert proc is originals[name]            # self-attention and down layers untouched
        maps = capture.maps
        assert [m.name for m in maps] == MID_UP          # run order
        assert all(isinstance(m, CapturedMap) for m in maps)
        assert [m.resolution for m in maps] == [4, 8, 8, 16, 16]
        for m in maps:
            assert m.probs.shape == (2, HEADS, m.resolution**2, 77)
            torch.testing.assert_close(m.probs.sum(-1), torch.ones(m.probs.shape[:-1]))
            assert (m.probs > 0).all()
        groups = capture.groups()
        assert list(groups) == [4, 8, 16]
        assert [len(v) for v in groups.values()] == [1, 2, 2]
        assert groups[8][1] is maps[2].probs


def test_groups_with_down_blocks(unet):
    x, t, e = unet_inputs()
    with AttentionCapture(unet, blocks=("down", "mid", "up")) as capture, torch.no_grad():
        unet(x, t, e)
        assert [m.resolution for m in capture.maps] == [16, 8, 4, 8, 8, 16, 16]
        assert {r: len(v) for r, v in capture.groups().items()} == {16: 3, 8: 3, 4: 1}


def test_each_forward_replaces_the_maps(unet):
    x, t, e = unet_inputs()
    x2, _, e2 = unet_inputs(seed=9)
    with AttentionCapture(unet) as capture, torch.no_grad():
        unet(x, t, e)
        first = [m.probs for m in capture.maps]
        unet(x2, t, e2)
        second = capture.maps
        assert len(second) == 5
        assert not torch.allclose(first[0], second[0].probs)
        capture.clear()
        assert capture.maps == [] and capture.groups() == {}
        unet(x, t, e)
        torch.testing.assert_close(capture.maps[0].probs, first[0])


def test_non_square_latents_raise(unet):
    x, t, e = unet_inputs(h=16, w=8)
    with AttentionCapture(unet) as capture, torch.no_grad():
        unet(x, t, e)
        with pytest.raises(ValueError, match="not a square latent"):
            capture.groups()


def test_maps_with_gradient_in_train_mode(unet):
    x, t, e = unet_inputs()
    unet.train()
    with AttentionCapture(unet) as capture:
        unet(x, t, e)
        assert all(m.probs.requires_grad for m in capture.maps)


# ---------------------------------------------------------------- restoring processors

def test_original_processors_restored(unet):
    custom = {name: AttnProcessor() for name in unet.attn_processors}
    unet.set_attn_processor(dict(custom))
    x, t, e = unet_inputs()
    capture = AttentionCapture(unet)
    with capture, torch.no_grad():
        unet(x, t, e)
    after = unet.attn_processors
    assert all(after[name] is custom[name] for name in custom)
    with pytest.raises(RuntimeError, match="not active"):
        capture.maps
    with torch.no_grad():                                 # the hook is gone: nothing recorded any more
        unet(x, t, e)
    assert capture.store.items() == []


def test_original_processors_restored_after_exception(unet):
    before = unet.attn_processors
    with pytest.raises(KeyError, match="boom"):
        with AttentionCapture(unet):
            assert any(isinstance(p, CaptureCrossAttnProcessor) for p in unet.attn_processors.values())
            raise KeyError("boom")
    after = unet.attn_processors
    assert list(after) == list(before)
    assert all(after[name] is before[name] for name in before)
    assert {type(p) for p in after.values()} == {AttnProcessor2_0}


def test_capture_cannot_be_entered_twice(unet):
    capture = AttentionCapture(unet)
    with capture:
        with pytest.raises(RuntimeError, match="already active"):
            capture.__enter__()


# ---------------------------------------------------------------- gradient checkpointing

def grads_from_captured_maps(model: UNet2DConditionModel) -> tuple[dict[str, torch.Tensor], AttentionCapture]:
    x, t, e = unet_inputs()
    weights = torch.linspace(0.5, 1.5, 77)
    model.train()
    model.zero_grad(set_to_none=True)
    with AttentionCapture(model) as capture:
        out = model(x, t, e).sample
        loss = sum(((m.probs * weights) ** 2).mean() * m.resolution for m in capture.maps)
        (loss + 1e-3 * out.pow(2).mean()).backward()
        names = [m.name for m in capture.maps]
        assert len(names) == len(set(names)) == 5         # one map per layer, after backward too
        assert names == MID_UP
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, capture


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = tiny_unet()
    checkpointed = copy.deepcopy(plain)
    checkpointed.enable_gradient_checkpointing()
    g_plain, cap_plain = grads_from_captured_maps(plain)
    g_ckpt, cap_ckpt = grads_from_captured_maps(checkpointed)
    assert cap_plain.store.skipped == 0
    assert cap_ckpt.store.skipped == 5                    # the recompute ran every supervised layer again
    assert g_plain.keys() == g_ckpt.keys()
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-5, atol=1e-7, msg=name)
    key = "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight"
    assert g_plain[key].abs().sum() > 0                   # the maps' loss reaches the supervised layers


def test_loss_on_maps_alone_trains_only_layers_before_them():
    model = tiny_unet()
    model.enable_gradient_checkpointing()
    model.train()
    x, t, e = unet_inputs()
    with AttentionCapture(model) as capture:
        model(x, t, e)
        sum(m.probs[..., 1:6].sum() for m in capture.maps).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_q.weight"].abs().sum() > 0
    assert grads["conv_in.weight"].abs().sum() > 0
    assert grads["conv_out.weight"] is None               # after the last supervised layer


def test_backward_after_leaving_the_block_fails_under_checkpointing(caplog):
    model = tiny_unet()
    model.enable_gradient_checkpointing()
    model.train()
    x, t, e = unet_inputs()
    with caplog.at_level("WARNING", logger="pipeline.train.attention"):
        with AttentionCapture(model) as capture:
            pred = model(x, t, e).sample
            loss = pred.mean() + sum(m.probs[..., 1].sum() for m in capture.maps)
    assert "call backward inside" in caplog.text
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        loss.backward()


def test_no_warning_when_backward_runs_inside(caplog):
    model = tiny_unet()
    model.enable_gradient_checkpointing()
    with caplog.at_level("WARNING", logger="pipeline.train.attention"):
        grads_from_captured_maps(model)
    assert caplog.text == ""


# ---------------------------------------------------------------- conditional capture

def test_active_flag(unet):
    before = unet.attn_processors
    capture = AttentionCapture(unet)
    x, t, e = unet_inputs()
    with capture.active(False), torch.no_grad():
        assert all(unet.attn_processors[n] is before[n] for n in before)
        unet(x, t, e)
    assert not capture.is_active and capture.store.items() == []
    with capture.active(True), torch.no_grad():
        assert capture.is_active
        unet(x, t, e)
        assert len(capture.groups()) == 3
    capture.clear()                                       # allowed outside the block
    assert all(unet.attn_processors[n] is before[n] for n in before)
