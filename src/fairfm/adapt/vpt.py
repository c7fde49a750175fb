"""Visual prompt tuning (Jia et al. 2022) and bottleneck adapters (Houlsby et al. 2019; Chen et al. 2022,
AdaptFormer) for timm Vision Transformers (METHODS.md §2.5, MODELS.md §7).

Hand-written because no maintained library offers them for vision backbones: peft's prompt methods are for
text models only, and timm's ``reg_tokens`` are a different architecture (register tokens trained with the
whole model, part of the checkpoint).

Both are attached with forward hooks and one extra sub-module, so every original checkpoint key and tensor is
kept: a checkpoint loads *before* they are applied, and :meth:`VisualPrompts.remove` /
:meth:`BottleneckAdapters.remove` give back the original model, whose outputs are then bit-for-bit the
original ones.

VPT
    ``num_tokens`` learnable prompts of width ``dim`` are inserted after the prefix tokens (class token, and
    register tokens where a model has them) before the first block. *Shallow*: only there. *Deep*: before
    every later block the previous block's outputs at the prompt positions are replaced by that block's fresh
    prompts. After the last block the prompt positions are dropped, so the model's pooling (class token or
    the mean of the patch tokens) sees exactly the tokens it was built for. Prompts are initialised uniform in
    ±sqrt(6 / (3·patch_area + dim)) (Jia et al.'s Xavier-style rule) and pass through dropout.
Adapters
    Per block a down-projection (dim → width), GELU, up-projection (width → dim, initialised to zero so the
    adapted model starts equal to the frozen one), scaled by ``scale``. ``parallel`` (AdaptFormer): the
    adapter reads the MLP's input (the normalised stream) and its output is added to the MLP's output;
    ``sequential`` (Houlsby): the adapter follows the MLP, ``h + scale·adapter(h)`` on the MLP's output.
    Either way the block's residual connection carries the sum.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fairfm.errors import InputError

if TYPE_CHECKING:
    from torch import nn

ADAPTER_PLACEMENTS = ("parallel", "sequential")
#: attribute names of the sub-modules added to the ViT (their parameters are the trainable ones)
PROMPTS_ATTRIBUTE = "vpt_prompts"
ADAPTER_ATTRIBUTE = "bottleneck_adapter"


@dataclass
class VitLayout:
    """Where a supported ViT keeps what VPT and adapters need; the blocks take (batch, tokens, dim)."""

    module: "nn.Module"  # the ViT (the extra sub-modules are attached here)
    blocks: Sequence["nn.Module"]  # each with an ``mlp`` sub-module
    dim: int
    patch_area: int
    channels: int
    prefix: int  # tokens before the patches: class token (+ register tokens)


def find_vit(tower: "nn.Module", model_name: str = "model") -> VitLayout:
    """The Vision Transformer inside an image tower: a timm ``VisionTransformer`` (itself, or an open_clip
    ``trunk``) or open_clip's native ``VisionTransformer`` (batch-first, as open_clip builds it)."""
    from timm.models.vision_transformer import VisionTransformer

    for candidate in (tower, getattr(tower, "trunk", None)):
        if isinstance(candidate, VisionTransformer):
            patch = candidate.patch_embed.patch_size
            patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
            return VitLayout(
                candidate,
                list(candidate.blocks),
                int(candidate.embed_dim),
                int(patch[0]) * int(patch[1]),
                int(getattr(candidate.patch_embed.proj, "in_channels", 3)),
                int(candidate.num_prefix_tokens),
            )
    transformer = getattr(tower, "transformer", None)
    if (
        type(tower).__module__.startswith("open_clip")
        and hasattr(tower, "conv1")
        and hasattr(transformer, "resblocks")
        and getattr(transformer, "batch_first", False)
    ):
        kernel = tower.conv1.kernel_size
        return VitLayout(
            tower,
            list(transformer.resblocks),
            int(transformer.width),
            int(kernel[0]) * int(kernel[1]),
            int(tower.conv1.in_channels),
            1,  # the class embedding
        )
    raise InputError(
        f"model {model_name!r} ({type(tower).__name__}): VPT and bottleneck adapters support Vision "
        "Transformers of timm and open_clip only for now"
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


class BottleneckAdapters:
    """The adapters added to every block of one ViT, with :meth:`remove` to restore the original model."""

    def __init__(self, vit: VitLayout, width: int, scale: float, placement: str) -> None:
        if placement not in ADAPTER_PLACEMENTS:
            raise InputError(f"adapter placement {placement!r} is not one of {', '.join(ADAPTER_PLACEMENTS)}")
        _, adapter_cls = _torch_modules()
        self.blocks = list(vit.blocks)
        self.handles: list[Any] = []
        for block in self.blocks:
            if not hasattr(block, "mlp"):
                raise InputError(f"adapter: ViT block {type(block).__name__} has no 'mlp' to adapt")
        for block in self.blocks:
            adapter = adapter_cls(vit.dim, width, scale, placement).train(vit.module.training)
            setattr(block, ADAPTER_ATTRIBUTE, adapter)
            self.handles.append(block.mlp.register_forward_hook(adapter.mlp_hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for block in self.blocks:
            if hasattr(block, ADAPTER_ATTRIBUTE):
                delattr(block, ADAPTER_ATTRIBUTE)


def _layout(vit: "nn.Module | VitLayout") -> VitLayout:
    return vit if isinstance(vit, VitLayout) else find_vit(vit)


def add_visual_prompts(
    vit: "nn.Module | VitLayout", num_tokens: int, *, deep: bool = False, dropout: float = 0.0
):
    """Attach VPT prompts to a ViT (as ``vit.vpt_prompts``); returns the prompts module (``.remove()``)."""
    layout = _layout(vit)
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
    """Add a zero-initialised bottleneck adapter to every block of a ViT (``block.bottleneck_adapter``)."""
    if width < 1:
        raise InputError(f"adapter bottleneck width must be ≥ 1, got {width}")
    return BottleneckAdapters(_layout(vit), int(width), scale, placement)
