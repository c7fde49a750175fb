"""Full fine-tuning (layer-wise lr decay, drop path), VPT and adapters end to end on every model family of the
zoo beyond timm: tiny random-weight checkpoints in each library's own layout, loaded with ``create_model`` and
fine-tuned for one epoch through :func:`fairfm.adapt.peft_usages.finetune`. Layer numbering is checked against
an independent per-family reading of the parameter names, and timm's against timm's own grouping."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

from fairfm.adapt import train as train_module
from fairfm.adapt.peft_usages import finetune, layer_ids
from fairfm.errors import InputError
from fairfm.models import create_model
from fairfm.spec import AdapterHParams, FullFinetuneHParams, VptHParams
from tests.models.model_fixtures import TINY_SAM, word_tokenizer

FAST = {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "early_stopping_patience": None, "select_by": "last"}
SIZE = 32  # input size of every tiny model: the synthetic images are 32 px
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
    patch_size=16, initializer_range=0.02,
)  # fmt: skip
TEXT = dict(
    vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    max_position_embeddings=40,
)  # fmt: skip
SAM_SMALL = {k: TINY_SAM[k] for k in ("embed_dim", "depth", "num_heads", "global_attn", "window_size")}


def _processor(folder, cls=transformers.BlipImageProcessor):
    cls(size={"height": SIZE, "width": SIZE}, do_center_crop=False).save_pretrained(str(folder))


def _pubmedclip(folder):
    from tests.models.model_fixtures import WORDS

    ids = {"pad_token_id": 0, "bos_token_id": WORDS.index("<|startoftext|>")}
    ids["eos_token_id"] = WORDS.index("<|endoftext|>")
    config = transformers.CLIPConfig(text_config={**TEXT, **ids}, vision_config=VISION, projection_dim=16)
    transformers.CLIPModel(config).save_pretrained(str(folder))
    _processor(folder)
    word_tokenizer(folder, cls="<|startoftext|>", sep="<|endoftext|>")
    return {}


def _siglip(folder):
    config = transformers.SiglipConfig(text_config={**TEXT, "pad_token_id": 0}, vision_config=VISION)
    transformers.SiglipModel(config).save_pretrained(str(folder))
    _processor(folder)
    word_tokenizer(folder)
    return {}


def _rad_dino(folder):
    vision = {k: v for k, v in VISION.items() if k != "initializer_range"}
    transformers.Dinov2Model(transformers.Dinov2Config(**vision)).save_pretrained(str(folder))
    _processor(folder)
    return {}


def _blip(folder):
    config = transformers.BlipConfig(
        text_config=dict(TEXT, encoder_hidden_size=32), vision_config=VISION, image_text_hidden_size=16
    )
    transformers.BlipForImageTextRetrieval(config).save_pretrained(str(folder))
    _processor(folder)
    word_tokenizer(folder)
    return {}


def _blip2(folder):
    qformer = dict(TEXT, encoder_hidden_size=32, use_qformer_text_input=True)
    config = transformers.Blip2Config(
        vision_config=VISION, qformer_config=qformer, num_query_tokens=4, image_text_hidden_size=16
    )
    transformers.Blip2ForImageTextRetrieval(config).save_pretrained(str(folder))
    _processor(folder)
    word_tokenizer(folder)
    return {}


def _medclip(folder):
    # MedCLIP's card fixes 224-px input: patch 16 and window 7 keep the Swin small (14² then 7² tokens)
    swin_config = transformers.SwinConfig(
        image_size=224, patch_size=16, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=7
    )
    bert_config = transformers.BertConfig(**TEXT)
    swin, bert = transformers.SwinModel(swin_config), transformers.BertModel(bert_config)
    state = {f"vision_model.model.{k}": v for k, v in swin.state_dict().items()}
    state.update({f"text_model.model.{k}": v for k, v in bert.state_dict().items()})
    state["vision_model.projection_head.weight"] = torch.randn(512, 32) * 0.02
    state["text_model.projection_head.weight"] = torch.randn(512, 32) * 0.02
    state["logit_scale"] = torch.tensor(2.0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "pytorch_model.bin")
    swin_config.save_pretrained(str(folder / "swin"))
    bert_config.save_pretrained(str(folder / "bert"))
    word_tokenizer(folder / "bert")
    return {}


def _lvm_med_vit(folder):
    from fairfm.models.sam_family import build_sam_modules

    module = build_sam_modules(
        variant="vit_b", encoder_only=True, use_abs_pos=False, img_size=SIZE * 2, prompt_dim=32, **SAM_SMALL
    )
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({f"model.{k}": v for k, v in module.state_dict().items()}, folder / "lvmmed_vit.pth")
    return {"img_size": SIZE * 2, "prompt_dim": 32, **SAM_SMALL}


def _clip_rn(folder):
    import open_clip

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": SIZE, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(open_clip.CLIP(**cfg).state_dict(), folder / "open_clip_pytorch_model.bin")
    return {}


def _biomedclip(folder):
    # BiomedCLIP's layout: a timm ViT trunk + linear projection (timm's 6-block ``test_vit`` here) and, as
    # MODELS.md §8 builds it offline, a native text tower
    import open_clip

    cfg = {  # not BiomedCLIP's 512: the embedding width must come from the tower's projection, not the card
        "embed_dim": 48,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": SIZE},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(open_clip.CLIP(**cfg).state_dict(), folder / "open_clip_pytorch_model.bin")
    return {}


BUILDERS = {
    "biomedclip": _biomedclip,
    "pubmedclip": _pubmedclip,
    "siglip": _siglip,
    "rad_dino": _rad_dino,
    "blip": _blip,
    "blip2": _blip2,
    "medclip": _medclip,
    "lvm_med_vit": _lvm_med_vit,
    "clip_rn50": _clip_rn,
}
CHECKPOINT = {"lvm_med_vit": "lvmmed_vit.pth"}

# Independent reading of each family's parameter names: (stem regex, block regex -> block number, top layer).
# Blocks are numbered from 1 in execution order; a Swin patch merging belongs to the block it feeds.
LAYOUT = {
    "biomedclip": (r"visual\.trunk\.(cls_token|pos_embed|patch_embed)", r"visual\.trunk\.blocks\.(\d+)\.", 7),
    "pubmedclip": (r"vision_model\.(embeddings|pre_layrnorm)\.", r"vision_model\.encoder\.layers\.(\d+)\.", 3),
    "siglip": (r"vision_model\.embeddings\.", r"vision_model\.encoder\.layers\.(\d+)\.", 3),
    "rad_dino": (r"embeddings\.", r"encoder\.layer\.(\d+)\.", 3),
    "blip": (r"vision_model\.embeddings\.", r"vision_model\.encoder\.layers\.(\d+)\.", 3),
    "blip2": (r"vision_model\.embeddings\.", r"vision_model\.encoder\.layers\.(\d+)\.", 3),
    "medclip": (
        r"vision_model\.model\.embeddings\.",
        r"vision_model\.model\.encoder\.layers\.(\d+)\.(blocks\.0|downsample)\.",
        3,
    ),
    "lvm_med_vit": (r"(patch_embed\.|pos_embed$)", r"blocks\.(\d+)\.", 3),
    "clip_rn50": (r"visual\.(conv|bn)[123]\.", r"visual\.layer(\d)\.0\.", 5),
}


def _expected_layer(family: str, name: str) -> int:
    stem, block, top = LAYOUT[family]
    match = re.match(block, name)
    if match:
        number = int(match.group(1))
        if family == "medclip":  # one block per stage: stage s is block s+1, its downsample feeds block s+2
            return number + 1 + (match.group(2) == "downsample")
        return number if family == "clip_rn50" else number + 1
    return 0 if re.match(stem, name) else top


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folders = {}
    for name, build in BUILDERS.items():
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(name) / name
        folder.mkdir()
        options = build(folder)
        folders[name] = (folder / CHECKPOINT[name] if name in CHECKPOINT else folder, options)
    return folders


def _encoder(checkpoints, name):
    path, options = checkpoints[name]
    return create_model(name, checkpoint=path, **options)


@pytest.fixture(scope="module")
def table(synth_dir):
    frame = pd.read_parquet(synth_dir / "samples.parquet")
    # one step per epoch; 'last' selection (FAST) needs no two-class validation split
    parts = [frame[frame.split == s].head(n) for s, n in (("train", 8), ("val", 4), ("test", 4))]
    return pd.concat(parts)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _spy_groups(monkeypatch):
    """Capture the optimiser's parameter groups of the next fit."""
    seen = []
    original = train_module._optimizer

    def spy(hp, groups, lr):
        seen.append(groups)
        return original(hp, groups, lr)

    monkeypatch.setattr(train_module, "_optimizer", spy)
    return seen


@pytest.mark.parametrize("family", list(LAYOUT))
def test_layer_numbering_of_every_family_follows_its_block_order(checkpoints, family):
    encoder = _encoder(checkpoints, family)
    numbering = layer_ids(encoder)
    top = LAYOUT[family][2]
    assert numbering.top == top
    named = [n for n, _ in encoder.module.named_parameters()]
    for name in named:
        assert numbering(name) == _expected_layer(family, name), name
    assert {numbering(n) for n in named} == set(range(top + 1))  # every layer is used
    # scales: embeddings smallest (decay^top), the head (any name outside the model) exactly 1
    assert numbering.scale("head.weight", 0.55) == 1.0
    stem = [n for n in named if numbering(n) == 0]
    assert stem and all(numbering.scale(n, 0.55) == pytest.approx(0.55**top) for n in stem)


@pytest.mark.parametrize(
    "family, mechanism",
    [("biomedclip", "library modules"), ("pubmedclip", "hooks"), ("siglip", "hooks"), ("rad_dino", "library modules"), ("blip", "hooks"),
     ("blip2", "hooks"), ("medclip", "hooks + library modules"), ("lvm_med_vit", "hooks"), ("clip_rn50", "hooks")],
)  # fmt: skip
def test_full_finetune_uses_layer_decay_and_drop_path_for_every_family(
    checkpoints, table, synth_dir, monkeypatch, family, mechanism
):
    encoder = _encoder(checkpoints, family)
    before = _state(encoder.module)
    names = {id(p): f"backbone.{n}" for n, p in encoder.module.named_parameters()}
    groups = _spy_groups(monkeypatch)
    hp = FullFinetuneHParams(randaugment=None, lr=1e-3, lr_scaling="none", **FAST)
    out = finetune("full_finetune", hp, encoder, table, ["disease"], root=synth_dir)
    top = LAYOUT[family][2]
    scales = {}
    for group in groups[0]:
        for p in group["params"]:
            scales[names.get(id(p), "head")] = group["lr_scale"]
    assert scales["head"] == 1.0
    trained = [n for n in scales if n != "head"]
    assert trained
    for name in trained:  # every trained parameter at decay^(top − its layer), read from its name
        expected = 0.55 ** (top - _expected_layer(family, name[len("backbone.") :]))
        assert scales[name] == pytest.approx(expected), name
    assert min(scales.values()) == pytest.approx(0.55**top)  # the embeddings train slowest
    assert out.meta["layer_decay_top_layer"] == top
    drop = out.meta["drop_path"]
    assert drop["applied"] and drop["mechanism"] == mechanism
    assert drop["block_rates"] == pytest.approx(list(np.linspace(0, 0.2, top - 1)), abs=1e-6)  # per block
    parameters = dict(encoder.module.named_parameters())
    changed = {k for k, v in _state(encoder.module).items() if k in parameters and not torch.equal(v, before[k])}
    assert changed and all(f"backbone.{k}" in scales for k in changed)  # only optimised weights moved
    assert out.probabilities["test"].shape == (4, 1)


VPT_FAMILIES = {"pubmedclip": 32, "siglip": 32, "rad_dino": 32, "blip": 32, "blip2": 32, "biomedclip": 64}  # width
BLOCKS = {"biomedclip": 6}  # 2 elsewhere
HEAD = {"biomedclip": 48, "pubmedclip": 16, "siglip": 32, "rad_dino": 32, "blip": 16, "blip2": 64, "medclip": 512,
        "lvm_med_vit": 32}  # fmt: skip


@pytest.mark.parametrize("family", list(VPT_FAMILIES))
def test_deep_vpt_on_transformers_towers_trains_only_prompts_and_head(checkpoints, table, synth_dir, family):
    encoder = _encoder(checkpoints, family)
    before = _state(encoder.module)
    hp = VptHParams(prompt_length=3, deep=True, lr=1e-2, **FAST)
    out = finetune("vpt", hp, encoder, table, ["disease"], root=synth_dir)
    # definition: blocks · num_tokens · width + head (embed_dim + 1)
    assert out.meta["trainable_parameters"] == BLOCKS.get(family, 2) * 3 * VPT_FAMILIES[family] + HEAD[family] + 1
    after = _state(encoder.module)
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the checkpoint's weights, bit for bit
    (prompt_key,) = set(after) - set(before)
    assert prompt_key.endswith("vpt_prompts.prompts")
    assert set(out.fit.trainable) == {f"backbone.{prompt_key}", "head.weight", "head.bias"}


ADAPTER_WIDTHS = {**{k: [32, 32] for k in VPT_FAMILIES}, "biomedclip": [64] * 6, "medclip": [16, 32],
                  "lvm_med_vit": [32, 32]}  # fmt: skip


@pytest.mark.parametrize("family", list(ADAPTER_WIDTHS))
def test_adapters_on_every_transformer_family_train_only_adapters_and_head(
    checkpoints, table, synth_dir, family
):
    encoder = _encoder(checkpoints, family)
    before = _state(encoder.module)
    hp = AdapterHParams(bottleneck=4, scale=0.5, lr=1e-2, **FAST)
    out = finetune("adapter", hp, encoder, table, ["disease"], root=synth_dir)
    expected = sum(2 * d * 4 + 4 + d for d in ADAPTER_WIDTHS[family]) + HEAD[family] + 1
    assert out.meta["trainable_parameters"] == expected
    after = _state(encoder.module)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    new = set(after) - set(before)
    assert new and all(".bottleneck_adapter." in k for k in new)
    assert any(k.endswith("up.weight") and after[k].abs().sum() > 0 for k in new)  # zero-init up moved


@pytest.mark.parametrize("family", ["medclip", "lvm_med_vit", "clip_rn50"])
def test_vpt_is_refused_for_windowed_towers_and_cnns_with_the_reason(checkpoints, table, synth_dir, family):
    with pytest.raises(InputError, match="VPT cannot be applied to .*(Swin|ImageEncoderViT|ResNet).*(grid|token)"):
        finetune("vpt", VptHParams(**FAST), _encoder(checkpoints, family), table, ["disease"], root=synth_dir)
    if family == "clip_rn50":
        with pytest.raises(InputError, match="ModifiedResNet block Bottleneck has no MLP to adapt"):
            finetune("adapter", AdapterHParams(**FAST), _encoder(checkpoints, family), table, ["disease"],
                     root=synth_dir)  # fmt: skip


# ------------------------------------------------------------------------------------------- timm agreement


@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("vit_base_patch16_224", dict(depth=3, embed_dim=32, num_heads=2, img_size=32)),
        ("resnet18", {}),
        ("convnext_atto", {}),
        ("swin_tiny_patch4_window7_224", dict(depths=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 1, 1, 1))),
        ("densenet121", {}),
    ],
)
def test_timm_numbering_agrees_with_timms_layer_decay_groups(arch, kwargs):
    import timm
    from timm.optim import param_groups_layer_decay

    from fairfm.adapt.train import timm_layer_ids

    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    numbering = timm_layer_ids(model)
    params = {id(p): n for n, p in model.named_parameters()}
    timm_scale = {
        params[id(p)]: g["lr_scale"]
        for g in param_groups_layer_decay(model, weight_decay=0.0, layer_decay=0.5)
        for p in g["params"]
    }
    timm_top = max(timm_scale.values())
    assert timm_top == 1.0
    # timm's grouping, up to BEiT's one change: what timm merges into the last block without being in one
    # (the final norm of a ViT or Swin) is the top layer, with the head
    moved = {n for n in params.values() if re.match(r"norm\.", n)}
    assert bool(moved) == arch.startswith(("vit", "swin"))
    kept = [n for n in params.values() if n not in moved]
    own_top = any(numbering(n) == numbering.top for n in kept)  # timm already has a neck group (ConvNeXt…)
    for name in moved:
        assert numbering(name) == numbering.top and numbering.scale(name, 0.5) == 1.0
    for name in kept:  # otherwise the head (scale 1) sits one layer above timm's last group
        assert numbering.scale(name, 0.5) == pytest.approx(timm_scale[name] * (1.0 if own_top else 0.5)), name
    groups: dict[float, set[int]] = {}
    for name in kept:
        groups.setdefault(timm_scale[name], set()).add(numbering(name))
    assert all(len(ids) == 1 for ids in groups.values())  # timm's groups are kept whole


# ------------------------------------------------------------------------------------------- RandAugment


@pytest.mark.parametrize(
    "name", ["Invert", "SolarizeIncreasing", "SolarizeAdd", "PosterizeIncreasing", "BrightnessIncreasing",
             "ContrastIncreasing", "AutoContrast"],
)  # fmt: skip
def test_high_depth_ops_follow_timms_8bit_ops(name):
    """Oracle: timm's PIL op on an 8-bit image vs the float op on the same image stored in 16 bits."""
    import random

    from PIL import Image
    from timm.data.auto_augment import NAME_TO_OP, AugmentOp

    from fairfm.adapt.train import _FLOAT_OPS

    rng = np.random.default_rng(0)
    grey = rng.integers(40, 200, (24, 24)).astype(np.uint8)  # not full range: AutoContrast acts
    op = AugmentOp(name, prob=1.0, magnitude=7, hparams={"img_mean": (124, 116, 104)})
    random.seed(3)
    args = op.level_fn(7, op.hparams) if op.level_fn is not None else ()
    expected = np.asarray(NAME_TO_OP[name](Image.fromarray(grey), *args, **op.kwargs), dtype=np.float64) / 255
    high = torch.from_numpy((grey.astype(np.float32) * 257 / 65535)[None])
    got = _FLOAT_OPS[name](high, *args, [0.5])[0].numpy()
    assert np.abs(got - expected).max() <= 2.5 / 255  # PIL rounds to 8-bit levels; floats do not
    assert not np.allclose(expected, grey / 255)  # the op did something


def _seed(value: int) -> None:
    import random

    np.random.seed(value)
    random.seed(value)
    torch.manual_seed(value)


def test_randaugment_keeps_16_bit_and_float_images_at_full_depth():
    from fairfm.adapt.train import timm_randaugment

    texture = np.random.default_rng(0).integers(0, 2000, (64, 64))
    gradient = (np.arange(64 * 64).reshape(64, 64) * 8 + 9000 + texture).astype(np.uint16)  # > 4000 levels
    hounsfield = np.linspace(-1000, 2000, 64 * 64, dtype=np.float32).reshape(64, 64)
    identity = timm_randaugment("rand-n0")  # no op: the scaling round trip alone
    assert np.array_equal(identity(gradient), gradient) and identity(gradient).dtype == np.uint16
    np.testing.assert_allclose(identity(hounsfield), hounsfield, rtol=0, atol=1e-3)

    augment = timm_randaugment("rand-m6-mstd0.5-inc1")  # Medical MAE's policy
    _seed(0)
    outputs = [augment(gradient) for _ in range(40)]
    assert all(o.dtype == np.uint16 and o.shape == gradient.shape for o in outputs)
    # 2 ops per draw, each applied with probability 0.5: about 3 draws in 4 change the image
    assert sum(not np.array_equal(o, gradient) for o in outputs) >= 20
    # an 8-bit detour would leave at most 256 levels; only Posterize / Equalize draws quantise here
    assert sum(len(np.unique(o)) > 256 for o in outputs) >= 30
    assert sum(len(np.unique(o)) > 256 and not np.array_equal(o, gradient) for o in outputs) >= 15
    assert max(int(o.max()) for o in outputs) > 255 * 64  # values stay on the 16-bit scale
    _seed(1)
    slices = [augment(hounsfield) for _ in range(10)]
    assert all(s.dtype == np.float32 and s.min() >= -1000 - 1e-3 and s.max() <= 2000 + 1e-3 for s in slices)
    assert sum(len(np.unique(s)) > 256 for s in slices) >= 6
    _seed(1)
    assert all(np.array_equal(a, augment(hounsfield)) for a in slices)  # seeded: reproducible
    eight = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    assert augment(eight).dtype == np.uint8  # 8-bit images keep timm's PIL path


def test_full_finetune_randaugments_16_bit_pngs(tmp_path, monkeypatch):
    from PIL import Image

    from fairfm.adapt.train import _randaugment_high_depth
    from tests.models.model_fixtures import TINY_VIT

    rng = np.random.default_rng(0)
    rows = []
    for i in range(28):
        y = i % 2
        image = rng.integers(0, 30000, (32, 32))
        image[:, :16] += 30000 * y  # the bright left half tells the class
        image[:, 16:] += 30000 * (1 - y)
        Image.fromarray(image.astype(np.uint16)).save(tmp_path / f"x{i}.png")
        split = "train" if i < 16 else ("val" if i < 22 else "test")
        rows.append({"sample_id": f"s{i}", "patient_id": f"p{i}", "path": f"x{i}.png", "label_disease": y,
                     "split": split})  # fmt: skip
    seen = []

    def spy(array, transform):
        seen.append(array.dtype)
        return _randaugment_high_depth(array, transform)

    monkeypatch.setattr(train_module, "_randaugment_high_depth", spy)
    import timm

    torch.manual_seed(0)
    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT)
    torch.save({"model": source.state_dict()}, tmp_path / "vit.pth")
    encoder = create_model("medmae", checkpoint=tmp_path / "vit.pth", **TINY_VIT)
    hp = FullFinetuneHParams(lr=1e-3, lr_scaling="none", **FAST)
    out = finetune("full_finetune", hp, encoder, pd.DataFrame(rows), ["disease"], root=tmp_path)
    assert seen and set(seen) == {np.dtype(np.uint16)} and len(seen) == 16  # every training image, once
    assert out.meta["randaugment"] == "rand-m6-mstd0.5-inc1"
