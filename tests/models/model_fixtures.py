"""Helpers: tiny random-weight models of the real architectures, saved in each library's real checkpoint format.

Every loader test loads these back through ``fairfm.models.create_model`` — the same path a user's downloaded
checkpoint takes — so no test needs a network or real weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

TINY_VIT = dict(depth=1, embed_dim=32, num_heads=2)
TINY_OPEN_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_SAM = dict(
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn=(1,),
    prompt_dim=32,
    window_size=4,
    decoder_mlp_dim=64,
    decoder_heads=2,
    iou_head_hidden_dim=32,
    mask_in_chans=4,
)
WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "<|startoftext|>",
    "<|endoftext|>",
    "a",
    "photo",
    "of",
    "chest",
    "x-ray",
    "with",
    "without",
    "pneumonia",
    "normal",
    "lung",
    "</s>",
]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def pickled_checkpoint(state_dict, path: Path) -> Path:
    """A training checkpoint that carries a Python object (argparse.Namespace) besides the weights."""
    import torch

    torch.save({"model": state_dict, "args": argparse.Namespace(lr=0.1)}, path)
    return path


def word_tokenizer(folder: Path, *, cls: str = "[CLS]", sep: str = "[SEP]", pad: str = "[PAD]") -> None:
    """Save a word-level fast tokenizer (tokenizer.json + tokenizer_config.json) in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(cls, WORDS.index(cls)), (sep, WORDS.index(sep))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token=pad, cls_token=cls, sep_token=sep
    )
    fast.save_pretrained(str(folder))
