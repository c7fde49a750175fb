"""CoOp prompt learning (``coop``): learnable context vectors in front of each class name, CLIP frozen,
trained on
the one image loop (:mod:`fairfm.adapt.coop` builds the model; :func:`fairfm.adapt.peft_usages.finetune`
trains it).
PromptFL is ``coop`` federated; FedOTP is ``coop`` with ``num_prompts: 2``, ``local_prompts: 1``,
``ot: unbalanced``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from fairfm.usages.base import TrainHParams, UsageOutput, register_usage
from fairfm.usages.zero_shot import two_class_names

if TYPE_CHECKING:
    import pandas as pd

    from fairfm.spec import RunSpec


class CoOpHParams(TrainHParams):
    """CoOp's recipe (Zhou et al.: SGD lr 2e-3, momentum 0.9, cosine, one warm-up epoch, batch 32, 50 epochs);
    FairFedMed's federated scripts use lr 1e-3, weight decay 5e-4 and constant lr (set them in the spec)."""

    n_ctx: Optional[int] = Field(
        None,
        ge=1,
        description="context tokens per prompt (null: 4 as FairFedMed, or the "
        "ctx_init string's token count; CoOp's paper: 16)",
    )
    num_prompts: int = Field(1, ge=1, description="prompts per class (PromptFL 1, FedOTP 2)")
    local_prompts: int = Field(
        0,
        ge=0,
        description="how many of them stay on the client in federated runs "
        "(prompt_learner.local_ctx; FedOTP 1)",
    )
    ctx_init: Optional[str] = Field(
        None,
        description="words the first prompt starts from, e.g. 'a photo of a' "
        "(null: random normal, std 0.02, seeded)",
    )
    classnames: Optional[list[str]] = Field(
        None, description="[negative, positive] class names for every task (null: the dataset's)"
    )
    prompt_dataset: Optional[str] = Field(
        None, description="dataset whose registered class names to use (null: the run's dataset)"
    )
    ot: Literal["none", "unbalanced"] = Field(
        "none",
        description="none: pooled image feature, prompts' logits "
        "averaged; unbalanced: FedOTP's patch-to-prompt partial transport",
    )
    ot_eps: float = Field(0.1, gt=0, description="entropic regularisation of the transport (FedOTP 0.1)")
    ot_top_percent: float = Field(0.8, gt=0, le=1, description="mass transported (FedOTP 0.8)")
    ot_max_iter: int = Field(100, ge=1, description="transport iterations (FedOTP 100)")
    ot_thresh: float = Field(1e-3, gt=0, description="transport stopping threshold (FedOTP 1e-3)")
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(2e-3, gt=0)
    warmup_epochs: float = Field(1, ge=0)
    weight_decay: float = Field(5e-4, ge=0)

    _two_classes = field_validator("classnames")(two_class_names)

    @model_validator(mode="after")
    def _a_shared_prompt(self) -> "CoOpHParams":
        if self.local_prompts >= self.num_prompts:
            raise ValueError(
                f"local_prompts ({self.local_prompts}) must be below num_prompts ({self.num_prompts}): "
                "at least one prompt is shared"
            )
        return self


def coop_hparams(spec: "RunSpec") -> CoOpHParams:
    """The spec's coop hyper-parameters with ``prompt_dataset`` filled with the run's dataset (the builder
    has no
    dataset of its own): what :func:`fairfm.adapt.coop.build_coop_model` is given, centrally and federated."""
    hp = spec.typed_hparams()
    if hp.prompt_dataset is None:
        hp = hp.model_copy(update={"prompt_dataset": spec.manifest().get("dataset")})
    return hp


@register_usage("coop", hparams=CoOpHParams, trains=True, loop="images", model_family="vision-language",
                model_builder="fairfm.adapt.coop:build_coop_model",
                hparams_resolver="fairfm.usages.coop:coop_hparams")  # fmt: skip
def _coop(
    spec: "RunSpec",
    table: pd.DataFrame,
    tasks: list[str],
    *,
    root: Path,
    features_dir: Path,
    device: str,
    progress: bool,
    heads_path: Path | None,
    timings: dict[str, float],
) -> UsageOutput:
    """CoOp on the one training loop: only the prompt learner trains."""
    from fairfm.adapt.coop import build_coop_model, refuse_head_wrapping
    from fairfm.adapt.peft_usages import finetune
    from fairfm.mitigate.runs import loop_setup
    from fairfm.models import create_model

    hp = coop_hparams(spec)
    setup = loop_setup(spec, table, tasks, "images", hp, device=device)
    refuse_head_wrapping(setup.hooks, spec.method)
    started = time.perf_counter()
    encoder = create_model(
        spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **spec.model_options
    )
    timings["model_s"] = time.perf_counter() - started
    started = time.perf_counter()
    modality = (spec.manifest().get("card") or {}).get("modality")
    out = finetune(
        spec.usage,
        hp,
        encoder,
        table,
        tasks,
        root=root,
        seed=spec.seed,
        device=device,
        column=spec.image_column(),
        progress=progress,
        modality=modality,
        hooks=setup.hooks,
        group_column=setup.group_column,
        build_model=build_coop_model,
    )
    timings["train_s"] = time.perf_counter() - started
    meta: dict[str, Any] = dict(out.meta)
    setup.record(meta)
    if heads_path is not None:
        out.save(heads_path)
        meta["trained_state"] = str(heads_path)
    return UsageOutput({"val": out.probabilities["val"], "test": out.probabilities["test"]}, meta)
