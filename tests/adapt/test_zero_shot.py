"""Zero-shot: prompts per dataset, prompt ensembles, and probabilities from the model's similarity logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairfm.adapt.prompts import GENERIC, PromptSet, prompts_for
from fairfm.adapt.zero_shot import class_embeddings, positive_probability, zero_shot
from fairfm.errors import InputError


def _open_clip_text(clip, prompts):
    """Independent oracle: open_clip's own tokenizer and text tower on the wrapped module."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip.weights}")
    with torch.no_grad():
        return clip.module.encode_text(tokenizer(prompts), normalize=False).float()


def test_probabilities_have_the_right_shape_and_range(clip):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(9, clip.embed_dim)).astype(np.float32)
    result = zero_shot(clip, features, ["pleural_effusion", "no_finding"], prompts_for("chexpert"))
    assert result.probabilities.shape == (9, 2)
    assert ((result.probabilities >= 0) & (result.probabilities <= 1)).all()
    assert np.ptp(result.probabilities[:, 0]) > 0  # depends on the image
    neg, pos = result.prompts["pleural_effusion"]
    assert len(neg) == len(pos) == len(prompts_for("chexpert").templates)


def test_ensemble_is_the_mean_of_normalised_prompt_embeddings(clip):
    prompts = ["a chest X-ray showing pneumonia.", "a chest radiograph with pneumonia.", "a photo of pneumonia."]
    expected = F.normalize(_open_clip_text(clip, prompts), dim=-1).mean(dim=0)
    got = class_embeddings(clip, [prompts, prompts[:1]])
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)
    # A single prompt: its own normalised embedding; the ensemble really differs from it.
    torch.testing.assert_close(got[1], F.normalize(_open_clip_text(clip, prompts[:1]), dim=-1)[0], atol=1e-5,
                               rtol=1e-5)  # fmt: skip
    assert not torch.allclose(got[0], got[1], atol=1e-4)


def test_hand_checked_image_aligned_with_the_positive_prompt(clip):
    prompt_set = PromptSet(("a chest X-ray showing {}.",), classnames={"pneumonia": ("normal lungs", "pneumonia")})
    neg, pos = prompt_set.prompts("pneumonia")
    text = F.normalize(_open_clip_text(clip, neg + pos), dim=-1)
    # The image embedding points exactly along the positive prompt (any positive length).
    image = (3.7 * text[1]).numpy()[None, :]
    p = zero_shot(clip, image, ["pneumonia"], prompt_set, ensemble=False).probabilities[0, 0]
    cos_neg = float(text[0] @ text[1])
    scale = clip.logit_scale
    # softmax([s·cos_neg, s·1])[1] = 1 / (1 + exp(s·(cos_neg − 1)))
    assert p == pytest.approx(1.0 / (1.0 + math.exp(scale * (cos_neg - 1.0))), abs=1e-6)
    assert p > 0.5
    # …and the image along the negative prompt gets the complementary probability.
    q = zero_shot(clip, (3.7 * text[0]).numpy()[None, :], ["pneumonia"], prompt_set, ensemble=False)
    assert q.probabilities[0, 0] == pytest.approx(1.0 - p, abs=1e-6)


def test_positive_probability_is_softmax_of_the_models_logits(clip):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(4, clip.embed_dim)).astype(np.float32)
    text = torch.as_tensor(rng.normal(size=(2, clip.embed_dim)).astype(np.float32))
    logits = clip.similarity_logits(torch.as_tensor(image), text).double()
    expected = torch.exp(logits[:, 1]) / torch.exp(logits).sum(dim=1)
    np.testing.assert_allclose(positive_probability(clip, image, text), expected.numpy(), atol=1e-9)


def test_dataset_prompts_and_fairmedfm_single_prompt():
    chest = prompts_for("chexpert")
    single = chest.prompts("no_finding", ensemble=False)
    assert single == (["a chest X-ray of a diseased"], ["a chest X-ray of a normal"])
    neg, pos = chest.prompts("cardiomegaly")
    assert neg[1] == "a chest X-ray showing no cardiomegaly." and pos[1] == "a chest X-ray showing cardiomegaly."
    assert prompts_for("papila").prompts("glaucoma", ensemble=False) == (["a fundus image of a normal"],
                                                                        ["a fundus image of a glaucoma"])  # fmt: skip
    assert prompts_for("ham10000").class_names("malignant") == ("benign lesion", "malignant lesion")
    assert prompts_for("some_new_dataset") is GENERIC
    assert GENERIC.class_names("lung_nodule") == ("no lung nodule", "lung nodule")


def test_spec_overrides_of_templates_and_class_names():
    chest = prompts_for("chexpert").with_overrides(["an x-ray: {}"], ["healthy", "sick"])
    assert chest.prompts("edema") == (["an x-ray: healthy"], ["an x-ray: sick"])
    with pytest.raises(InputError, match="has no '\\{\\}' slot"):
        prompts_for("chexpert").with_overrides(["no slot"])
    with pytest.raises(InputError, match="expected \\[negative, positive\\]"):
        prompts_for("chexpert").with_overrides(None, ["only one"])


def test_a_vision_only_encoder_is_refused(clip):
    class VisionOnly:
        card = clip.card

    with pytest.raises(InputError, match="has no text encoder"):
        zero_shot(VisionOnly(), np.zeros((2, 4), dtype=np.float32), ["x"], GENERIC)
