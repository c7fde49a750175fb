"""Zero-shot prompts: per-dataset templates and class names, and prompt ensembles (METHODS.md §2.1).

A :class:`PromptSet` turns a task (``pleural_effusion``) into two lists of prompts, one per class
``[negative, positive]``: every template (``"a chest X-ray showing {}."``) is filled with the class name of
label 0 and of label 1. The class names come from the task's explicit entry when the dataset has one (FairMedFM's
names, e.g. PAPILA ``[normal, glaucoma]``) and otherwise from the finding (``"no pleural effusion"`` /
``"pleural effusion"``). The first template of each set is FairMedFM's single prompt, so ``ensemble=False``
reproduces its zero-shot setting; ``ensemble=True`` averages the normalised text embeddings of all templates.

Datasets register their prompts with :func:`register_prompts`; unknown datasets get :data:`GENERIC`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from fairfm.errors import InputError


@dataclass(frozen=True)
class PromptSet:
    """Templates with a ``{}`` slot and the class names of each task (label 0, label 1)."""

    templates: tuple[str, ...]
    classnames: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # task -> (negative, positive)
    negative: str = "no {}"  # class name of label 0 built from the finding when the task has no explicit names
    positive: str = "{}"
    every_task: tuple[str, str] | None = None  # class names given once for every task (``hparams.classnames``)

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError("a prompt set needs at least one template")
        for template in self.templates:
            if "{}" not in template:
                raise ValueError(f"template {template!r} has no '{{}}' slot for the class name")

    def class_names(self, task: str) -> tuple[str, str]:
        if self.every_task is not None:
            return self.every_task
        if task in self.classnames:
            negative, positive = self.classnames[task]
            return negative, positive
        finding = task.replace("_", " ").strip()
        return self.negative.format(finding), self.positive.format(finding)

    def prompts(self, task: str, *, ensemble: bool = True) -> tuple[list[str], list[str]]:
        """(prompts of label 0, prompts of label 1): all templates, or only the first without ``ensemble``."""
        templates = self.templates if ensemble else self.templates[:1]
        negative, positive = self.class_names(task)
        return [t.format(negative) for t in templates], [t.format(positive) for t in templates]

    def with_overrides(self, templates: Sequence[str] | None = None,
                       classnames: Sequence[str] | None = None) -> "PromptSet":
        """The spec's ``hparams.templates`` / ``hparams.classnames`` (the latter for every task) on top of these."""
        if templates is not None:
            if not templates:
                raise InputError("hparams.templates: empty list (leave it out to use the dataset's templates)")
            for template in templates:
                if "{}" not in template:
                    raise InputError(f"hparams.templates: {template!r} has no '{{}}' slot for the class name")
        if classnames is not None and len(classnames) != 2:
            raise InputError(f"hparams.classnames: expected [negative, positive], got {list(classnames)!r}")
        every = (str(classnames[0]), str(classnames[1])) if classnames is not None else self.every_task
        return PromptSet(tuple(templates) if templates is not None else self.templates, dict(self.classnames),
                         self.negative, self.positive, every)  # fmt: skip


_PROMPTS: dict[str, PromptSet] = {}

#: Used for datasets without their own prompts.
GENERIC = PromptSet(("a medical image showing {}.", "a photo of {}.", "an image of {}."))


def register_prompts(*datasets: str) -> Callable[[Callable[[], PromptSet]], Callable[[], PromptSet]]:
    """Decorator: the function returns the PromptSet used for ``datasets`` (registry names)."""

    def decorate(fn: Callable[[], PromptSet]) -> Callable[[], PromptSet]:
        prompt_set = fn()
        for name in datasets:
            if name in _PROMPTS:
                raise ValueError(f"prompts of dataset {name!r} registered twice")
            _PROMPTS[name] = prompt_set
        return fn

    return decorate


def prompts_for(dataset: str | None) -> PromptSet:
    """The dataset's prompts (by its registry name, as in ``dataset.json``), or :data:`GENERIC`."""
    return _PROMPTS.get(str(dataset or "").lower(), GENERIC)


def known_prompt_datasets() -> list[str]:
    return sorted(_PROMPTS)


# -------------------------------------------------------------------------------------------------- datasets
# First template = FairMedFM's (configs/datasets/*.json); the others form the ensemble.


@register_prompts("chexpert", "mimic_cxr", "nih_chestxray14", "padchest", "rsna_pneumonia", "fairfedmed_chest",
                  "montgomery")  # fmt: skip
def _chest() -> PromptSet:
    templates = ("a chest X-ray of a {}", "a chest X-ray showing {}.", "a chest radiograph with {}.",
                 "a frontal chest X-ray with {}.")
    classnames = {"no_finding": ("diseased", "normal"), "tb": ("normal", "tuberculosis"),
                  "pleural_effusion": ("NOT pleural effusion", "pleural effusion")}
    return PromptSet(templates, classnames=classnames)


@register_prompts("synthetic")
def _synthetic_chest() -> PromptSet:
    # fairfm's planted-bias data: chest-radiograph-like images where the disease is a round opacity in a lung.
    return PromptSet(("a chest X-ray of a {}", "a chest X-ray showing {}.", "a chest radiograph with {}."),
                     classnames={"disease": ("normal lungs", "lung opacity")})


@register_prompts("ham10000", "ddi", "fitzpatrick17k")
def _skin() -> PromptSet:
    return PromptSet(("a photo of a {}", "a dermoscopy image of a {}.", "a close-up photo of a {} on the skin."),
                     classnames={"malignant": ("benign lesion", "malignant lesion")})


@register_prompts("papila", "gf3300", "fairvision_glaucoma")
def _fundus_glaucoma() -> PromptSet:
    return PromptSet(("a fundus image of a {}", "a retinal fundus photograph showing {}.", "a fundus photo of {}."),
                     classnames={"glaucoma": ("normal", "glaucoma")})


@register_prompts("brset", "fairvision_dr")
def _fundus_dr() -> PromptSet:
    return PromptSet(("a fundus image of a {}", "a retinal fundus photograph showing {}.", "a fundus photo of {}."),
                     classnames={"dr": ("normal", "retinopathy")})


@register_prompts("fairvlmed10k", "fairfedmed_oph_slo")
def _slo() -> PromptSet:
    return PromptSet(("a scanning laser ophthalmoscope fundus image of a {}", "an SLO fundus image showing {}."),
                     classnames={"glaucoma": ("normal", "glaucoma")})


@register_prompts("covid_ct_md")
def _ct() -> PromptSet:
    return PromptSet(("a computed tomography of a {}", "a chest CT scan showing {}."),
                     classnames={"pneumonia": ("normal", "pneumonia")})


@register_prompts("adni")
def _brain_mri() -> PromptSet:
    return PromptSet(("a brain MRI of {}", "a brain MRI scan showing {}."),
                     classnames={"ad": ("normal", "Alzheimer's disease")})
