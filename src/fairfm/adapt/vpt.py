"""Visual prompt tuning (Jia et al. 2022), bottleneck adapters (Houlsby et al. 2019; Chen et al. 2022,
AdaptFormer) and stochastic depth (drop path) on the blocks of the zoo's image transformers (METHODS.md §2.5,
§2.6, MODELS.md §7).

Hand-written because no maintained library offers them for these vision backbones: peft's prompt methods are
for text models only, timm's ``reg_tokens`` are a different architecture (register tokens trained with the
whole model, part of the checkpoint), and drop path is a constructor argument of timm (and of a few
transformers configs) only.

Supported towers (one finder per family, registered with :func:`register_block_layout`): timm Vision
Transformers (alone or as an open_clip ``trunk``), open_clip's native ViT, transformers ViT-like encoders
(CLIP, SigLIP, DINOv2 / RAD-DINO, BLIP, BLIP-2 vision models), transformers Swin (MedCLIP's image tower) and
segment_anything's ``ImageEncoderViT`` (SAM, MedSAM, LVM-Med). Swin and SAM blocks are windowed and take a
spatial grid of tokens: a prompt token has no place in that grid, so VPT is refused there (adapters and drop
path work).

Everything is attached with forward hooks and extra sub-modules, so every original checkpoint key and tensor is
kept: a checkpoint loads *before* they are applied, and ``remove()`` gives back the original model, whose
outputs are then bit-for-bit the original ones.

VPT
    ``num_tokens`` learnable prompts of width ``dim`` are inserted after the prefix tokens (class token, and
    register tokens where a model has them) before the first block. *Shallow*: only there. *Deep*: before
    every later block the previous block's outputs at the prompt positions are replaced by that block's fresh
    prompts. After the last block the prompt positions are dropped, so the model's pooling (class token, the
    mean of the patch tokens or SigLIP's attention-pooling head) sees exactly the tokens it was built for.
    Prompts are initialised uniform in ±sqrt(6 / (3·patch_area + dim)) (Jia et al.'s Xavier-style rule) and
    pass through dropout.
Adapters
    Per block a down-projection (dim → width), GELU, up-projection (width → dim, initialised to zero so the
    adapted model starts equal to the frozen one), scaled by ``scale``. ``parallel`` (AdaptFormer): the
    adapter reads the MLP's input (the normalised stream) and its output is added to the MLP's output;
    ``sequential`` (Houlsby): the adapter follows the MLP, ``h + scale·adapter(h)`` on the MLP's output.
    Either way the block's residual connection carries the sum.
Drop path
    Block ``i`` of ``n`` drops each residual branch (attention, MLP) of a sample with probability
    ``rate·i/(n−1)`` (timm's ``linspace(0, rate, n)``) and scales kept branches by 1/(1−p), in training mode
    only. Where the library has its own drop-path module in the block (timm ``drop_path1/2``, DINOv2's and
    Swin's ``drop_path``) that module is (re)placed with the scheduled rate; elsewhere (open_clip's
    ``ls_1``/``ls_2``, transformers CLIP/SigLIP/BLIP ``self_attn``/``mlp``, SAM's ``attn``/``mlp``, Swin's
    MLP, which transformers leaves without one) a forward hook on the branch's last module does the same.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fairfm.errors import InputError

if TYPE_CHECKING:
    from torch import nn

ADAPTER_PLACEMENTS = ("parallel", "sequential")
#: attribute names of the sub-modules added to the ViT (their parameters are the trainable ones)
PROMPTS_ATTRIBUTE = "vpt_prompts"
ADAPTER_ATTRIBUTE = "bottleneck_adapter"


@dataclass
class Branch:
    """One residual branch of a block, for drop path: either a drop-path *slot* of the library (``attribute``
    of ``module`` holding the library's own drop-path module, built by ``factory(p)``) or the last module of
    the branch (``module``; ``index`` picks the tensor when it returns a tuple), whose output a hook scales."""

    module: "nn.Module"
    attribute: str | None = None
    factory: Callable[[float], "nn.Module"] | None = None
    index: int | None = None


@dataclass
class VitLayout:
    """Where a supported tower keeps what VPT, adapters and drop path need."""

    module: "nn.Module"  # the transformer (the prompts module is attached here)
    blocks: Sequence["nn.Module"]  # in execution order
    dim: int
    patch_area: int
    channels: int
    prefix: int  # tokens before the patches: class token (+ register tokens)
    family: str = "ViT"
    mlps: Sequence["nn.Module"] = ()  # the MLP of each block (adapters); default: ``block.mlp``
    branches: Sequence[Sequence[Branch]] = ()  # residual branches of each block (drop path)
    #: why VPT cannot be applied (None: it can); blocks of (batch, tokens, dim) otherwise
    vpt_refusal: str | None = None

    def __post_init__(self) -> None:
        if not self.mlps:
            self.mlps = [getattr(block, "mlp", None) for block in self.blocks]


#: ``fn(tower) -> VitLayout | None``, tried in registration order
_LAYOUT_FINDERS: list[Callable[[Any], "VitLayout | None"]] = []


def register_block_layout(fn: Callable[[Any], "VitLayout | None"]) -> Callable[[Any], "VitLayout | None"]:
    """Register a tower family's layout finder (returns None for a tower that is not of its family)."""
    _LAYOUT_FINDERS.append(fn)
    return fn


def _patch_geometry(conv: Any) -> tuple[int, int]:
    kernel = conv.kernel_size
    kernel = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel, kernel)
    return int(kernel[0]) * int(kernel[1]), int(conv.in_channels)


def _library_drop_path(block: "nn.Module") -> Callable[[float], "nn.Module"]:
    """The drop-path class defined next to ``block``'s class (transformers' ``Dinov2DropPath``, …)."""
    namespace = vars(sys.modules[type(block).__module__])
    cls = next(v for k, v in namespace.items() if k.endswith("DropPath") and isinstance(v, type))
    return cls


@register_block_layout
def _timm_vit(tower: Any) -> "VitLayout | None":
    from timm.layers import DropPath
    from timm.models.vision_transformer import VisionTransformer

    for candidate in (tower, getattr(tower, "trunk", None)):
        if isinstance(candidate, VisionTransformer):
            patch = candidate.patch_embed.patch_size
            patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
            blocks = list(candidate.blocks)
            return VitLayout(
                candidate,
                blocks,
                int(candidate.embed_dim),
                int(patch[0]) * int(patch[1]),
                int(getattr(candidate.patch_embed.proj, "in_channels", 3)),
                int(candidate.num_prefix_tokens),
                family="timm ViT",
                branches=[
                    [Branch(b, "drop_path1", DropPath), Branch(b, "drop_path2", DropPath)] for b in blocks
                ],
            )
    return None


@register_block_layout
def _open_clip_vit(tower: Any) -> "VitLayout | None":
    transformer = getattr(tower, "transformer", None)
    if not (
        type(tower).__module__.startswith("open_clip")
        and hasattr(tower, "conv1")
        and hasattr(transformer, "resblocks")
    ):
        return None
    if not getattr(transformer, "batch_first", False):
        raise InputError("open_clip ViT with sequence-first blocks: rebuild it batch-first (open_clip ≥ 2.24)")
    blocks = list(transformer.resblocks)
    area, channels = _patch_geometry(tower.conv1)
    return VitLayout(
        tower,
        blocks,
        int(transformer.width),
        area,
        channels,
        1,  # the class embedding
        family="open_clip ViT",
        # ls_1 / ls_2 (LayerScale or Identity) end the attention and MLP branches
        branches=[[Branch(b.ls_1), Branch(b.ls_2)] for b in blocks],
    )


@register_block_layout
def _open_clip_resnet(tower: Any) -> "VitLayout | None":
    # open_clip's ModifiedResNet (OpenAI RN50): drop path only — a CNN has no tokens for prompts and no MLP
    # for adapters. A Bottleneck's residual branch ends in bn3 (its output is then added to the shortcut).
    if not (type(tower).__module__.startswith("open_clip") and all(hasattr(tower, f"layer{i}") for i in (1, 4))):
        return None
    blocks = [block for i in range(1, 5) for block in getattr(tower, f"layer{i}")]
    if not all(hasattr(b, "bn3") for b in blocks):
        return None
    area, channels = _patch_geometry(tower.conv1)
    return VitLayout(
        tower,
        blocks,
        0,
        area,
        channels,
        0,
        family="open_clip ModifiedResNet",
        mlps=[None] * len(blocks),
        branches=[[Branch(b.bn3)] for b in blocks],
        vpt_refusal="a convolutional network has no token sequence to prompt",
    )


def transformers_core(tower: Any) -> Any:
    """The transformers model inside a tower: the shallowest module with ``embeddings`` and ``encoder``."""
    for _, module in tower.named_modules():
        if "embeddings" in module._modules and "encoder" in module._modules:  # own children, not forwarded
            return module
    return None


@register_block_layout
def _transformers_vit(tower: Any) -> "VitLayout | None":
    core = transformers_core(tower)
    if core is None or not type(core).__module__.startswith("transformers"):
        return None
    encoder = core.encoder
    layers = getattr(encoder, "layers", None) or getattr(encoder, "layer", None)
    if layers is None or not len(layers):
        return None
    config = getattr(core, "config", None)
    if hasattr(layers[0], "blocks"):  # Swin: stages of windowed blocks over a (H·W) grid
        blocks = [block for stage in layers for block in stage.blocks]
        return VitLayout(
            core,
            blocks,
            0,  # varies per stage: adapters read each block's own width
            0,
            0,
            0,
            family="transformers Swin",
            # Swin's drop_path covers the attention branch only; the MLP branch gets a hook
            branches=[[Branch(b, "drop_path", _library_drop_path(b)), Branch(b.mlp)] for b in blocks],
            vpt_refusal="Swin attends within shifted windows of a spatial token grid; a prompt token has no "
            "position in that grid",
        )
    blocks = list(layers)
    if not all(hasattr(b, "mlp") for b in blocks):
        return None
    embeddings = core.embeddings
    conv = getattr(embeddings, "patch_embedding", None)
    if conv is None:
        conv = getattr(getattr(embeddings, "patch_embeddings", None), "projection", None)
    if conv is None:
        return None
    area, channels = _patch_geometry(conv)
    prefix = int(
        hasattr(embeddings, "class_embedding") or getattr(embeddings, "cls_token", None) is not None
    ) + int(getattr(config, "num_register_tokens", 0) or 0)
    if hasattr(blocks[0], "drop_path"):  # DINOv2 / RAD-DINO: one drop-path module serves both branches
        branches = [[Branch(b, "drop_path", _library_drop_path(b))] for b in blocks]
    elif hasattr(blocks[0], "self_attn"):  # CLIP, SigLIP, BLIP, BLIP-2: (output, weights) from self_attn
        branches = [[Branch(b.self_attn, index=0), Branch(b.mlp)] for b in blocks]
    else:
        branches = []
    return VitLayout(
        core,
        blocks,
        int(config.hidden_size),
        area,
        channels,
        prefix,
        family=f"transformers {type(core).__name__}",
        branches=branches,
    )


@register_block_layout
def _segment_anything_vit(tower: Any) -> "VitLayout | None":
    try:
        from segment_anything.modeling.image_encoder import ImageEncoderViT
    except ImportError:  # segment_anything is a dependency; a broken install only loses this family
        return None
    for module in tower.modules():
        if isinstance(module, ImageEncoderViT):
            blocks = list(module.blocks)
            area, channels = _patch_geometry(module.patch_embed.proj)
            return VitLayout(
                module,
                blocks,
                int(module.patch_embed.proj.out_channels),
                area,
                channels,
                0,
                family="segment_anything ImageEncoderViT",
                # windowed blocks run attention on (B·windows, w, w, C): the hook repeats each sample's draw
                branches=[[Branch(b.attn), Branch(b.mlp)] for b in blocks],
                vpt_refusal="SAM's image encoder attends within windows of a (B, H, W, C) token grid with "
                "relative positions; a prompt token has no position in that grid",
            )
    return None


def find_vit(tower: "nn.Module", model_name: str = "model") -> VitLayout:
    """The transformer blocks inside an image tower (see the module doc for the supported families)."""
    for finder in _LAYOUT_FINDERS:
        layout = finder(tower)
        if layout is not None:
            return layout
    raise InputError(
        f"model {model_name!r} ({type(tower).__name__}): VPT, bottleneck adapters and hooked drop path "
        "support the Vision Transformers of timm, open_clip, transformers (CLIP, SigLIP, DINOv2, BLIP, "
        "BLIP-2, Swin) and segment_anything only"
    )


@functools.cache  # one class per process (torch is imported lazily, so the classes are built on first use)
def _torch_modules():
    import torch
    from torch import nn

    class VisualPrompts(nn.Module):
        """Prompt tokens of a ViT: ``prompts`` is (layers, num_tokens, dim); layers = 1 (shallow) or the
        number of blocks (deep)."""

        def __init__(self, vit: VitLayout, num_tokens: int, deep: bool, dropout: float) -> None:
            super().__init__()
            layers = len(vit.blocks) if deep else 1
            self.bound = math.sqrt(6.0 / float(vit.channels * vit.patch_area + vit.dim))
            self.prompts = nn.Parameter(
                torch.empty(layers, num_tokens, vit.dim).uniform_(-self.bound, self.bound)
            )
            self.dropout = nn.Dropout(dropout)
            self.num_tokens = num_tokens
            self.deep = deep
            self.prefix = vit.prefix
            self._handles: list[Any] = []
            self._layout = vit  # a plain dataclass: the ViT does not become a child of its own sub-module
            #: the sequence length each block saw in the last forward (checked on every call)
            self.seen_lengths: list[int] = []
            self._tokens = 0  # prefix + patches of the current forward, set at the first block

        def _prompt(self, layer: int, batch: int) -> torch.Tensor:
            return self.dropout(self.prompts[layer]).unsqueeze(0).expand(batch, -1, -1)

        def attach(self) -> None:
            blocks = list(self._layout.blocks)
            n, p = self.num_tokens, self.prefix

            def insert(module, args):
                (x, *rest) = args
                self.seen_lengths = []
                self._tokens = x.shape[1]  # prefix + patches, without prompts
                prompts = self._prompt(0, x.shape[0]).to(x.dtype)
                return (torch.cat([x[:, :p], prompts, x[:, p:]], dim=1), *rest)

            def replace(layer):
                def hook(module, args):
                    (x, *rest) = args
                    prompts = self._prompt(layer, x.shape[0]).to(x.dtype)
                    return (torch.cat([x[:, :p], prompts, x[:, p + n :]], dim=1), *rest)

                return hook

            def check(module, args):
                length = args[0].shape[1]
                if length != self._tokens + n:
                    raise RuntimeError(f"VPT: a block saw {length} tokens, expected {self._tokens + n}")
                self.seen_lengths.append(length)

            def drop(module, args, output):
                return torch.cat([output[:, :p], output[:, p + n :]], dim=1)

            self._handles.append(blocks[0].register_forward_pre_hook(insert))
            if self.deep:
                for layer, block in enumerate(blocks[1:], start=1):
                    self._handles.append(block.register_forward_pre_hook(replace(layer)))
            for block in blocks:  # registered after insert/replace, so it sees the prompted sequence
                self._handles.append(block.register_forward_pre_hook(check))
            self._handles.append(blocks[-1].register_forward_hook(drop))

        def remove(self) -> None:
            """Detach the prompts: the ViT is the original model again."""
            for handle in self._handles:
                handle.remove()
            self._handles = []
            vit = self._layout.module
            if getattr(vit, PROMPTS_ATTRIBUTE, None) is self:
                delattr(vit, PROMPTS_ATTRIBUTE)

    class BottleneckAdapter(nn.Module):
        """down (dim → width) → GELU → up (width → dim, zero-initialised) → × scale, on a block's MLP."""

        def __init__(self, dim: int, width: int, scale: float, placement: str) -> None:
            super().__init__()
            self.down = nn.Linear(dim, width)
            self.act = nn.GELU()
            self.up = nn.Linear(width, dim)
            # Houlsby / AdaptFormer: Kaiming-uniform down, zero up -> the adapter starts as the zero function
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
            self.scale = float(scale)
            self.placement = placement

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(self.act(self.down(x))) * self.scale

        def mlp_hook(self, module, args, output):
            if self.placement == "parallel":
                return output + self(args[0])
            return output + self(output)

    return VisualPrompts, BottleneckAdapter


def _mlp_width(mlp: "nn.Module") -> int:
    """The width an MLP reads (its first Linear's ``in_features``): adapters match each block's width (Swin's
    stages differ)."""
    from torch import nn

    first = next((m for m in mlp.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise InputError(f"adapter: MLP {type(mlp).__name__} has no Linear layer to read its width from")
    return int(first.in_features)


class BottleneckAdapters:
    """The adapters added to every block of one tower, with :meth:`remove` to restore the original model."""

    def __init__(self, vit: VitLayout, width: int, scale: float, placement: str) -> None:
        if placement not in ADAPTER_PLACEMENTS:
            raise InputError(f"adapter placement {placement!r} is not one of {', '.join(ADAPTER_PLACEMENTS)}")
        _, adapter_cls = _torch_modules()
        self.blocks = list(vit.blocks)
        self.handles: list[Any] = []
        for block, mlp in zip(self.blocks, vit.mlps):
            if mlp is None:
                raise InputError(f"adapter: {vit.family} block {type(block).__name__} has no MLP to adapt")
        for block, mlp in zip(self.blocks, vit.mlps):
            adapter = adapter_cls(_mlp_width(mlp), width, scale, placement).train(vit.module.training)
            setattr(block, ADAPTER_ATTRIBUTE, adapter)
            self.handles.append(mlp.register_forward_hook(adapter.mlp_hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for block in self.blocks:
            if hasattr(block, ADAPTER_ATTRIBUTE):
                delattr(block, ADAPTER_ATTRIBUTE)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """timm's stochastic-depth schedule: ``linspace(0, rate, depth)`` (block 0 never drops)."""
    if depth <= 1:
        return [0.0] * depth
    return [rate * i / (depth - 1) for i in range(depth)]


@dataclass
class DropPath:
    """Stochastic depth attached to a tower (:func:`add_drop_path`); ``remove()`` restores the model."""

    rates: list[float]
    mechanism: str  # "library modules", "hooks" or both joined by " + "
    _restore: list[tuple[Any, str, Any]] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for module, attribute, original in reversed(self._restore):
            setattr(module, attribute, original)
        self._handles, self._restore = [], []


def _drop_branch(rate: float, index: int | None, batch_of: Callable[[], int | None]):
    """A forward hook scaling a branch's output per sample by Bernoulli(1−p)/(1−p), in training mode only
    (timm's ``drop_path`` with ``scale_by_keep``)."""

    def hook(module, args, output):
        if not module.training or rate <= 0.0:
            return None
        tensor = output if index is None else output[index]
        batch = batch_of() or tensor.shape[0]
        keep = tensor.new_empty((batch,)).bernoulli_(1.0 - rate).div_(1.0 - rate)
        # windowed attention (SAM) runs on (batch·windows, …): window_partition keeps a sample's windows
        # together, so each sample's draw repeats over its windows
        keep = keep.repeat_interleave(tensor.shape[0] // batch).reshape(-1, *([1] * (tensor.ndim - 1)))
        scaled = tensor * keep
        if index is None:
            return scaled
        return (*output[:index], scaled, *output[index + 1 :])

    return hook


def add_drop_path(vit: "nn.Module | VitLayout", rate: float) -> DropPath:
    """Stochastic depth with timm's linear schedule on every block of a tower (see the module doc)."""
    from torch import nn

    if not 0.0 <= rate < 1.0:
        raise InputError(f"drop path rate must be in [0, 1), got {rate}")
    layout = _layout(vit)
    if not layout.branches:
        raise InputError(f"drop path: {layout.family} blocks have no known residual branches")
    rates = drop_path_rates(float(rate), len(layout.blocks))
    handle = DropPath(rates, "")
    mechanisms = set()
    for block, branches, p in zip(layout.blocks, layout.branches, rates):
        batch: dict[str, int] = {}
        hooked = False
        for branch in branches:
            if branch.attribute is not None:
                handle._restore.append((branch.module, branch.attribute, getattr(branch.module, branch.attribute)))
                module = branch.factory(p) if p > 0 else nn.Identity()
                setattr(branch.module, branch.attribute, module.train(branch.module.training))
                mechanisms.add("library modules")
            else:
                handle._handles.append(
                    branch.module.register_forward_hook(_drop_branch(p, branch.index, lambda b=batch: b.get("n")))
                )
                hooked = True
                mechanisms.add("hooks")
        if hooked:  # the block's input batch size (windowed branches see a multiple of it)

            def record(module, args, kwargs, store=batch):
                first = args[0] if args else next(iter(kwargs.values()))
                store["n"] = int(first.shape[0])

            handle._handles.append(block.register_forward_pre_hook(record, with_kwargs=True))
    handle.mechanism = " + ".join(sorted(mechanisms))
    return handle


def _layout(vit: "nn.Module | VitLayout") -> VitLayout:
    return vit if isinstance(vit, VitLayout) else find_vit(vit)


def add_visual_prompts(
    vit: "nn.Module | VitLayout", num_tokens: int, *, deep: bool = False, dropout: float = 0.0
):
    """Attach VPT prompts to a ViT (as ``vit.vpt_prompts``); returns the prompts module (``.remove()``)."""
    layout = _layout(vit)
    if layout.vpt_refusal:
        raise InputError(f"VPT cannot be applied to {layout.family}: {layout.vpt_refusal} (use adapter)")
    if getattr(layout.module, PROMPTS_ATTRIBUTE, None) is not None:
        raise InputError("the model already has visual prompts")
    if num_tokens < 1:
        raise InputError(f"VPT num_tokens must be ≥ 1, got {num_tokens}")
    prompts_cls, _ = _torch_modules()
    prompts = prompts_cls(layout, int(num_tokens), bool(deep), float(dropout))
    prompts.train(layout.module.training)  # a new module starts in training mode; follow the model's mode
    setattr(layout.module, PROMPTS_ATTRIBUTE, prompts)
    prompts.attach()
    return prompts


def add_bottleneck_adapters(
    vit: "nn.Module | VitLayout", width: int, *, scale: float = 1.0, placement: str = "parallel"
) -> BottleneckAdapters:
    """Add a zero-initialised bottleneck adapter to every block of a tower (``block.bottleneck_adapter``)."""
    if width < 1:
        raise InputError(f"adapter bottleneck width must be ≥ 1, got {width}")
    return BottleneckAdapters(_layout(vit), int(width), scale, placement)
