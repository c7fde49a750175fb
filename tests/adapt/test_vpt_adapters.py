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
        with pytest.raises(InputError, match="model 'cnn' .*Vision Transformers of timm and open_clip only"):
            apply_usage(usage, cnn, hp)
    with pytest.raises(InputError, match="lack 'prompt_length'"):
        apply_usage("vpt", _vit(vit_checkpoint), LoraHParams())
    vit = _tiny_timm()
    with pytest.raises(InputError, match="placement 'middle'"):
        add_bottleneck_adapters(vit, 4, placement="middle")
    add_visual_prompts(vit, 2)
    with pytest.raises(InputError, match="already has visual prompts"):
        add_visual_prompts(vit, 2)
