"""Methods that weight tasks by the geometry of their gradients: MGDA-UB (Sener & Koltun 2018), IMTL-G
(Liu et al. 2021), CAGrad (Liu et al. 2021) and Aligned-MTL (Senushkin et al. 2023).

Each needs only the Gram matrix of the known tasks' gradients (their inner products) to choose
weights αₖ; `GradientWeights.backward` builds it on the shared parameters or, for the `uses_features`
methods, on the trunk's output (one backward through the heads per task instead of through the
trunk). Weights are on equal weighting's scale: the papers' convex combinations (summing to 1)
are multiplied by the number of tasks that take part, so an update of the same length as the plain
sum's means the same thing under every method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from mtl_ray.errors import UserError
from mtl_ray.model.backbones import unwrap
from mtl_ray.model.losses import BatchLosses
from mtl_ray.model.weighting.base import (
    ReduceMean,
    Weighting,
    add_grads,
    known_only,
    number,
    task_grads,
    trainable,
)


def min_norm_weights(gram: torch.Tensor, iters: int = 250, tol: float = 1e-9) -> torch.Tensor:
    """α on the simplex minimising ‖Σₖ αₖgₖ‖² given the Gram matrix [K, K] of the gₖ: Frank-Wolfe
    with exact line search between the current point and the best vertex (Sener & Koltun 2018, Alg. 2)."""
    gram = gram.double()
    alpha = torch.full((gram.shape[0],), 1.0 / gram.shape[0], dtype=torch.float64)
    for _ in range(iters):
        toward = gram @ alpha
        t = int(torch.argmin(toward))
        vv, vt, tt = alpha @ toward, toward[t], gram[t, t]
        if vt >= vv:
            break
        gamma = 1.0 if vt >= tt else float((vv - vt) / (vv + tt - 2 * vt))
        step = -gamma * alpha
        step[t] += gamma
        alpha = alpha + step
        if step.abs().sum() < tol:
            break
    return alpha


def imtl_weights(gram: torch.Tensor) -> torch.Tensor:
    """IMTL-G's α (Liu et al., ICLR 2021, eq. 5): the combination d = Σₖ αₖgₖ with Σα = 1 whose
    projection on every task's unit gradient uₖ = gₖ/‖gₖ‖ is the same. With D's rows g₁ − gₖ and U's
    rows u₁ − uₖ (k ≥ 2): α₂..K = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σ α₂..K; a singular DUᵀ is pseudo-inverted."""
    gram = gram.double()
    if gram.shape[0] == 1:
        return torch.ones(1, dtype=torch.float64)
    # gu[i, j] = gᵢ·uⱼ
    gu = gram / gram.diagonal().sqrt().clamp_min(1e-30)[None, :]
    along = gu[:, :1] - gu[:, 1:]  # gᵢ·(u₁ − uⱼ), j ≥ 2
    du = along[:1] - along[1:]  # (g₁ − gᵢ)·(u₁ − uⱼ), i, j ≥ 2
    rest = along[0] @ torch.linalg.pinv(du)
    return torch.cat([1 - rest.sum().view(1), rest])


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of `v` [K] onto the probability simplex (Duchi et al. 2008)."""
    u, _ = torch.sort(v, descending=True)
    excess = u.cumsum(0) - 1
    rho = int((u - excess / torch.arange(1, len(v) + 1, dtype=v.dtype) > 0).nonzero().max())
    return (v - excess[rho] / (rho + 1)).clamp_min(0)


def cagrad_weights(gram: torch.Tensor, c: float, iters: int = 500) -> torch.Tensor:
    """CAGrad's α (Liu et al., NeurIPS 2021, Alg. 1, as its reference code with rescale 1): with
    g₀ the mean gradient, w on the simplex minimising g_wᵀg₀ + c‖g₀‖‖g_w‖ (projected gradient with
    backtracking), then d = (g₀ + c‖g₀‖/‖g_w‖ · g_w) / (1 + c²) = Σₖ αₖgₖ. Σα = 1 when c = 0."""
    gram = gram.double()
    k = gram.shape[0]
    uniform = torch.full((k,), 1.0 / k, dtype=torch.float64)
    g0_norm = (uniform @ gram @ uniform).clamp_min(0).sqrt() + 1e-8
    scaled = gram / gram.diagonal().mean().clamp_min(1e-30)  # the argmin is the same for any scale
    toward_g0 = scaled @ uniform
    radius = c * (uniform @ toward_g0).clamp_min(0).sqrt()

    def objective(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gw = scaled @ w
        norm = (w @ gw + 1e-12).sqrt()
        return w @ toward_g0 + radius * norm, toward_g0 + radius * gw / norm

    w, step = uniform, 1.0
    value, grad = objective(w)
    for _ in range(iters):
        while True:
            candidate = project_simplex(w - step * grad)
            new_value, new_grad = objective(candidate)
            moved = candidate - w
            if new_value <= value + grad @ moved + moved @ moved / (2 * step) or step < 1e-12:
                break
            step /= 2
        if moved.abs().sum() < 1e-12:
            break
        w, value, grad, step = candidate, new_value, new_grad, step * 2
    gw_norm = (w @ gram @ w).clamp_min(0).sqrt()
    return (uniform + c * g0_norm / (gw_norm + 1e-8) * w) / (1 + c**2)


def aligned_weights(gram: torch.Tensor) -> torch.Tensor:
    """Aligned-MTL's α (Senushkin et al., CVPR 2023, Alg. 1): with G's Gram matrix = VΛVᵀ over its
    rank, B = √λ_min · VΛ^(−½)Vᵀ makes the task gradients orthogonal with equal norms √λ_min (the
    smallest singular value of G); the update is their sum, d = Σₖ (Bᵀ1)ₖgₖ."""
    eigenvalues, vectors = torch.linalg.eigh(gram.double())
    tol = eigenvalues.max() * gram.shape[0] * torch.finfo(torch.float32).eps
    kept = eigenvalues > tol
    eigenvalues, vectors = eigenvalues[kept], vectors[:, kept]
    b = eigenvalues.min().sqrt() * (vectors / eigenvalues.sqrt()) @ vectors.T
    return b.sum(dim=0)


class GradientWeights(Weighting, ABC):
    """Base of the methods that choose task weights from the Gram matrix of the known tasks' gradients.

    On the shared parameters (CAGrad, Aligned-MTL), each known task's gradient is computed by its own
    backward pass through the trunk, averaged over workers by `reduce_mean` ([T, P], as PCGrad's),
    and the shared parameters get Σₖ αₖgₖ; the heads get the plain sum's gradient, as in the papers.
    On the trunk's output (`uses_features`: MGDA-UB, IMTL-G), each worker's per-task gradients of its
    batch's features give a local Gram matrix; their mean over workers is the Gram matrix of the
    whole global batch up to a factor, which no method's weights depend on. The weighted sum then
    takes one backward pass. A task without a known label on any worker takes no part and keeps its
    logged weight.
    """

    manipulates_gradients = True
    weighted_heads: ClassVar[bool] = False
    """On the features: whether the heads also get the weighted gradient (MGDA-UB) or the plain one."""
    convex: ClassVar[bool] = True
    """Whether `solve` returns a convex combination, which is then multiplied by the number of tasks."""

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.register_buffer("task_weights", torch.ones(num_tasks))

    def current_weights(self) -> torch.Tensor:
        return self.task_weights

    @abstractmethod
    def solve(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """The paper's weights [K] for the known tasks' Gram matrix [K, K] and mean losses [K]."""

    def backward(self, terms: torch.Tensor, known: torch.Tensor, model: nn.Module, losses: BatchLosses) -> torch.Tensor:
        net = unwrap(model)
        shared, heads = trainable(net.shared_parameters()), trainable(net.task_parameters())
        known = known.to(terms.device)
        masked = known_only(terms, known)
        flags = known.float()
        if self.uses_features:
            features, net.features = net.features, None
            if features is None:
                raise RuntimeError(f"weighting {self.name!r} needs the trunk's output: set keep_features on the model")
            grads = task_grads(masked, known, [features])
            mean = losses.mean.float().to(flags.device)
            stats = self.reduce_mean(torch.cat([grads @ grads.T, flags[None], (mean * flags)[None]]))
            gram = stats[: self.num_tasks]
        else:
            grads = self.reduce_mean(task_grads(masked, known, shared))
            gram = grads @ grads.T
            stats = self.reduce_mean(torch.stack([flags, losses.mean.float().to(flags.device) * flags]))
        share, loss_sum = stats[-2], stats[-1]
        active = (share > 0) & (gram.diagonal() > 0)
        weights = torch.zeros(self.num_tasks, device=terms.device)
        if active.any():
            index = active.nonzero().flatten()
            alpha = self.solve(gram[index][:, index], loss_sum[index] / share[index])
            weights[index] = alpha.to(weights.dtype) * (len(index) if self.convex else 1.0)
            self.task_weights[index] = weights[index]
        weighted = (weights.detach() * masked).sum()
        if not self.uses_features:
            masked.sum().backward(inputs=heads)
            add_grads(shared, weights @ grads)
        elif self.weighted_heads:
            weighted.backward()
        else:
            weighted.backward(inputs=shared, retain_graph=True)
            masked.sum().backward(inputs=heads)
        return weighted.detach()


NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDAUB(GradientWeights):
    """MGDA-UB (Sener & Koltun, NeurIPS 2018): the min-norm point of the convex hull of the tasks'
    gradients on the shared representation (the upper bound that needs one backward through the trunk),
    by Frank-Wolfe; the loss Σₖ αₖℓₖ then trains trunk and heads. `normalization` scales each gradient
    before the solve as the paper's code does: `loss+` by ℓₖ‖gₖ‖ (its default), `loss` by ℓₖ, `l2` by ‖gₖ‖."""

    name = "mgda_ub"
    uses_features = True
    weighted_heads = True

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None, normalization: str = "loss+") -> None:
        super().__init__(num_tasks, reduce_mean)
        if normalization not in NORMALIZATIONS:
            raise UserError(
                f"weighting {self.name!r}: parameter 'normalization' must be one of {', '.join(NORMALIZATIONS)}, "
                f"got {normalization!r}"
            )
        self.normalization = normalization

    def solve(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        scale = torch.ones_like(losses)
        if self.normalization in ("loss", "loss+"):
            scale = scale * losses.clamp_min(1e-12)
        if self.normalization in ("l2", "loss+"):
            scale = scale * gram.diagonal().sqrt()
        return min_norm_weights(gram / (scale[:, None] * scale[None, :]))


class IMTLG(GradientWeights):
    """IMTL-G (Liu et al., ICLR 2021): the shared representation's update has equal projections on
    every task's gradient direction (`imtl_weights`), so no task is favoured by its gradient's size;
    the heads train on their own losses, as in the paper."""

    name = "imtl"
    uses_features = True

    def solve(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        return imtl_weights(gram)


class CAGrad(GradientWeights):
    """Conflict-Averse Gradient descent (Liu et al., NeurIPS 2021): the update within c‖g₀‖ of the mean
    gradient g₀ that most improves the worst task (`cagrad_weights`); `c` 0.4 as in the paper's
    NYUv2 and Cityscapes runs (0 is equal weighting)."""

    name = "cagrad"

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None, c: float = 0.4) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.c = number(self.name, "c", c)

    def solve(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        return cagrad_weights(gram, self.c)


class AlignedMTL(GradientWeights):
    """Aligned-MTL (Senushkin et al., CVPR 2023): the task gradients made orthogonal and of equal
    length (the smallest singular value of their matrix) by `aligned_weights`, then summed, so the
    update's condition number is 1; its weights are the paper's, not rescaled."""

    name = "aligned"
    convex = False

    def solve(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        return aligned_weights(gram)
