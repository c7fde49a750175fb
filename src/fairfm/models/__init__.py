"""The foundation-model zoo: model cards, offline loaders and the Encoder / VisionLanguage / Segmenter interfaces.

Importing this package does not import torch. It switches the Hugging Face clients to offline mode *before* any
of them is imported through fairfm (and again at every load, in case one was imported earlier — see
:func:`fairfm.models.checkpoints.ensure_offline`): weights come from a local checkpoint or an existing cache only.
"""

from fairfm.models.checkpoints import ensure_offline

ensure_offline()

from fairfm.models.base import Encoder, PromptableSegmenter, VisionLanguageEncoder  # noqa: E402
from fairfm.models.preprocess import Preprocess  # noqa: E402
from fairfm.models.registry import (ModelCard, check_model, create_model, get_model, list_models,  # noqa: E402
                                    register_model)

__all__ = [
    "Encoder",
    "ModelCard",
    "Preprocess",
    "PromptableSegmenter",
    "VisionLanguageEncoder",
    "check_model",
    "create_model",
    "ensure_offline",
    "get_model",
    "list_models",
    "register_model",
]
