"""transformers loaders: tiny CLIP / SigLIP / DINOv2 / BLIP saved with save_pretrained, loaded from the folder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import transformers

from fairfm.errors import InputError
from fairfm.models import Encoder, VisionLanguageEncoder, create_model
from tests.models.model_fixtures import WORDS, word_tokenizer

TEXT = dict(
    vocab_size=32,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=16,
)
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=64,
    patch_size=16,
)
PROMPTS = ["a chest x-ray with pneumonia", "a normal chest x-ray"]


def _save(model, folder, processor=None):
    torch.manual_seed(0)
    model.save_pretrained(str(folder))
    if processor is not None:
        processor.save_pretrained(str(folder))
    return model.eval()


def test_clip_folder_round_trip_uses_the_folders_preprocessing(tmp_path):
    torch.manual_seed(0)
    text = dict(
        TEXT,
        bos_token_id=WORDS.index("<|startoftext|>"),
        eos_token_id=WORDS.index("<|endoftext|>"),
        pad_token_id=0,
    )
    model = transformers.CLIPModel(
        transformers.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)
    )
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    )
    reference = _save(model, tmp_path, processor)
    word_tokenizer(tmp_path, cls="<|startoftext|>", sep="<|endoftext|>")

    encoder = create_model("pubmedclip", checkpoint=tmp_path)
    assert isinstance(encoder, VisionLanguageEncoder) and encoder.embed_dim == 16
    assert encoder.preprocess.size == 64 and encoder.preprocess.resize == "shortest-crop"
    assert encoder.preprocess.mean == pytest.approx(processor.image_mean)
    batch = torch.randn(2, 3, 64, 64)
    image, texts = encoder.encode_image(batch), encoder.encode_text(PROMPTS)
    assert image.shape == (2, 16) and texts.shape == (2, 16)
    tokens = transformers.AutoTokenizer.from_pretrained(str(tmp_path))(
        PROMPTS, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = reference(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=batch
        )
    assert torch.allclose(encoder.similarity_logits(image, texts), out.logits_per_image, atol=1e-4)


def test_siglip_keeps_its_logit_bias(tmp_path):
    torch.manual_seed(0)
    model = transformers.SiglipModel(
        transformers.SiglipConfig(text_config=dict(TEXT, pad_token_id=0), vision_config=VISION)
    )
    with torch.no_grad():
        model.logit_bias.fill_(-3.0)
    reference = _save(model, tmp_path)
    word_tokenizer(tmp_path)
    encoder = create_model("siglip", checkpoint=tmp_path)
    assert encoder.logit_bias == pytest.approx(-3.0) and encoder.embed_dim == 32
    assert encoder.preprocess.size == 224 and encoder.preprocess.mean == (
        0.5,
        0.5,
        0.5,
    )  # the card's, no processor file
    batch = torch.randn(2, 3, 64, 64)
    tokens = transformers.AutoTokenizer.from_pretrained(str(tmp_path))(
        PROMPTS, padding="max_length", max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        out = reference(input_ids=tokens["input_ids"], pixel_values=batch)
    logits = encoder.similarity_logits(encoder.encode_image(batch), encoder.encode_text(PROMPTS))
    assert torch.allclose(logits, out.logits_per_image, atol=1e-4)


def test_rad_dino_cls_features_and_processor_config(tmp_path):
    torch.manual_seed(0)
    model = transformers.Dinov2Model(
        transformers.Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
        )
    )
    processor = transformers.BitImageProcessor(
        size={"shortest_edge": 72},
        crop_size={"height": 64, "width": 64},
        image_mean=[0.53] * 3,
        image_std=[0.26] * 3,
        resample=3,
    )
    reference = _save(model, tmp_path, processor)
    encoder = create_model("rad_dino", checkpoint=tmp_path)
    assert isinstance(encoder, Encoder) and not isinstance(encoder, VisionLanguageEncoder)
    prep = encoder.preprocess
    assert (prep.size, prep.mean, prep.interpolation) == (64, (0.53,) * 3, "bicubic")
    assert prep.crop_pct == pytest.approx(64 / 72)
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(
            encoder.encode_image(batch), reference(pixel_values=batch).pooler_output, atol=1e-5
        )


def test_blip_contrastive_features_match_its_itc_head(tmp_path):
    torch.manual_seed(0)
    config = transformers.BlipConfig(
        text_config=dict(TEXT, encoder_hidden_size=32), vision_config=VISION, image_text_hidden_size=16
    )
    reference = _save(transformers.BlipForImageTextRetrieval(config), tmp_path)
    word_tokenizer(tmp_path)
    encoder = create_model("blip", checkpoint=tmp_path)
    batch = torch.randn(2, 3, 64, 64)
    image, text = encoder.encode_image(batch), encoder.encode_text(PROMPTS)
    tokens = transformers.AutoTokenizer.from_pretrained(str(tmp_path))(
        PROMPTS, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        itc = reference(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=batch,
            use_itm_head=False,
        ).itm_score
    assert torch.allclose(F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T, itc, atol=1e-4)
    assert create_model("blip", checkpoint=tmp_path, features="cls").embed_dim == 32


def test_hf_folder_errors(tmp_path):
    with pytest.raises(InputError, match="must be a Hugging Face model folder with config.json"):
        create_model("siglip", checkpoint=tmp_path / "x.bin") if (tmp_path / "x.bin").write_bytes(
            b"x"
        ) else None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(InputError, match="cannot load SiglipModel"):
        create_model("siglip", checkpoint=tmp_path)


def test_pickled_pytorch_model_bin_is_refused(tmp_path):
    import argparse

    torch.manual_seed(0)
    model = transformers.Dinov2Model(
        transformers.Dinov2Config(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16
        )
    )
    model.config.save_pretrained(str(tmp_path))
    state = dict(model.state_dict())
    torch.save({**state, "training_args": argparse.Namespace(lr=1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError, match="refused to load this checkpoint.*--trust-checkpoint"):
        create_model("rad_dino", checkpoint=tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    batch = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the same weights saved plainly load without trust
        assert torch.allclose(
            create_model("rad_dino", checkpoint=tmp_path).encode_image(batch),
            model.eval()(pixel_values=batch).pooler_output,
            atol=1e-5,
        )


def test_blip2_query_tokens_and_best_query_zero_shot(tmp_path):
    torch.manual_seed(0)
    config = transformers.Blip2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
        ),
        qformer_config=dict(
            vocab_size=32,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            encoder_hidden_size=32,
            max_position_embeddings=40,
            use_qformer_text_input=True,
        ),
        num_query_tokens=4,
        image_text_hidden_size=16,
    )
    reference = _save(transformers.Blip2ForImageTextRetrieval(config), tmp_path)
    word_tokenizer(tmp_path)
    encoder = create_model("blip2", checkpoint=tmp_path)
    assert encoder.embed_dim == 4 * 16 and encoder.image_tokens == 4
    batch = torch.randn(2, 3, 64, 64)
    image, text = encoder.encode_image(batch), encoder.encode_text(PROMPTS)
    assert image.shape == (2, 64) and text.shape == (2, 16)
    tokens = transformers.AutoTokenizer.from_pretrained(str(tmp_path))(
        PROMPTS, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        itc = reference(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=batch,
            use_image_text_matching_head=False,
        ).logits_per_image
    assert torch.allclose(encoder.similarity_logits(image, text), itc, atol=1e-4)
    assert create_model("blip2", checkpoint=tmp_path, features="query0").encode_image(batch).shape == (2, 32)
