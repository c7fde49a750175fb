"""A model card and a checkpoint are checked against each other at load, in every loader family: a checkpoint of
another architecture is one InputError line naming the card, the file and the first key that differs with its
shapes — never a multi-line torch traceback, never a run of the wrong model under the card's name."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file

from fairfm.errors import InputError
from fairfm.models import check_model, create_model
from fairfm.models.checkpoints import load_weights_file
from fairfm.models.sam_family import build_sam_modules
from tests.adapt.helpers import make_tiny_clip
from tests.models.model_fixtures import (TINY_OPEN_CLIP, TINY_SAM, TINY_VIT, WORDS, pickled_checkpoint,
                                        word_tokenizer)  # fmt: skip
from tests.models.test_sam2_family import TINY_SAM2

FIT = r"does not fit this architecture: "
ANOTHER = r"is it the checkpoint of another model\?"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    return message


def test_timm_dinov2_with_a_checkpoint_of_other_shapes(tmp_path):
    other = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224,
                              **{**TINY_VIT, "embed_dim": 48})  # fmt: skip
    save_file(other.state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(InputError) as exc:
        create_model("dinov2", tmp_path / "model.safetensors", **TINY_VIT)
    message = _one_line(exc)
    assert message.startswith(f"model 'dinov2' (ViT-B/14): checkpoint {tmp_path / 'model.safetensors'} ")
    assert FIT + "'cls_token' is (1, 1, 48) in the checkpoint but (1, 1, 32) in the model" in message
    assert "of another shape, 0 missing, 0 unexpected); is it the checkpoint of another model?" in message


def test_timm_deeper_checkpoint_is_refused_for_its_surplus_blocks(tmp_path):
    deeper = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **{**TINY_VIT, "depth": 2})
    torch.save(deeper.state_dict(), tmp_path / "vit-b-300ep.pth.tar")
    with pytest.raises(InputError, match=FIT + r"'blocks\.1\.norm1\.weight' \(32\) is in the checkpoint but not in "
                       r"the model \(0 key\(s\) of another shape, 0 missing, \d+ unexpected\)"):  # fmt: skip
        create_model("mocov3", tmp_path / "vit-b-300ep.pth.tar", **TINY_VIT)


def test_open_clip_resnet_card_refuses_a_vit_folder(tmp_path):
    folder = make_tiny_clip(tmp_path / "vit_clip")
    with pytest.raises(InputError) as exc:
        create_model("clip_rn50", folder)
    message = _one_line(exc)
    assert message.startswith("model 'clip_rn50' (modified ResNet-50") and str(folder) in message
    assert "holds a ViT image tower (its open_clip_config.json), not a modified-ResNet image tower" in message
    # and the other way round: the ViT card refuses a ResNet folder
    rn = tmp_path / "rn_clip"
    rn.mkdir()
    cfg = {**TINY_OPEN_CLIP, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16}}
    (rn / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.save({}, rn / "open_clip_pytorch_model.bin")
    with pytest.raises(InputError, match="model 'clip' .*holds a modified-ResNet image tower.*not a ViT image tower"):
        create_model("clip", rn)


def test_open_clip_weights_of_other_shapes(tmp_path, monkeypatch):
    import open_clip
    from open_clip import factory

    monkeypatch.setitem(factory._MODEL_CONFIGS, "ViT-B-32-quickgelu", {**TINY_OPEN_CLIP, "quick_gelu": True})
    wider = open_clip.CLIP(**{**TINY_OPEN_CLIP, "vision_cfg": {**TINY_OPEN_CLIP["vision_cfg"], "width": 96}})
    torch.save(wider.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(InputError) as exc:
        create_model("clip", tmp_path / "open_clip_pytorch_model.bin")
    message = _one_line(exc)
    assert FIT + "'visual.class_embedding' is (96) in the checkpoint but (64) in the model" in message
    assert str(tmp_path / "open_clip_pytorch_model.bin") in message


def test_a_garbage_bin_is_named_not_its_config_and_torch_unsafe_hint_is_not_passed_on(tmp_path):
    folder = make_tiny_clip(tmp_path / "clip")
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(InputError) as exc:
        create_model("clip", folder)
    message = _one_line(exc)
    assert message.startswith(f"{folder / 'open_clip_pytorch_model.bin'}: cannot be read as a weights file")
    assert "open_clip_config.json" not in message and "weights_only" not in message
    for content, name in ((b"", "empty.pth"), (b"PK\x03\x04 truncated zip", "cut.pth")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError) as exc:
            load_weights_file(tmp_path / name)
        assert "weights_only" not in _one_line(exc) and name in str(exc.value)


def test_a_pickled_checkpoint_points_at_trust_checkpoint_not_weights_only(tmp_path):
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT)
    path = pickled_checkpoint(model.state_dict(), tmp_path / "vit-b-300ep.pth.tar")
    with pytest.raises(InputError) as exc:
        create_model("mocov3", path, **TINY_VIT)
    message = _one_line(exc)
    assert "--trust-checkpoint" in message and "weights_only" not in message


def _dinov2_config(hidden: int) -> transformers.Dinov2Config:
    return transformers.Dinov2Config(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, image_size=28, patch_size=14)  # fmt: skip


def test_transformers_folder_of_another_model_type(tmp_path):
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=50, bos_token_id=0, eos_token_id=1, pad_token_id=0),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=28, patch_size=14), projection_dim=16))  # fmt: skip
    clip.save_pretrained(str(tmp_path))
    with pytest.raises(InputError) as exc:
        create_model("rad_dino", tmp_path)
    message = _one_line(exc)
    assert message.startswith("model 'rad_dino' (ViT-B/14 (DINOv2)): checkpoint ")
    assert "is a 'clip' model (its config.json model_type), not 'dinov2'" in message


def test_transformers_weights_of_other_shapes_than_the_folders_config(tmp_path):
    transformers.Dinov2Model(_dinov2_config(32)).save_pretrained(str(tmp_path / "small"))
    transformers.Dinov2Model(_dinov2_config(48)).save_pretrained(str(tmp_path / "wide"))
    shutil.copy(tmp_path / "wide" / "model.safetensors", tmp_path / "small" / "model.safetensors")
    with pytest.raises(InputError) as exc:
        create_model("rad_dino", tmp_path / "small")
    message = _one_line(exc)
    assert FIT + "'embeddings.cls_token' is (1, 1, 48) in the checkpoint but (1, 1, 32) in the model" in message


def test_segment_anything_checkpoint_of_other_shapes(tmp_path):
    wide = build_sam_modules(variant="vit_b", image_size=256, **{**TINY_SAM, "embed_dim": 48})
    torch.save(wide.state_dict(), tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(InputError) as exc:
        create_model("sam_vit_b", tmp_path / "sam_vit_b_01ec64.pth", img_size=256, **TINY_SAM)
    message = _one_line(exc)
    assert message.startswith("model 'sam_vit_b' (SAM VIT-B")
    assert FIT + "'image_encoder.pos_embed' is (1, 16, 16, 48) in the checkpoint but (1, 16, 16, 32)" in message


def test_sam2_card_refuses_a_folder_of_another_model_type_and_other_shapes(tmp_path):
    transformers.Dinov2Model(_dinov2_config(32)).save_pretrained(str(tmp_path / "dino"))
    with pytest.raises(InputError, match=r"model 'sam2_hiera_tiny' .*is a 'dinov2' model .*not 'sam2'"):
        create_model("sam2_hiera_tiny", tmp_path / "dino")
    small = transformers.Sam2Model(transformers.Sam2Config(**TINY_SAM2))
    small.save_pretrained(str(tmp_path / "sam2"))
    wide_cfg = {**TINY_SAM2, "mask_decoder_config": {**TINY_SAM2["mask_decoder_config"], "iou_head_hidden_dim": 48}}
    transformers.Sam2Model(transformers.Sam2Config(**wide_cfg)).save_pretrained(str(tmp_path / "wide"))
    shutil.copy(tmp_path / "wide" / "model.safetensors", tmp_path / "sam2" / "model.safetensors")
    with pytest.raises(InputError) as exc:
        create_model("sam2_hiera_tiny", tmp_path / "sam2")
    message = _one_line(exc)
    assert message.startswith("model 'sam2_hiera_tiny'") and FIT in message and "iou_prediction_head" in message


def test_medclip_checkpoint_whose_towers_have_other_shapes(tmp_path):
    swin_config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                          num_heads=[1, 2], window_size=2)  # fmt: skip
    bert_config = transformers.BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=80)  # fmt: skip
    wider_swin = transformers.SwinModel(transformers.SwinConfig(**{**swin_config.to_dict(), "embed_dim": 24}))
    bert = transformers.BertModel(bert_config)
    state = {f"vision_model.model.{k}": v for k, v in wider_swin.state_dict().items()}
    state.update({f"text_model.model.{k}": v for k, v in bert.state_dict().items()})
    state["vision_model.projection_head.weight"] = torch.zeros(512, 48)
    state["text_model.projection_head.weight"] = torch.zeros(512, 32)
    state["logit_scale"] = torch.tensor(1.0)
    torch.save(state, tmp_path / "pytorch_model.bin")
    swin_config.save_pretrained(str(tmp_path / "swin"))
    bert_config.save_pretrained(str(tmp_path / "bert"))
    word_tokenizer(tmp_path / "bert")
    with pytest.raises(InputError) as exc:
        create_model("medclip", tmp_path)
    message = _one_line(exc)
    assert message.startswith("model 'medclip' (Swin-T") and str(tmp_path / "pytorch_model.bin") in message
    assert FIT + "'vision_model.model.embeddings.patch_embeddings.projection.weight' is (24, 3, 4, 4)" in message


def test_a_fitting_checkpoint_still_loads_every_weight(tmp_path):
    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT).eval()
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    encoder = create_model("vit_b16_imagenet", tmp_path / "model.safetensors", **TINY_VIT)
    for name, tensor in source.state_dict().items():
        assert torch.equal(encoder.module.state_dict()[name], tensor), name


def _no_weight_reads(monkeypatch):
    """check_model must not read any weights: every full reader raises."""
    import fairfm.models.checkpoints as checkpoints

    def refuse(*args, **kwargs):
        raise AssertionError("check_model read the weights")

    for module in ("timm_family", "open_clip_family", "sam_family", "medclip_family"):
        monkeypatch.setattr(f"fairfm.models.{module}.load_weights_file", refuse)
    monkeypatch.setattr(checkpoints, "load_weights_file", refuse)


def test_check_model_refuses_the_same_checkpoints_cheaply(tmp_path, monkeypatch):
    """The up-front check of a sweep: the same one line as loading, from shapes alone (meta-device models,
    safetensors headers, memory-mapped zip checkpoints), for a full-size architecture in well under a second."""
    import time

    other = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224,
                              **{**TINY_VIT, "embed_dim": 48})  # fmt: skip
    save_file(other.state_dict(), str(tmp_path / "model.safetensors"))
    torch.save(other.state_dict(), tmp_path / "model.pth")
    with pytest.raises(InputError) as loaded:
        create_model("dinov2", tmp_path / "model.safetensors")
    _no_weight_reads(monkeypatch)
    started = time.perf_counter()
    with pytest.raises(InputError) as checked:
        check_model("dinov2", tmp_path / "model.safetensors")  # the full-size ViT-B/14, on the meta device
    assert time.perf_counter() - started < 5
    assert str(checked.value) == str(loaded.value)
    with pytest.raises(InputError, match=FIT + "'cls_token' is \\(1, 1, 48\\) in the checkpoint but \\(1, 1, 768\\)"):
        check_model("dinov2", tmp_path / "model.pth")
    check_model("dinov2_small", tmp_path / "model.pth", **{**TINY_VIT, "embed_dim": 48})  # a fitting pair passes

    folder = make_tiny_clip(tmp_path / "clip")
    with pytest.raises(InputError, match="model 'clip_rn50' .*holds a ViT image tower"):
        check_model("clip_rn50", folder)
    check_model("clip", folder)
    wide = build_sam_modules(variant="vit_b", image_size=256, **{**TINY_SAM, "embed_dim": 48})
    torch.save(wide.state_dict(), tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(InputError, match="model 'sam_vit_b' .*" + FIT + "'image_encoder.pos_embed'"):
        check_model("sam_vit_b", tmp_path / "sam_vit_b_01ec64.pth", img_size=256, **TINY_SAM)
    monkeypatch.undo()  # a file that is not a zip archive is read whole (legacy torch.save format; here garbage)
    (tmp_path / "garbage").mkdir()
    shutil.copy(folder / "open_clip_config.json", tmp_path / "garbage")
    (tmp_path / "garbage" / "open_clip_pytorch_model.bin").write_bytes(b"garbage" * 20)
    with pytest.raises(InputError, match="open_clip_pytorch_model.bin: cannot be read as a weights file"):
        check_model("clip", tmp_path / "garbage")


def test_check_model_reads_the_config_of_transformers_folders(tmp_path):
    transformers.Dinov2Model(_dinov2_config(32)).save_pretrained(str(tmp_path / "dino"))
    check_model("rad_dino", tmp_path / "dino")
    with pytest.raises(InputError, match=r"model 'sam2_hiera_tiny' .*is a 'dinov2' model"):
        check_model("sam2_hiera_tiny", tmp_path / "dino")
    with pytest.raises(InputError, match=r"unknown model 'dinov3'"):
        check_model("dinov3", tmp_path / "dino")


def test_an_hf_text_tower_is_built_from_its_config_not_fetched(tmp_path, monkeypatch):
    """BiomedCLIP's layout: a timm trunk and a Hugging Face text tower named by a folder holding only its config.
    fairfm builds the model without weights and loads them after, so the text tower must come from its config:
    asking for the tower's own pre-trained weights (open_clip's default when it loads no checkpoint) fails offline."""
    import open_clip

    from fairfm.models.open_clip_family import _build_unloaded
    from fairfm.models.registry import get_model

    bert = tmp_path / "bert"
    transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64).save_pretrained(str(bert))  # fmt: skip
    cfg = {"embed_dim": 48,
           "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                          "timm_proj": "linear", "image_size": 32},
           "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "linear",
                        "hf_pooler_type": "cls_pooler", "context_length": 16}}  # fmt: skip
    folder = tmp_path / "biomedclip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    reference = open_clip.create_model(f"local-dir:{folder}", load_weights=False, pretrained_text=False).eval()
    torch.save(reference.state_dict(), folder / "open_clip_pytorch_model.bin")

    def no_download(*args, **kwargs):
        raise OSError("offline: the text tower's pre-trained weights were asked for")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_download)
    check_model("biomedclip", folder)  # on the meta device
    model, _, file, _ = _build_unloaded(get_model("biomedclip"), folder, {})
    assert file == folder / "open_clip_pytorch_model.bin" and type(model).__name__ == "CustomTextCLIP"
