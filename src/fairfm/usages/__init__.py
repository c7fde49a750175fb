"""Usages — how a foundation model is used (zero-shot, linear probe, CLIP adaptation, fine-tuning, promptable
segmentation): one module each, registered with :func:`register_usage` (see :mod:`fairfm.usages.base` and
docs/usages.md, "Adding a usage"). Importing this package registers every built-in usage."""

from fairfm.usages.base import (
    LOOPS,
    HParams,
    TrainHParams,
    Usage,
    UsageOutput,
    get_usage,
    list_usages,
    register_usage,
)

# The built-in usages register themselves on import (after the registry above exists).
from fairfm.usages import linear_probe, zero_shot, clip_adaptation, finetune, sam_prompt, coop  # noqa: E402,F401  isort: skip

__all__ = ["LOOPS", "HParams", "TrainHParams", "Usage", "UsageOutput", "get_usage", "list_usages", "register_usage"]
