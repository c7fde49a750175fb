"""The SAM optimiser (sharpness-aware minimisation; Foret et al. 2021), its adaptive form ASAM (Kwon et al. 2021)
and GSAM (surrogate-gap SAM; Zhuang et al. 2022) — MEDFAIR ``models/SAM``, ``models/GSAM`` (METHODS.md §3.11).

Every step takes two passes over the batch: the loop's first backward gives g at the weights w; the weights move
to w + ε with ε = ρ·g/‖g‖ (ASAM: ε = ρ·T²g/‖T g‖ with T = |w| element-wise, so the step is scale-invariant);
the closure recomputes the loss and its gradient g_p there; the weights go back to w and the loop's own optimiser
steps with g_p. GSAM steps with g_p − α·g_⊥, g_⊥ the part of g orthogonal to g_p (it also lowers the surrogate
gap between the perturbed and the plain loss).

Written here (a few lines around the loop's optimiser) because no maintained PyPI package wraps an arbitrary
torch optimiser with SAM reliably: the reference implementations are copied files (davda54/sam, which MEDFAIR
vendors), and the packaged ones pin their own base optimiser or lack ASAM/GSAM.

Not copied from MEDFAIR: its cosine schedule with ``T_max`` 50 stepped per *iteration* (the lr oscillates every 50
iterations); the loop's own schedule is used. As in MEDFAIR, BatchNorm running statistics are updated only by the
first pass (the image loop's backbone; the heads of the other loops have none). ρ is fixed (GSAM's reference
schedules ρ with the learning rate).
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import Field

from fairfm.mitigate.base import Method, MethodParams, Needs, TrainContext, TrainHooks, register_method


class SAMParams(MethodParams):
    rho: float = Field(2.0, gt=0, description="ρ, the radius of the weight perturbation (MEDFAIR: 2 with ASAM)")
    adaptive: bool = Field(True, description="ASAM: perturbation scaled element-wise by |w| (MEDFAIR: true)")


class GSAMParams(SAMParams):
    alpha: float = Field(2.0, ge=0, description="α, the weight of the orthogonal-gradient term (MEDFAIR gsam_alpha 2)")


def sam_step(rho: float, adaptive: bool, alpha: float | None = None,
             batchnorm: Callable[[], list[Any]] = list) -> Callable[[Any, Callable[[], Any]], None]:  # fmt: skip
    """The ``step(optimizer, closure)`` hook: perturb, recompute (closure), restore, step the base optimiser.
    ``alpha`` not None: GSAM. ``batchnorm()`` lists BatchNorm modules whose statistics the second pass keeps."""
    import torch

    def step(optimizer: Any, closure: Callable[[], Any]) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            optimizer.step()
            return
        with torch.no_grad():
            grads = [p.grad.detach().clone() for p in params]
            scaled = [(p.abs() * g if adaptive else g) for p, g in zip(params, grads)]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
            scale = rho / (norm + 1e-12)
            originals = [p.detach().clone() for p in params]
            for p, g in zip(params, grads):
                p.add_((p.pow(2) * g if adaptive else g) * scale)  # ASAM: T²g; ‖T·ε‖ = ρ
        modules = batchnorm()
        momenta = [m.momentum for m in modules]
        for m in modules:  # the perturbed pass must not move the running statistics
            m.momentum = 0.0
        try:
            closure()
        finally:
            for m, momentum in zip(modules, momenta):
                m.momentum = momentum
        with torch.no_grad():
            for p, original in zip(params, originals):
                p.copy_(original)  # exact restore (subtracting ε would leave rounding error)
            if alpha is not None:  # GSAM: g_p − α·(g − (g·ĝ_p) ĝ_p)
                perturbed = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                dot = sum((g * gp).sum() for g, gp in zip(grads, perturbed))
                squared = sum((gp * gp).sum() for gp in perturbed)
                along = dot / (squared + 1e-12)
                for p, g, gp in zip(params, grads, perturbed):
                    p.grad = gp - alpha * (g - along * gp)
        optimizer.step()

    return step


@register_method("sam")
class SAM(Method):
    params_model = SAMParams
    needs = Needs(loops=("features", "images"), attribute_at_train=False)
    summary = "sharpness-aware minimisation (ASAM by default): step with the gradient at the worst nearby weights"
    reference = "Foret et al. ICLR 2021; Kwon et al. ICML 2021 (ASAM); MEDFAIR models/SAM (METHODS.md §3.11)"

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        from torch.nn.modules.batchnorm import _BatchNorm

        backbone: list[Any] = []

        def keep_backbone(module: Any) -> list[str]:  # the image loop hands its backbone over: no new parameters
            backbone.append(module)
            return []

        def batchnorm() -> list[Any]:
            return [m for b in backbone for m in b.modules() if isinstance(m, _BatchNorm)]

        alpha = getattr(self.params, "alpha", None)
        return TrainHooks(step=sam_step(self.params.rho, self.params.adaptive, alpha, batchnorm),
                          wrap_backbone=keep_backbone,
                          meta={"variant": "gsam" if alpha is not None else ("asam" if self.params.adaptive
                                                                                 else "sam")})  # fmt: skip


@register_method("gsam")
class GSAM(SAM):
    params_model = GSAMParams
    summary = "surrogate-gap SAM: SAM's perturbed gradient minus α × the plain gradient's orthogonal part"
    reference = "Zhuang et al. ICLR 2022; MEDFAIR models/GSAM (METHODS.md §3.11)"
