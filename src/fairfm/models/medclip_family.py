"""MedCLIP (ViT variant): a Swin-T image tower and a Bio_ClinicalBERT text tower from transformers, each with a
bias-free linear projection to 512, and a learned temperature.

Why a small hand-written wrapper: the only library that builds MedCLIP is the ``medclip`` package, whose
constructor downloads two Hugging Face models and a weights zip at run time and pins an old transformers. The
towers themselves are transformers' ``SwinModel`` and ``BertModel``; only the two projections and MedCLIP's
text pooling (token-mean of hidden layers 1, 2 and the last, averaged) are written here, following
``medclip/modeling_medclip.py``. The release's ``pytorch_model.bin`` (a plain state dict: ``vision_model.model.*``,
``vision_model.projection_head.weight``, ``text_model.model.*``, ``text_model.projection_head.weight``,
``logit_scale``) is loaded weights-only.

The towers' configs come from sub-folders ``swin/`` and ``bert/`` of the checkpoint folder (``config.json``;
``bert/`` also holds the tokenizer files) or from the local hub cache of the two base repositories.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairfm.errors import InputError
from fairfm.models.base import VisionLanguageEncoder
from fairfm.models.checkpoints import (check_state_dict, extract_state_dict, hf_snapshot, load_weights_file,
                                       weights_shapes)  # fmt: skip
from fairfm.models.preprocess import Preprocess
from fairfm.models.registry import ModelCard, register_checker, register_model

SWIN_REPO = "microsoft/swin-tiny-patch4-window7-224"
BERT_REPO = "emilyalsentzer/Bio_ClinicalBERT"
_GREY_MEAN, _GREY_STD = 0.5862785803043838, 0.27950088968644304  # medclip/constants.py

CARD = ModelCard(
    name="medclip",
    family="vision-language",
    architecture="Swin-T image tower + Bio_ClinicalBERT text tower, linear 768→512 projections",
    library="transformers",
    identifiers=("medclip==0.0.3 MedCLIPModel(vision_cls=MedCLIPVisionModelViT)",),
    checkpoint_files=("pytorch_model.bin",),
    download="the MedCLIP-ViT weights zip linked in RyanWangZf/MedCLIP medclip/medclip_vit_weight.txt (unzip to a "
    f"folder), plus the configs of {SWIN_REPO} and {BERT_REPO} (hub cache, or swin/ and bert/ sub-folders)",
    preprocess=Preprocess(
        224, (_GREY_MEAN,) * 3, (_GREY_STD,) * 3, resize="squash", interpolation="bilinear"
    ),
    embed_dim=512,
    zero_shot=True,
    licence="unverified",
    paper="Wang et al., MedCLIP: Contrastive Learning from Unpaired Medical Images and Text, EMNLP 2022",
    pretraining="CheXpert + MIMIC-CXR, decoupled image–text pairs with semantic matching loss",
    notes=(
        "grey mean 0.5863 / std 0.2795 replicated to 3 channels (medclip/constants.py); MedCLIP's processor "
        "also pads to square before resizing (not reproduced; unverified)",
        "text pooling: mean over tokens of hidden layers 1, 2 and last; padding is included as in MedCLIP",
    ),
)


def _tower_folder(weights: Path, sub: str, repo: str) -> Path:
    local = weights / sub
    if (local / "config.json").is_file():
        return local
    snapshot = hf_snapshot(repo)
    if snapshot is not None and (snapshot / "config.json").is_file():
        return snapshot
    raise InputError(
        f"model 'medclip': needs the config of {repo}; looked at {local / 'config.json'} and the hub "
        f"cache; download it with huggingface-cli download {repo}"
    )


def _weights_file(weights: Path) -> Path:
    if not weights.is_dir():
        raise InputError(
            f"model 'medclip': checkpoint {weights} must be the unzipped MedCLIP folder "
            "(pytorch_model.bin, optionally swin/ and bert/ sub-folders)"
        )
    file = weights / "pytorch_model.bin"
    if not file.is_file():
        raise InputError(f"model 'medclip': {file} not found")
    return file


@register_checker(CARD)
def check_medclip(card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any) -> None:
    """The folder's layout, the towers' configs and a readable weights file (without reading the weights)."""
    file = _weights_file(weights)
    _tower_folder(weights, "swin", SWIN_REPO)
    _tower_folder(weights, "bert", BERT_REPO)
    weights_shapes(file, trust_checkpoint=trust_checkpoint)


@register_model(CARD)
def build_medclip(
    card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any
) -> VisionLanguageEncoder:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, SwinConfig, SwinModel

    if overrides:
        raise InputError(f"model 'medclip' takes no build options (got {', '.join(sorted(overrides))})")
    file = _weights_file(weights)
    swin_dir, bert_dir = _tower_folder(weights, "swin", SWIN_REPO), _tower_folder(weights, "bert", BERT_REPO)
    module = torch.nn.Module()
    module.vision_model = torch.nn.Module()
    module.vision_model.model = SwinModel(SwinConfig.from_pretrained(str(swin_dir), local_files_only=True))
    module.vision_model.projection_head = torch.nn.Linear(
        module.vision_model.model.num_features, 512, bias=False
    )
    module.text_model = torch.nn.Module()
    module.text_model.model = BertModel(BertConfig.from_pretrained(str(bert_dir), local_files_only=True))
    module.text_model.projection_head = torch.nn.Linear(
        module.text_model.model.config.hidden_size, 512, bias=False
    )
    module.logit_scale = torch.nn.Parameter(torch.zeros(()))
    state = extract_state_dict(load_weights_file(file, trust_checkpoint=trust_checkpoint), path=file)
    check_state_dict(module, state, card=card, path=file)
    module.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(bert_dir), local_files_only=True)
    except Exception as exc:  # missing tokenizer files surface as OSError/ValueError
        raise InputError(
            f"model 'medclip': no tokenizer files in {bert_dir} ({str(exc).splitlines()[0]})"
        ) from None

    def image_fn(pixels):
        return module.vision_model.projection_head(
            module.vision_model.model(pixel_values=pixels).pooler_output
        )

    def text_fn(texts: list[str]):
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        hidden = module.text_model.model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], output_hidden_states=True
        ).hidden_states
        pooled = torch.stack([hidden[1], hidden[2], hidden[-1]]).mean(dim=2).mean(dim=0)
        return module.text_model.projection_head(pooled)

    scale = float(module.logit_scale.detach().clamp(0, 4.6052).exp())  # MedCLIP clamps its temperature so
    return VisionLanguageEncoder(
        card, module, weights, image_fn, embed_dim=512, text_fn=text_fn, logit_scale=scale
    )
