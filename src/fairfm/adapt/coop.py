"""CoOp prompt learning over a frozen open_clip CLIP (Zhou et al., IJCV 2022), with FedOTP's prompt matching
by
unbalanced optimal transport (Li et al., CVPR 2024; FEDERATED.md §2).

CLIP stays frozen. M learnable context vectors [V]_1…[V]_M (token embeddings, ``(n_ctx, width)``) replace the
placeholder tokens of ``"X X … X {class name}."`` and the sequence runs through CLIP's own text transformer; a
class's logit is ``logit_scale · cos(image feature, text feature of the class)``. Each fairfm task is binary
with
the class names of :mod:`fairfm.adapt.prompts` ``[negative, positive]``; the task logit is ``l_pos − l_neg``,
so
its sigmoid is the softmax over the two classes, P(positive).

Several prompts (``num_prompts``) are one context tensor each. The parameters are ``prompt_learner.ctx``
(``(num_prompts − local_prompts, n_ctx, width)``, the prompts a federated server averages: PromptFL) and
``prompt_learner.local_ctx`` (``(local_prompts, n_ctx, width)``, FedOTP's local prompt, never sent: the
federated
runner filters tensors whose names contain ``local_ctx``). Centrally both are just prompts.

``ot: none``
    the pooled image feature against each prompt's class texts; with several prompts their logits are
    averaged.
``ot: unbalanced`` (FedOTP)
    each image's patch tokens (open_clip's ViT with ``output_tokens``, projected like the pooled feature) are
    matched to the prompts' class texts: for each (image, class) the plan T (patches × prompts) minimises
    ⟨T, 1 − sim⟩ − ε·H(T) with patch marginals ≤ 1/M_patches and prompt marginals = top_percent/N (the
    constraints of FedOTP's ``entropic_COT_fast``, total mass top_percent). T is POT's
    ``ot.partial.entropic_partial_wasserstein`` (the solver FedOTP's code says it modified: with
    b = top_percent/N and m = top_percent its constraint set is exactly FedOTP's), computed without gradient
    in float64 as the reference does, and the class logit is ``logit_scale · Σ T ⊙ sim``. POT solves one
    problem
    per call, so the (image, class) problems run in a loop; ``ot.batch`` has only balanced solvers.

No linear head: a method that wraps the head (FIN, DomainInd, the adversarial family) is refused
(:func:`refuse_head_wrapping`); methods that act on the loss, the rows, the optimiser step or the backbone
(reweighting, resampling, GroupDRO, FIS, SAM, SWA/SWAD, FairLoRA on the frozen image tower) run. The CLIP
model is
the model's ``backbone`` so such methods find it, and it stays in eval mode while the prompts train.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fairfm.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fairfm.models.base import Encoder
    from fairfm.usages.base import TrainHParams

#: name fragments of the prompt parameters (the federated server averages ``ctx`` and keeps ``local_ctx``
#: local)
SHARED_PROMPTS = "prompt_learner.ctx"
LOCAL_PROMPTS = "prompt_learner.local_ctx"
#: CoOp's initialisation of random context vectors
CTX_INIT_STD = 0.02
_DEFAULT_N_CTX = 4  # FairFedMed's scripts (the CoOp paper: 16)


# -------------------------------------------------------------------------------------------- open_clip parts


class _TextTower:
    """The pieces of an open_clip text tower CoOp runs with its own token embeddings: the native CLIP layout
    (``CLIP``: on the model) or a :class:`open_clip.transformer.TextTransformer` (``CustomTextCLIP.text``)."""

    def __init__(self, clip: Any, name: str) -> None:
        text = clip if hasattr(clip, "token_embedding") else getattr(clip, "text", None)
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        if text is None or not all(hasattr(text, n) for n in needed):
            raise InputError(
                f"model {name!r}: coop needs an open_clip text transformer with token embeddings; its "
                f"text tower is {type(getattr(clip, 'text', clip)).__name__} (a Hugging Face text tower, "
                "e.g. BiomedCLIP's, is not supported yet)"
            )
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            raise InputError(
                f"model {name!r}: coop supports causal text towers without a class token or padding "
                "mask (CLIP's); this one has them (CoCa / SigLIP style)"
            )
        self.module = text
        self.pool_type = getattr(text, "text_pool_type", None) or getattr(text, "pool_type", "argmax")
        self.eos_id = (
            getattr(text, "text_eos_id", None)
            if hasattr(text, "text_eos_id")
            else getattr(text, "eos_id", None)
        )
        if self.pool_type not in ("argmax", "eos", "first", "last"):
            raise InputError(f"model {name!r}: text pooling {self.pool_type!r} is not one coop knows")

    def encode(self, embeddings: "torch.Tensor", tokenized: "torch.Tensor") -> "torch.Tensor":
        """CLIP's ``encode_text`` from token embeddings (S, L, width) instead of token ids: (S, D)."""
        from open_clip.transformer import text_global_pool
        from torch import nn

        text = self.module
        cast = text.transformer.get_cast_dtype()
        x = embeddings.to(cast) + text.positional_embedding.to(cast)
        x = text.transformer(x, attn_mask=text.attn_mask)
        x = text.ln_final(x)
        x = text_global_pool(x, tokenized, self.pool_type, eos_token_id=self.eos_id)
        projection = getattr(text, "text_projection", None)
        if projection is not None:
            x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return x


def open_clip_tokenizer(encoder: "Encoder") -> Any:
    """The tokenizer open_clip gives the encoder's model: the checkpoint folder's own config (``local-dir:``)
    or
    the card's named architecture, as :func:`fairfm.models.open_clip_family.build_open_clip` chose it."""
    import open_clip

    card = encoder.card
    if card.library != "open_clip":
        raise InputError(
            f"model {card.name!r} ({card.library}): coop needs an open_clip CLIP (family "
            "vision-language, e.g. clip, clip_vit_b16)"
        )
    weights = Path(encoder.weights) if encoder.weights is not None else None
    if weights is not None and weights.is_dir() and (weights / "open_clip_config.json").is_file():
        name = f"local-dir:{weights}"
    elif card.spec.get("arch"):
        name = card.spec["arch"]
    else:
        raise InputError(f"model {card.name!r}: no open_clip tokenizer for checkpoint {weights}")
    return open_clip.get_tokenizer(name)


def _patch_tokens(visual: Any, images: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """(pooled (B, D), patch tokens (B, M, D)) of open_clip's ViT: ``output_tokens`` switched on for this
    forward
    only; the tokens get the pooled feature's projection, as FedOTP's modified CLIP gives them."""
    previous = visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = previous
    if getattr(visual, "final_ln_after_pool", False):  # the pooled feature was normalised after pooling only
        tokens = visual.ln_post(tokens)
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return pooled, tokens


def check_patch_tokens(clip: Any, name: str) -> None:
    """Refuse a model whose image tower cannot give patch tokens (FedOTP's matching needs them)."""
    visual = getattr(clip, "visual", None)
    if visual is None or not hasattr(visual, "output_tokens") or not hasattr(visual, "proj"):
        raise InputError(
            f"model {name!r}: ot: unbalanced matches patch tokens to the prompts, and its image tower "
            f"({type(visual).__name__}) gives none; use open_clip's ViT (e.g. clip, clip_vit_b16) or "
            "ot: none"
        )


# ------------------------------------------------------------------------------------------------ transport


def transport_plans(
    similarity: np.ndarray, *, top_percent: float, eps: float, max_iter: int, thresh: float
) -> np.ndarray:
    """FedOTP's plans for a stack of (patches × prompts) similarity matrices ``(K, M, N)``: each the entropic
    partial
    transport of POT with patch marginals ≤ 1/M, prompt marginals ≤ top_percent/N and total mass top_percent
    (so
    the prompt marginals are equalities), cost 1 − similarity, regularisation ``eps``."""
    import ot

    similarity = np.asarray(similarity, dtype=np.float64)
    _, m, n = similarity.shape
    a, b = np.full(m, 1.0 / m), np.full(n, top_percent / n)
    plans = np.empty_like(similarity)
    for k, sim in enumerate(similarity):
        cost = 1.0 - sim
        plan = ot.partial.entropic_partial_wasserstein(
            a, b, cost, eps, m=top_percent, numItermax=max_iter, stopThr=thresh
        )
        if not np.isfinite(plan).all():  # the multiplicative kernel underflowed: POT's log-domain solver
            plan = ot.partial.entropic_partial_wasserstein(
                a, b, cost, eps, m=top_percent, method="sinkhorn_log", numItermax=max_iter, stopThr=thresh
            )
        plans[k] = plan
    return plans


# ------------------------------------------------------------------------------------------------ the modules


@functools.cache
def _torch_modules():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PromptLearner(nn.Module):
        """Learnable context vectors between CLIP's start token and each class name's tokens.

        Buffers: ``token_prefix`` (C, 1, width) start token, ``token_suffix`` (C, L − 1 − n_ctx, width) class
        name,
        full stop, end token and padding, ``tokenized`` (C, L) the token ids (text pooling finds the end
        token)."""

        def __init__(
            self,
            token_embedding: nn.Embedding,
            tokenizer: Any,
            classnames: Sequence[str],
            *,
            n_ctx: int,
            num_prompts: int,
            local_prompts: int,
            init: "torch.Tensor | None",
            seed: int,
        ) -> None:
            super().__init__()
            width = token_embedding.weight.shape[1]
            placeholder = " ".join(["X"] * n_ctx)
            tokenized = tokenizer([f"{placeholder} {name}." for name in classnames])
            with torch.no_grad():
                embedded = token_embedding(tokenized.to(token_embedding.weight.device)).float()
            self.register_buffer("token_prefix", embedded[:, :1].clone())
            self.register_buffer("token_suffix", embedded[:, 1 + n_ctx :].clone())
            self.register_buffer("tokenized", tokenized.clone())
            generator = torch.Generator().manual_seed(seed)
            vectors = torch.randn(num_prompts, n_ctx, width, generator=generator) * CTX_INIT_STD
            if init is not None:  # the first prompt starts from the words; the others stay random (identical
                vectors[0] = init  # prompts would receive identical gradients and never differ)
            self.n_ctx, self.num_prompts, self.n_classes = n_ctx, num_prompts, len(classnames)
            self.ctx = nn.Parameter(vectors[: num_prompts - local_prompts].clone())
            self.local_ctx = (
                nn.Parameter(vectors[num_prompts - local_prompts :].clone()) if local_prompts else None
            )

        def contexts(self) -> "torch.Tensor":
            """(N, n_ctx, width): the shared prompts, then the local ones."""
            return self.ctx if self.local_ctx is None else torch.cat([self.ctx, self.local_ctx])

        def forward(self) -> "torch.Tensor":
            """(N · C, L, width) prompt embeddings, prompt-major (prompt 0's C classes first)."""
            ctx = self.contexts()
            n, c = ctx.shape[0], self.n_classes
            prefix = self.token_prefix.unsqueeze(0).expand(n, -1, -1, -1)
            suffix = self.token_suffix.unsqueeze(0).expand(n, -1, -1, -1)
            middle = ctx.unsqueeze(1).expand(-1, c, -1, -1).to(prefix.dtype)
            return torch.cat([prefix, middle, suffix], dim=2).reshape(n * c, -1, prefix.shape[-1])

    class CoOpModel(nn.Module):
        """CoOp / PromptFL / FedOTP over a frozen open_clip CLIP: ``forward(images) -> (logits (B, T),
        features
        (B, D))`` (the loop's model contract: :class:`fairfm.adapt.train.Classifier`'s), logits ``l_pos −
        l_neg``
        per task, features the L2-normalised pooled image embedding."""

        def __init__(
            self,
            clip: nn.Module,
            tokenizer: Any,
            classnames: Sequence[tuple[str, str]],
            *,
            name: str = "clip",
            n_ctx: int | None = None,
            num_prompts: int = 1,
            local_prompts: int = 0,
            ctx_init: str | None = None,
            ot: str = "none",
            ot_eps: float = 0.1,
            ot_top_percent: float = 0.8,
            ot_max_iter: int = 100,
            ot_thresh: float = 1e-3,
            seed: int = 0,
        ) -> None:
            super().__init__()
            if ot not in ("none", "unbalanced"):
                raise InputError(f"coop: ot {ot!r} is not one of none, unbalanced")
            if not 0 <= local_prompts < num_prompts:
                raise InputError(
                    f"coop: local_prompts {local_prompts} must lie in [0, num_prompts = {num_prompts})"
                )
            self.text = _TextTower(clip, name)
            if ot == "unbalanced":
                check_patch_tokens(clip, name)
            self.backbone = clip
            init = None
            if ctx_init:  # n_ctx None: the string's token count
                n_ctx, init = _context_init(self.text.module.token_embedding, tokenizer, ctx_init, n_ctx)
            n_ctx = _DEFAULT_N_CTX if n_ctx is None else int(n_ctx)
            self.prompt_learner = PromptLearner(
                self.text.module.token_embedding,
                tokenizer,
                [name_ for pair in classnames for name_ in pair],
                n_ctx=n_ctx,
                num_prompts=num_prompts,
                local_prompts=local_prompts,
                init=init,
                seed=seed,
            )
            self.n_tasks = len(classnames)
            self.ot = ot
            self.ot_settings = {
                "eps": float(ot_eps),
                "top_percent": float(ot_top_percent),
                "max_iter": int(ot_max_iter),
                "thresh": float(ot_thresh),
            }

        def train(self, mode: bool = True) -> "CoOpModel":
            super().train(mode)
            self.backbone.eval()  # CoOp's CLIP is frozen: no BatchNorm statistics move, no dropout
            return self

        def text_features(self) -> "torch.Tensor":
            """(N, C, D) L2-normalised text features of every prompt and class (C = 2T: [neg, pos] per
            task)."""
            learner = self.prompt_learner
            features = self.text.encode(learner(), learner.tokenized.repeat(learner.contexts().shape[0], 1))
            return F.normalize(features.float(), dim=-1).reshape(-1, learner.n_classes, features.shape[-1])

        def class_logits(self, images: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
            """((B, C) class logits, (B, D) normalised pooled image features)."""
            clip = self.backbone
            text = self.text_features()
            scale = clip.logit_scale.exp().float()
            if self.ot == "none":
                pooled = F.normalize(clip.encode_image(images).float(), dim=-1)
                return scale * torch.einsum("bd,ncd->bnc", pooled, text).mean(dim=1), pooled
            pooled, tokens = _patch_tokens(clip.visual, images)
            pooled, tokens = F.normalize(pooled.float(), dim=-1), F.normalize(tokens.float(), dim=-1)
            sim = torch.einsum("bmd,ncd->bcmn", tokens, text)  # (B, C, M patches, N prompts)
            b, c, m, n = sim.shape
            plans = transport_plans(
                sim.detach().reshape(b * c, m, n).double().cpu().numpy(), **self.ot_settings
            )
            plan = torch.from_numpy(plans).to(device=sim.device, dtype=sim.dtype).reshape(b, c, m, n)
            return scale * (plan * sim).sum(dim=(2, 3)), pooled

        def forward(self, images: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
            logits, features = self.class_logits(images)
            paired = logits.reshape(logits.shape[0], self.n_tasks, 2)
            return paired[..., 1] - paired[..., 0], features

    return PromptLearner, CoOpModel


def _context_init(
    token_embedding: "nn.Embedding", tokenizer: Any, words: str, n_ctx: int | None
) -> tuple[int, "torch.Tensor"]:
    """(number of context tokens, their embeddings (n, width)) of an initialisation string such as
    ``"a photo of a"`` (CoOp: the context length is the string's token count)."""
    import torch

    ids = tokenizer([words])[0]
    eot = getattr(tokenizer, "eot_token_id", None)
    end = int((ids == eot).nonzero()[0]) if eot is not None and (ids == eot).any() else int(ids.argmax())
    count = end - 1  # between the start and the end token
    if count < 1:
        raise InputError(f"hparams.ctx_init: {words!r} has no tokens")
    if n_ctx is not None and n_ctx != count:
        raise InputError(
            f"hparams.ctx_init: {words!r} is {count} tokens, but hparams.n_ctx is {n_ctx}; leave n_ctx "
            "out (the string sets it) or make them agree"
        )
    with torch.no_grad():
        embedded = token_embedding(ids.unsqueeze(0).to(token_embedding.weight.device))[
            0, 1 : 1 + count
        ].float()
    return count, embedded.cpu().clone()


def __getattr__(name: str) -> Any:
    # torch is imported when a module class is first asked for, not when fairfm.adapt.coop is imported
    if name in ("PromptLearner", "CoOpModel"):
        return dict(zip(("PromptLearner", "CoOpModel"), _torch_modules()))[name]
    raise AttributeError(name)


# ------------------------------------------------------------------------------------------------ the builder


def coop_classnames(hparams: Any, tasks: Sequence[str]) -> list[tuple[str, str]]:
    """[negative, positive] class names per task: the dataset's prompts (``hparams.prompt_dataset``, which the
    usage fills with the run's dataset) with ``hparams.classnames`` on top."""
    from fairfm.adapt.prompts import prompts_for

    prompt_set = prompts_for(getattr(hparams, "prompt_dataset", None))
    prompt_set = prompt_set.with_overrides(None, getattr(hparams, "classnames", None))
    return [prompt_set.class_names(task) for task in tasks]


def build_coop_model(
    usage: str, encoder: "Encoder", hparams: "TrainHParams", tasks: Sequence[str], seed: int
) -> tuple[Any, list[str], dict[str, Any]]:
    """:data:`fairfm.adapt.peft_usages.ModelBuilder` of ``coop``: the frozen CLIP of ``encoder`` with a prompt
    learner, the prompt parameters' names (the only trainable ones) and what to record."""
    from fairfm.adapt.seeding import derive_seed

    if not hasattr(encoder, "encode_text"):
        raise InputError(
            f"model {encoder.card.name!r} has no text encoder: coop needs a vision-language model"
        )
    tokenizer = open_clip_tokenizer(encoder)
    clip = encoder.module
    for parameter in clip.parameters():
        parameter.requires_grad_(False)
    classnames = coop_classnames(hparams, tasks)
    n_ctx = getattr(hparams, "n_ctx", None)  # None: 4, or the ctx_init string's token count
    model = _torch_modules()[1](
        clip,
        tokenizer,
        classnames,
        name=encoder.card.name,
        n_ctx=n_ctx,
        num_prompts=int(getattr(hparams, "num_prompts", 1)),
        local_prompts=int(getattr(hparams, "local_prompts", 0)),
        ctx_init=getattr(hparams, "ctx_init", None),
        ot=str(getattr(hparams, "ot", "none")),
        ot_eps=float(getattr(hparams, "ot_eps", 0.1)),
        ot_top_percent=float(getattr(hparams, "ot_top_percent", 0.8)),
        ot_max_iter=int(getattr(hparams, "ot_max_iter", 100)),
        ot_thresh=float(getattr(hparams, "ot_thresh", 1e-3)),
        seed=derive_seed(seed, "coop:ctx"),
    )
    trainable = [n for n, _ in model.prompt_learner.named_parameters(prefix="prompt_learner")]
    learner = model.prompt_learner
    meta = {
        "usage": usage,
        "n_ctx": learner.n_ctx,
        "num_prompts": learner.num_prompts,
        "local_prompts": 0 if learner.local_ctx is None else int(learner.local_ctx.shape[0]),
        "ctx_init": getattr(hparams, "ctx_init", None) or f"normal(0, {CTX_INIT_STD})",
        "class_specific_context": False,
        "classnames": {
            task: {"negative": neg, "positive": pos} for task, (neg, pos) in zip(tasks, classnames)
        },
        "ot": model.ot,
        **(
            {"ot_settings": {**model.ot_settings, "solver": "ot.partial.entropic_partial_wasserstein (POT)"}}
            if model.ot != "none"
            else {}
        ),
        "shared_parameters": [n for n in trainable if LOCAL_PROMPTS not in n],
        "local_parameters": [n for n in trainable if LOCAL_PROMPTS in n],
    }
    return model, trainable, meta


def refuse_head_wrapping(hooks: Any, method: str | None) -> None:
    """coop has no linear head: refuse a method whose hooks replace it (FIN, DomainInd, the adversarial
    methods), before the model is loaded."""
    if hooks is not None and getattr(hooks, "wrap_head", None) is not None:
        raise InputError(
            f"method {method!r} builds on the usage's linear head, and coop has none (its logits are "
            "prompt-text similarities); use it with lora, bitfit, vpt, adapter or full_finetune, or a "
            "method acting on the loss, rows, optimiser step or backbone with coop"
        )
