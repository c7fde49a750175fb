"""LoRA / BitFit / full fine-tuning on tiny random-weight models of the real architectures (timm ViT,
open_clip ViT), loaded through ``create_model`` like a user's checkpoint: trainable sets, what training
changes,
outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fairfm.adapt.peft_usages import (
    apply_usage,
    default_lora_targets,
    finetune,
    image_tower,
    model_overrides,
)
from fairfm.errors import InputError
from fairfm.models import create_model
from fairfm.spec import BitFitHParams, FullFinetuneHParams, LoraHParams
from tests.models.model_fixtures import TINY_VIT

FAST = {"epochs": 2, "batch_size": 32, "warmup_epochs": 0, "early_stopping_patience": None}


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    import timm

    torch.manual_seed(1)
    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT)
    path = tmp_path_factory.mktemp("vit") / "vit-b_CXR_0.5M_mae.pth"
    torch.save({"model": source.state_dict()}, path)  # Medical MAE's release layout
    return path


def _vit(vit_checkpoint):
    return create_model("medmae", checkpoint=vit_checkpoint, **TINY_VIT)


@pytest.fixture(scope="module")
def small_table(synth_dir):
    table = pd.read_parquet(synth_dir / "samples.parquet")
    # a few rows per split keeps every fine-tuning test to about a second
    return pd.concat([table[table.split == s].head(n) for s, n in (("train", 32), ("val", 16), ("test", 12))])


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_lora_on_timm_vit_trains_only_lora_matrices(vit_checkpoint, small_table, synth_dir):
    encoder = _vit(vit_checkpoint)
    assert default_lora_targets(encoder) == ["qkv"]
    # Oracle from the definition: r·(in + out) per adapted qkv Linear, computed on the un-adapted model.
    rank = 4
    expected = sum(
        rank * (m.in_features + m.out_features)
        for n, m in encoder.module.named_modules()
        if n.endswith("attn.qkv")
    )
    base = _state(encoder.module)
    hp = LoraHParams(rank=rank, alpha=8, lr=1e-2, **FAST)
    out = finetune("lora", hp, encoder, small_table, ["disease"], root=synth_dir, seed=0)
    trained = [n for n in out.fit.trainable if not n.startswith("head.")]
    assert trained and all("lora_" in n and ".attn.qkv." in n for n in trained)
    head = encoder.embed_dim + 1
    assert out.meta["trainable_parameters"] == expected + head
    after = _state(encoder.module)
    # peft keeps the frozen weight as base_layer.*: every original tensor is unchanged bit for bit
    for name, value in base.items():
        key = (
            name.replace("attn.qkv.", "attn.qkv.base_layer.")
            if name.endswith(("qkv.weight", "qkv.bias"))
            else name
        )
        assert torch.equal(after[key], value), name
    lora_changed = {
        k for k in after if "lora_" in k and not torch.equal(after[k], torch.zeros_like(after[k]))
    }
    assert any("lora_B" in k for k in lora_changed)  # B starts at zero: it moved, so the adapter trained
    assert out.meta["lora_targets"] == ["qkv"] and out.meta["rank"] == rank


def test_bitfit_trains_only_biases_and_head(vit_checkpoint, small_table, synth_dir):
    encoder = _vit(vit_checkpoint)
    biases = {n for n, _ in encoder.module.named_parameters() if n.endswith(".bias")}
    expected = (
        sum(p.numel() for n, p in encoder.module.named_parameters() if n in biases) + encoder.embed_dim + 1
    )
    before = _state(encoder.module)
    out = finetune(
        "bitfit", BitFitHParams(lr=1e-2, **FAST), encoder, small_table, ["disease"], root=synth_dir
    )
    assert out.meta["trainable_parameters"] == expected
    changed = _changed(before, _state(encoder.module))
    assert changed and changed <= biases
    assert set(out.fit.best_state) == {f"backbone.{b}" for b in biases} | {"head.weight", "head.bias"}


def test_predictions_are_probabilities_for_val_and_test(vit_checkpoint, small_table, synth_dir, tmp_path):
    from safetensors.torch import load_file

    encoder = _vit(vit_checkpoint)
    out = finetune("bitfit", BitFitHParams(**FAST), encoder, small_table, ["disease"], root=synth_dir)
    for split in ("val", "test"):
        n = int((small_table.split == split).sum())
        probs = out.probabilities[split]
        assert probs.shape == (n, 1) and np.all((probs > 0) & (probs < 1))
    assert not np.allclose(out.probabilities["test"], out.probabilities["test"][0])
    assert out.meta["training"]["epochs_run"] == 2
    out.save(tmp_path / "bitfit.safetensors")
    assert set(load_file(tmp_path / "bitfit.safetensors")) == set(out.fit.best_state)


def test_full_finetune_of_timm_vit_with_layer_decay_and_randaugment(vit_checkpoint, small_table, synth_dir):
    hp = FullFinetuneHParams(lr=1e-3, lr_scaling="none", **FAST)
    assert model_overrides("full_finetune", hp, "timm") == {"drop_path_rate": 0.2}
    assert model_overrides("lora", hp, "timm") == {}
    encoder = create_model(
        "medmae", checkpoint=vit_checkpoint, **TINY_VIT, **model_overrides("full_finetune", hp, "timm")
    )
    before = _state(encoder.module)
    out = finetune("full_finetune", hp, encoder, small_table, ["disease"], root=synth_dir)
    total = sum(p.numel() for p in encoder.module.parameters())
    assert out.meta["trainable_parameters"] == total + encoder.embed_dim + 1
    assert _changed(before, _state(encoder.module)) == set(before)
    assert out.meta["training"]["layer_decay"] == 0.55 and out.meta["randaugment"] == "rand-m6-mstd0.5-inc1"


def test_lora_on_open_clip_vit_adapts_attention_of_the_image_tower_only(clip_dir, small_table, synth_dir):
    encoder = create_model("clip", clip_dir)  # a fresh model: the shared fixture stays un-adapted
    tower, prefix = image_tower(encoder)
    assert prefix == "visual." and tower is encoder.module.visual
    assert default_lora_targets(encoder) == ["attn"]
    before = _state(encoder.module)
    out = finetune(
        "lora",
        LoraHParams(rank=2, alpha=4, lr=1e-2, **FAST),
        encoder,
        small_table,
        ["disease"],
        root=synth_dir,
    )
    trained = [n for n in out.fit.trainable if not n.startswith("head.")]
    assert trained and all(
        n.startswith("backbone.visual.") and "lora_" in n and ".attn." in n for n in trained
    )
    # Oracle: peft's MHA-LoRA adapts the fused in-projection (3·width outputs) and out_proj of every block.
    width, layers, rank = 64, 2, 2
    assert (
        out.meta["trainable_parameters"] == layers * rank * ((width + 3 * width) + (width + width)) + 64 + 1
    )
    after = _state(encoder.module)
    text = [k for k in before if not k.startswith("visual.")]
    assert text and all(torch.equal(before[k], after[k]) for k in text)
    moved = [k for k in after if "lora_B" in k and after[k].abs().sum() > 0]
    assert len(moved) == 2 * layers  # every adapter (in-projection and out_proj of each block) trained
    assert out.probabilities["test"].shape == ((small_table.split == "test").sum(), 1)


def test_full_finetune_of_open_clip_trains_the_image_tower_not_the_text_tower(
    clip_dir, small_table, synth_dir
):
    encoder = create_model("clip", clip_dir)
    before = _state(encoder.module)
    hp = FullFinetuneHParams(layer_decay=1.0, randaugment=None, lr=1e-3, lr_scaling="none", **FAST)
    finetune("full_finetune", hp, encoder, small_table, ["disease"], root=synth_dir)
    changed = _changed(before, _state(encoder.module))
    assert changed == {
        k
        for k, v in encoder.module.visual.state_dict().items()
        if v.dtype.is_floating_point
        for k in [f"visual.{k}"]
    }
    # Khan et al.'s full recipe (layer decay 0.55, drop path 0.2) on the native open_clip ViT: blocks numbered
    # 1..2 under the embeddings (0) and the final norm / projection (3), drop path by hooks on ls_1 / ls_2
    out = finetune(
        "full_finetune",
        FullFinetuneHParams(randaugment=None, **FAST),
        create_model("clip", clip_dir),
        small_table,
        ["disease"],
        root=synth_dir,
    )
    assert out.meta["layer_decay_top_layer"] == 3 and out.meta["training"]["layer_decay"] == 0.55
    assert out.meta["drop_path"] == {
        "rate": 0.2, "applied": True, "mechanism": "hooks", "block_rates": [0.0, 0.2]
    }  # fmt: skip


def test_bad_usage_targets_and_splits_are_refused_clearly(vit_checkpoint, small_table, synth_dir):
    encoder = _vit(vit_checkpoint)
    with pytest.raises(InputError, match="not one of"):
        apply_usage("vpt", encoder, LoraHParams())
    with pytest.raises(InputError, match=r"LoRA targets \['q_proj'\].*qkv"):
        apply_usage("lora", encoder, LoraHParams(targets=["q_proj"]))
    no_test = small_table[small_table.split != "test"]
    with pytest.raises(InputError, match="'test' has no rows"):
        finetune("bitfit", BitFitHParams(**FAST), _vit(vit_checkpoint), no_test, ["disease"], root=synth_dir)


def test_finetune_passes_group_codes_and_hooks_to_the_loop(vit_checkpoint, small_table, synth_dir):
    from fairfm.adapt.train import masked_bce, mean_known

    seen = []

    def wrapper(logits, targets, groups):
        seen.append(groups.clone())
        return mean_known(masked_bce(logits, targets), targets)

    class InOrder(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(range(32))

        def __len__(self):
            return 32

    hp = BitFitHParams(**{**FAST, "epochs": 1})
    finetune("bitfit", hp, _vit(vit_checkpoint), small_table, ["disease"], root=synth_dir,
             group_column="group_sex", loss_wrapper=wrapper, sampler=InOrder())  # fmt: skip
    train_groups = small_table[small_table.split == "train"]["group_sex"].astype(str).tolist()
    names = sorted(set(small_table["group_sex"].astype(str)))
    assert [names[g] for g in torch.cat(seen).tolist()] == train_groups


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    """A tiny transformers CLIPModel (64-px vision tower, 2 layers each) saved as PubMedCLIP's folder."""
    import transformers

    from tests.models.model_fixtures import WORDS, word_tokenizer

    folder = tmp_path_factory.mktemp("hf_clip")
    torch.manual_seed(0)
    size = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    ids = {"pad_token_id": 0, "bos_token_id": WORDS.index("<|startoftext|>")}
    ids["eos_token_id"] = WORDS.index("<|endoftext|>")
    text = {**size, **ids, "vocab_size": 32, "max_position_embeddings": 16}
    vision = {**size, "image_size": 64, "patch_size": 16}
    model = transformers.CLIPModel(
        transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    )
    model.save_pretrained(str(folder))
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    )
    processor.save_pretrained(str(folder))
    word_tokenizer(folder, cls="<|startoftext|>", sep="<|endoftext|>")
    return folder


def test_transformers_clip_lora_and_full_finetune_stay_on_the_image_path(hf_clip_dir, small_table, synth_dir):
    encoder = create_model("pubmedclip", checkpoint=hf_clip_dir)
    assert image_tower(encoder)[1] == "vision_model." and default_lora_targets(encoder) == [
        "q_proj",
        "v_proj",
    ]
    out = finetune(
        "lora", LoraHParams(rank=2, alpha=4, **FAST), encoder, small_table, ["disease"], root=synth_dir
    )
    trained = [n for n in out.fit.trainable if not n.startswith("head.")]
    assert trained and all(n.startswith("backbone.vision_model.") and "lora_" in n for n in trained)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained} == {"q_proj", "v_proj"}
    # Oracle: r·(in + out) for q_proj and v_proj (32 → 32) in 2 layers, + head (16 + 1)
    assert out.meta["trainable_parameters"] == 2 * 2 * 2 * (32 + 32) + 17

    encoder = create_model("pubmedclip", checkpoint=hf_clip_dir)
    before = _state(encoder.module)
    hp = FullFinetuneHParams(layer_decay=1.0, randaugment=None, lr=1e-3, lr_scaling="none", **FAST)
    finetune("full_finetune", hp, encoder, small_table, ["disease"], root=synth_dir)
    changed = _changed(before, _state(encoder.module))
    assert any(k.startswith("visual_projection.") for k in changed)  # the projection is on the image path
    assert changed and all(k.startswith(("vision_model.", "visual_projection.")) for k in changed)
    assert not any(k.startswith(("text_model.", "text_projection.", "logit_scale")) for k in changed)
