"""Visual prompt tuning and bottleneck adapters on tiny random-weight ViTs (timm, open_clip) loaded through
``create_model`` like a user's checkpoint: trainable counts from the definitions, outputs against hand-written
forwards, removal restoring the original model bit for bit, and what a short training changes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fairfm.adapt.peft_usages import FINETUNE_USAGES, apply_usage, finetune
from fairfm.adapt.vpt import add_bottleneck_adapters, add_visual_prompts
from fairfm.errors import InputError
from fairfm.models import create_model
from fairfm.spec import AdapterHParams, LoraHParams, VptHParams
from tests.models.model_fixtures import TINY_VIT

FAST = {"epochs": 2, "batch_size": 32, "warmup_epochs": 0, "early_stopping_patience": None}
TWO_BLOCKS = {**TINY_VIT, "depth": 2}  # deep VPT and per-block adapters need more than one block


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    import timm

    torch.manual_seed(3)
    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TWO_BLOCKS)
    path = tmp_path_factory.mktemp("vit2") / "vit-b_CXR_0.5M_mae.pth"
    torch.save({"model": source.state_dict()}, path)
    return path


def _vit(vit_checkpoint):
    return create_model("medmae", checkpoint=vit_checkpoint, **TWO_BLOCKS)


@pytest.fixture(scope="module")
def small_table(synth_dir):
    table = pd.read_parquet(synth_dir / "samples.parquet")
    return pd.concat([table[table.split == s].head(n) for s, n in (("train", 32), ("val", 16), ("test", 12))])


def _tiny_timm(seed: int = 0, **extra):
    import timm

    torch.manual_seed(seed)
    kwargs = {**TWO_BLOCKS, "img_size": 32, **extra}
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **kwargs).eval()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _prompted_forward(vit, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Independent VPT forward written from Jia et al.: prompts (L, n, d) after the prefix tokens; layer 0 at
    the input, layer i replacing the prompt outputs before block i; prompt positions dropped at the end."""
    p, n = vit.num_prefix_tokens, prompts.shape[1]
    tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    batch = tokens.shape[0]
    for i, block in enumerate(vit.blocks):
        if i < prompts.shape[0]:
            rest = tokens[:, p:] if i == 0 else tokens[:, p + n :]
            tokens = torch.cat([tokens[:, :p], prompts[i].expand(batch, -1, -1), rest], dim=1)
        tokens = block(tokens)
    tokens = torch.cat([tokens[:, :p], tokens[:, p + n :]], dim=1)
    return vit.forward_head(vit.norm(tokens))


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_vpt_matches_a_hand_written_forward_and_removal_restores_the_model(deep, reg_tokens):
    vit = _tiny_timm(reg_tokens=reg_tokens, global_pool="avg" if reg_tokens else "token")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    keys, original = list(vit.state_dict()), vit(x)
    prompts = add_visual_prompts(vit, 3, deep=deep)
    assert prompts.prompts.shape == (2 if deep else 1, 3, 32)
    with torch.no_grad():
        got = vit(x)
    # every block saw prefix + 4 patches (32 px / 16) + 3 prompts
    assert prompts.seen_lengths == [1 + reg_tokens + 4 + 3] * 2
    # Jia et al.'s bound for 16×16 RGB patches and width 32
    bound = math.sqrt(6 / (3 * 16 * 16 + 32))
    assert prompts.prompts.abs().max() <= bound and prompts.prompts.abs().max() > bound / 2
    assert [k for k in vit.state_dict() if k not in keys] == ["vpt_prompts.prompts"]
    values = prompts.prompts.detach().clone()
    prompts.remove()
    assert list(vit.state_dict()) == keys and torch.equal(vit(x), original)
    with torch.no_grad():  # the oracle runs the restored (hook-free) blocks
        expected = _prompted_forward(vit, x, values)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, original, atol=1e-4)  # the prompts change the output


def test_vpt_prompt_dropout_acts_in_training_only():
    vit = _tiny_timm()
    add_visual_prompts(vit, 4, dropout=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vit(x), vit(x))
        vit.train()
        torch.manual_seed(0)
        first = vit(x)
        torch.manual_seed(1)
        assert not torch.allclose(first, vit(x))


@pytest.mark.parametrize("placement", ["parallel", "sequential"])
def test_adapters_start_as_the_frozen_model_and_follow_their_definition(placement):
    vit = _tiny_timm()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    keys, original = list(vit.state_dict()), vit(x)
    adapters = add_bottleneck_adapters(vit, 4, scale=0.5, placement=placement)
    assert torch.equal(vit(x), original)  # zero-initialised up-projection
    counted = sum(p.numel() for n, p in vit.named_parameters() if "bottleneck_adapter." in n)
    assert counted == 2 * (2 * 32 * 4 + 4 + 32)  # per block: down + up weights, + biases
    block = vit.blocks[0]
    with torch.no_grad():
        torch.nn.init.normal_(block.bottleneck_adapter.up.weight)
        h = torch.randn(2, 5, 32)
        a = block.bottleneck_adapter
        source = h if placement == "parallel" else block.mlp.fc2(block.mlp.act(block.mlp.fc1(h)))
        adapter_out = 0.5 * (a.up(torch.nn.functional.gelu(a.down(source))))
        mlp_out = block.mlp.fc2(block.mlp.act(block.mlp.fc1(h)))
        torch.testing.assert_close(block.mlp(h), mlp_out + adapter_out)
        assert not torch.allclose(vit(x), original)
    adapters.remove()
    assert list(vit.state_dict()) == keys and torch.equal(vit(x), original)


def test_finetune_vpt_trains_only_the_prompts_and_the_head(
    vit_checkpoint, small_table, synth_dir, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    import fairfm.adapt.vpt as vpt

    initial = []
    original_add = vpt.add_visual_prompts

    def recording_add(*args, **kwargs):
        prompts = original_add(*args, **kwargs)
        initial.append(prompts.prompts.detach().clone())
        return prompts

    monkeypatch.setattr(vpt, "add_visual_prompts", recording_add)
    assert {"vpt", "adapter"} <= set(FINETUNE_USAGES)
    for deep, layers in ((False, 1), (True, 2)):
        encoder = _vit(vit_checkpoint)
        before = _state(encoder.module)
        hp = VptHParams(prompt_length=5, deep=deep, lr=1e-2, **FAST)
        out = finetune("vpt", hp, encoder, small_table, ["disease"], root=synth_dir)
        # definition: num_tokens · dim (· depth for deep) + head
        assert out.meta["trainable_parameters"] == layers * 5 * 32 + 32 + 1
        assert out.meta["num_tokens"] == 5 and out.meta["deep"] is deep
        after = _state(encoder.module)
        assert all(torch.equal(after[k], v) for k, v in before.items())  # backbone bit for bit
        assert set(after) - set(before) == {"vpt_prompts.prompts"}
        assert set(out.fit.trainable) == {"backbone.vpt_prompts.prompts", "head.weight", "head.bias"}
        trained = out.fit.best_state["backbone.vpt_prompts.prompts"]
        assert trained.shape == initial[-1].shape and not torch.equal(trained, initial[-1])  # prompts moved
        probs = out.probabilities["test"]
        assert probs.shape == (12, 1) and np.all((probs > 0) & (probs < 1))
    out.save(tmp_path / "vpt.safetensors")
    assert set(load_file(tmp_path / "vpt.safetensors")) == set(out.fit.best_state)


def test_finetune_adapter_trains_only_adapters_and_the_head(vit_checkpoint, small_table, synth_dir):
    encoder = _vit(vit_checkpoint)
    before = _state(encoder.module)
    hp = AdapterHParams(bottleneck=8, scale=0.1, lr=1e-2, **FAST)
    out = finetune("adapter", hp, encoder, small_table, ["disease"], root=synth_dir)
    assert out.meta["trainable_parameters"] == 2 * (2 * 32 * 8 + 8 + 32) + 32 + 1
    assert out.meta["placement"] == "parallel" and out.meta["bottleneck"] == 8
    after = _state(encoder.module)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    new = set(after) - set(before)
    assert new and all(".bottleneck_adapter." in k for k in new)
    moved = [k for k in new if k.endswith("up.weight") and after[k].abs().sum() > 0]
    assert len(moved) == 2  # the zero-initialised up-projection of both blocks trained


def test_open_clip_native_vit_gets_prompts_and_adapters_in_its_image_tower(clip_dir, small_table, synth_dir):
    encoder = create_model("clip", clip_dir)
    visual = encoder.module.visual
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        original = encoder.image_features(images)
    adapters = add_bottleneck_adapters(visual, 4)
    with torch.no_grad():
        assert torch.equal(encoder.image_features(images), original)
    counted = sum(p.numel() for n, p in visual.named_parameters() if ".bottleneck_adapter." in n)
    assert counted == 2 * (2 * 64 * 4 + 4 + 64)
    adapters.remove()
    prompts = add_visual_prompts(visual, 3, deep=True)
    with torch.no_grad():
        assert not torch.allclose(encoder.image_features(images), original, atol=1e-4)
    assert prompts.seen_lengths == [1 + 16 + 3] * 2  # class token + (64/16)² patches + prompts, per block
    prompts.remove()
    with torch.no_grad():
        assert torch.equal(encoder.image_features(images), original)

    before = _state(encoder.module)
    out = finetune("vpt", VptHParams(prompt_length=3, lr=1e-2, **FAST), encoder, small_table, ["disease"],
                   root=synth_dir)  # fmt: skip
    assert set(out.fit.trainable) == {"backbone.visual.vpt_prompts.prompts", "head.weight", "head.bias"}
    assert out.meta["trainable_parameters"] == 3 * 64 + 64 + 1
    after = _state(encoder.module)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_unsupported_models_and_bad_settings_are_refused_clearly(vit_checkpoint):
    from types import SimpleNamespace

    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    cnn = SimpleNamespace(module=conv, card=SimpleNamespace(name="cnn"))
    for usage, hp in (("vpt", VptHParams()), ("adapter", AdapterHParams())):
        with pytest.raises(InputError, match="model 'cnn' .*Vision Transformers of timm, open_clip, transformers"):
            apply_usage(usage, cnn, hp)
    with pytest.raises(InputError, match="lack 'prompt_length'"):
        apply_usage("vpt", _vit(vit_checkpoint), LoraHParams())
    vit = _tiny_timm()
    with pytest.raises(InputError, match="placement 'middle'"):
        add_bottleneck_adapters(vit, 4, placement="middle")
    add_visual_prompts(vit, 2)
    with pytest.raises(InputError, match="already has visual prompts"):
        add_visual_prompts(vit, 2)


# ------------------------------------------------------------------ transformers, Swin and SAM towers

HF_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
    patch_size=16,
)  # fmt: skip


def _tower(family: str):
    """A tiny random tower of ``family`` in eval mode and its input size."""
    import transformers
    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(5)
    spec = {
        "clip": (transformers.CLIPVisionModel, transformers.CLIPVisionConfig),
        "siglip": (transformers.SiglipVisionModel, transformers.SiglipVisionConfig),
        "dinov2": (transformers.Dinov2Model, transformers.Dinov2Config),
        "blip": (transformers.BlipVisionModel, transformers.BlipVisionConfig),
        "blip2": (transformers.Blip2VisionModel, transformers.Blip2VisionConfig),
    }
    if family in spec:
        model_cls, config_cls = spec[family]
        extra = {"initializer_range": 0.02} if family.startswith("blip") else {}  # BLIP's default is 1e-10
        return model_cls(config_cls(**HF_VISION, **extra)).eval(), 32
    if family == "swin":
        config = transformers.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=2,
            drop_path_rate=0.0,  # the config's default 0.1 would make training mode random before ours
        )
        return transformers.SwinModel(config).eval(), 32
    if family == "open_clip":
        import open_clip

        from tests.models.model_fixtures import TINY_OPEN_CLIP

        return open_clip.CLIP(**TINY_OPEN_CLIP).visual.eval(), 64
    if family == "timm":
        return _tiny_timm(), 32
    if family == "open_clip_rn":
        from open_clip.modified_resnet import ModifiedResNet

        resnet = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=32, width=8)
        for name, parameter in resnet.named_parameters():
            if name.endswith("bn3.weight"):  # open_clip zero-initialises the residual branch's last BN
                torch.nn.init.normal_(parameter)
        return resnet.eval(), 32
    encoder = ImageEncoderViT(
        img_size=64, patch_size=16, embed_dim=16, depth=2, num_heads=2, window_size=2,
        global_attn_indexes=(1,), out_chans=8, use_rel_pos=True,
    )  # fmt: skip
    return encoder.eval(), 64


def _run(module, x):
    out = module(pixel_values=x) if type(module).__module__.startswith("transformers") else module(x)
    return getattr(out, "last_hidden_state", out)


TOWERS = ["clip", "siglip", "dinov2", "blip", "blip2", "swin", "sam"]
ADAPTER_DIMS = {"swin": [16, 32], "sam": [16, 16]}  # per-block width; 32 for the ViT-like towers


@pytest.mark.parametrize("family", TOWERS)
def test_adapters_on_other_towers_start_frozen_count_and_remove_cleanly(family):
    tower, size = _tower(family)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(6))
    keys = list(tower.state_dict())
    with torch.no_grad():
        original = _run(tower, x)
    adapters = add_bottleneck_adapters(tower, 4, scale=0.5)
    with torch.no_grad():
        assert torch.equal(_run(tower, x), original)  # zero-initialised up-projection: the frozen model
    counted = sum(p.numel() for n, p in tower.named_parameters() if ".bottleneck_adapter." in n)
    assert counted == sum(2 * d * 4 + 4 + d for d in ADAPTER_DIMS.get(family, [32, 32]))
    with torch.no_grad():
        for block in adapters.blocks:
            torch.nn.init.normal_(block.bottleneck_adapter.up.weight)
        assert not torch.allclose(_run(tower, x), original, atol=1e-4)
    adapters.remove()
    with torch.no_grad():
        assert list(tower.state_dict()) == keys and torch.equal(_run(tower, x), original)


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("family", ["clip", "siglip", "dinov2", "blip", "blip2"])
def test_vpt_on_transformers_towers_matches_a_hand_written_forward(family, deep):
    from fairfm.adapt.vpt import find_vit

    tower, size = _tower(family)
    layout = find_vit(tower)
    blocks = list(layout.blocks)
    prefix = {"siglip": 0}.get(family, 1)  # SigLIP has no class token
    assert layout.prefix == prefix
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    seen: dict[str, object] = {}
    # registered before the prompts: sees the un-prompted embeddings and the block's other arguments
    first = blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("input", args))
    with torch.no_grad():
        original = _run(tower, x)
    seen.clear()
    prompts = add_visual_prompts(tower, 3, deep=deep)
    last = blocks[-1].register_forward_hook(lambda m, args, out: seen.__setitem__("output", out))
    with torch.no_grad():
        got = _run(tower, x)
    assert prompts.seen_lengths == [prefix + 4 + 3] * 2  # (32 / 16)² patches + prompts, in each block
    tokens, *rest = seen["input"]
    values = prompts.prompts.detach()
    first.remove(), last.remove()
    prompts.remove()
    with torch.no_grad():  # Jia et al. written out with the restored, hook-free blocks
        p, n = prefix, 3
        for i, block in enumerate(blocks):
            if i < values.shape[0]:
                tail = tokens[:, p:] if i == 0 else tokens[:, p + n :]
                tokens = torch.cat([tokens[:, :p], values[i].expand(2, -1, -1), tail], dim=1)
            tokens = block(tokens, *rest)
        expected = torch.cat([tokens[:, :p], tokens[:, p + n :]], dim=1)
        torch.testing.assert_close(seen["output"], expected, rtol=0, atol=1e-6)
        assert not torch.allclose(got, original, atol=1e-4)
        assert torch.equal(_run(tower, x), original)  # removal restores the model bit for bit


@pytest.mark.parametrize("family", ["swin", "sam"])
def test_vpt_is_refused_on_windowed_grid_towers(family):
    tower, _ = _tower(family)
    with pytest.raises(InputError, match="VPT cannot be applied to .*a prompt token has no position"):
        add_visual_prompts(tower, 2)
    assert not hasattr(tower, "vpt_prompts")


# ------------------------------------------------------------------ drop path

ALL_TOWERS = ["timm", "open_clip", "open_clip_rn", *TOWERS]


def test_drop_path_schedule_is_timms_linspace_in_timms_own_modules():
    from timm.layers import DropPath

    from fairfm.adapt.vpt import add_drop_path, drop_path_rates

    built = _tiny_timm(drop_path_rate=0.3, depth=4)  # timm's constructor: linspace(0, 0.3, 4)
    native = [[b.drop_path1.drop_prob if isinstance(b.drop_path1, DropPath) else 0.0] for b in built.blocks]
    assert drop_path_rates(0.3, 4) == pytest.approx([r for (r,) in native])
    vit = _tiny_timm(depth=4)
    handle = add_drop_path(vit, 0.3)
    assert handle.mechanism == "library modules"
    for block, (rate,) in zip(vit.blocks, native):
        for module in (block.drop_path1, block.drop_path2):
            assert (module.drop_prob if isinstance(module, DropPath) else 0.0) == pytest.approx(rate)
            assert module.training is False  # follows the model's mode
    handle.remove()
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for b in vit.blocks)


@pytest.mark.parametrize("family", ALL_TOWERS)
def test_drop_path_leaves_eval_outputs_bit_for_bit_and_is_removable(family):
    from fairfm.adapt.vpt import add_drop_path

    tower, size = _tower(family)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        original = _run(tower, x)
        handle = add_drop_path(tower, 0.5)
        assert torch.equal(_run(tower, x), original)  # eval mode: untouched
        handle.remove()
        tower.train()
        train_original = _run(tower, x)  # the tiny towers have no dropout: train mode is deterministic
        handle = add_drop_path(tower, 0.5)
        torch.manual_seed(0)
        assert not torch.equal(_run(tower, x), train_original)  # active in training
        handle.remove()
        assert torch.equal(_run(tower, x), train_original)  # removed: the original model


@pytest.mark.parametrize("family", ["open_clip", "open_clip_rn", "clip", "siglip", "dinov2", "blip", "swin", "sam"])
def test_drop_path_drops_whole_samples_at_the_rate_and_rescales_survivors(family):
    """Every branch of the last block (rate 0.6): the ratio of the branch output with and without drop path
    is, per sample, 0 (with probability 0.6) or 1/(1 − 0.6)."""
    from fairfm.adapt.vpt import add_drop_path, find_vit

    tower, size = _tower(family)
    layout = find_vit(tower)
    branches = layout.branches[-1]
    raw: list[list[torch.Tensor]] = [[] for _ in branches]
    scaled: list[list[torch.Tensor]] = [[] for _ in branches]

    def tensor(output, branch):
        return output if branch.index is None else output[branch.index]

    def keep(store, branch):
        return lambda m, args, out: store.append(tensor(out, branch).detach().clone())  # RN adds in place

    for i, branch in enumerate(branches):  # before drop path: the raw branch output
        if branch.attribute is None:
            branch.module.register_forward_hook(keep(raw[i], branch))
    add_drop_path(tower, 0.6)
    for i, branch in enumerate(branches):
        if branch.attribute is None:  # after drop path: the scaled one
            branch.module.register_forward_hook(keep(scaled[i], branch))
        else:  # the library's module: its input is the branch, its output the dropped branch

            def both(module, args, out, i=i):
                raw[i].append(args[0].detach().clone())
                scaled[i].append(out.detach().clone())

            getattr(branch.module, branch.attribute).register_forward_hook(both)
    batch = 300
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(9))
    tower.train()
    torch.manual_seed(1)
    with torch.no_grad():
        _run(tower, x)
    pairs = [pair for calls in zip(raw, scaled) for pair in zip(*calls)]  # DINOv2: one module, two calls
    assert len(pairs) == (1 if family == "open_clip_rn" else 2)  # attention and MLP; a Bottleneck's one
    for before, after in pairs:
        ratio = (after / before).reshape(batch, -1)  # windowed SAM attention: (batch·windows, …) in order
        per_sample = ratio[:, :1]
        assert torch.allclose(ratio, per_sample.expand_as(ratio), atol=1e-4)  # one draw per sample
        dropped = per_sample.squeeze(1) == 0
        assert torch.allclose(per_sample[~dropped], torch.full_like(per_sample[~dropped], 1 / 0.4), atol=1e-4)
        # Binomial(300, 0.6): mean 180, sd 8.5 → within 4 sd
        assert abs(int(dropped.sum()) - 180) < 34


def test_rate_zero_switches_off_the_drop_path_a_config_built_in():
    import transformers

    from fairfm.adapt.vpt import add_drop_path

    torch.manual_seed(0)
    config = transformers.SwinConfig(  # drop_path_rate defaults to 0.1 (MedCLIP's Swin keeps that default)
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=2
    )
    tower = transformers.SwinModel(config).train()
    built = tower.encoder.layers[1].blocks[0].drop_path
    assert type(built).__name__ == "SwinDropPath" and built.drop_prob > 0
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    with torch.no_grad():
        assert not torch.equal(_run(tower, x), _run(tower, x))  # the config's drop path is active
    handle = add_drop_path(tower, 0.0)
    with torch.no_grad():
        assert torch.equal(_run(tower, x), _run(tower, x))  # nothing random left in training mode
    handle.remove()
    assert tower.encoder.layers[1].blocks[0].drop_path is built
