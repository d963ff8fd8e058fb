"""Task weighting: how the per-task loss terms become one update, selected by name.

Every method is a `Weighting` module. Per batch the train loop passes it the per-task terms from
`losses.task_terms` and which tasks have a known label (`losses.known_tasks`); `backward` runs the backward
pass(es) and leaves gradients in `.grad`. A task with no known label in the batch is masked out:
it contributes no gradient, no regulariser and no state update.

Optimizer: `weighting.parameters()` is exactly what the main optimizer must also train (only
`uncertainty`'s log-variances; put them in a group without weight decay, which would pull them
toward 0). State a method updates itself (GradNorm's weights, DWA's loss history) lives in buffers,
so `state_dict()` checkpoints everything and `.to(device)` moves it.

DDP: `reduce_mean` (default identity; the train loop gives `step.mean_over_workers`) averages a tensor
over workers. Every method passes whatever decides its weights through it, in the same calls on
every worker, so all workers hold the same weights; the weighting's own parameter gradients go
through it too, since DDP does not see them. Methods with `manipulates_gradients` (gradnorm,
pcgrad) take several backward passes per batch, so the loop runs forward and `backward` under DDP
`no_sync()` and all-reduces the model's gradients afterwards.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from mtl_ray.errors import UserError
from mtl_ray.models import unwrap

ReduceMean = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _masked(terms: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """`terms` with unknown tasks' entries replaced by 0 (`where`, so even a NaN cannot leak)."""
    return torch.where(known.to(terms.device), terms, torch.zeros_like(terms))


def _trainable(params) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def _flat_grads(loss: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    """d loss / d params, flattened and concatenated (zeros for parameters it does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1).float() for p, g in zip(params, grads, strict=True)]
    )


class Weighting(nn.Module):
    """Base class: combines per-task loss terms [T] into gradients. Subclasses set `name` and
    override `current_weights` (plus `loss` when the objective is more than a weighted sum of
    the terms), or `backward` itself when they need more than one backward pass."""

    name: ClassVar[str]
    manipulates_gradients: ClassVar[bool] = False

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.reduce_mean: ReduceMean = reduce_mean or _identity

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The method's config parameters: its constructor's keywords after the common ones."""
        names = list(inspect.signature(cls.__init__).parameters)
        return [n for n in names if n not in ("self", "num_tasks", "reduce_mean")]

    def current_weights(self) -> torch.Tensor:
        """Per-task multipliers [T] of the task terms in the objective."""
        return torch.ones(self.num_tasks)

    def weights(self) -> list[float]:
        """Current per-task weights, for logging."""
        return self.current_weights().detach().cpu().tolist()

    def loss(self, terms: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """The scalar objective over the known tasks."""
        return (self.current_weights().to(terms.device) * _masked(terms, known)).sum()

    def backward(self, terms: torch.Tensor, known: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """Back-propagate the objective into `.grad` of `model`'s and this module's parameters.

        `terms` [T] from `losses.task_terms`, `known` bool [T] from `losses.known_tasks`. Returns the
        objective, detached, for logging.
        """
        total = self.loss(terms, known)
        total.backward()
        self._reduce_parameter_grads()
        return total.detach()

    def epoch_end(self, mean_terms: torch.Tensor) -> None:
        """Per-epoch hook with the epoch's mean task terms [T] on this worker; no-op by default."""

    def _reduce_parameter_grads(self) -> None:
        params = list(self.parameters())
        if not params:
            return
        flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])
        flat = self.reduce_mean(flat)
        for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad = g.view_as(p).clone()


def _number(method: str, name: str, value: Any, *, positive: bool = False) -> float:
    """`value` as a float, or a UserError naming the parameter; numbers must be ≥ 0 (or > 0)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise UserError(f"weighting {method!r}: parameter {name!r} must be a number {bound}, got {value!r}")
    return float(value)


class Equal(Weighting):
    """Every task term weighted 1: the plain sum, a strong baseline when tuned (Kurin et al. 2022;
    Xin et al. 2022)."""

    name = "equal"


class Static(Weighting):
    """Fixed per-task weights from the config, one non-negative number per task."""

    name = "static"

    def __init__(
        self, num_tasks: int, reduce_mean: ReduceMean | None = None, weights: Sequence[float] | None = None
    ) -> None:
        super().__init__(num_tasks, reduce_mean)
        if weights is None:
            raise UserError(
                f"weighting 'static': parameter 'weights' is required: a list of {num_tasks} numbers >= 0, one per task"
            )
        if not isinstance(weights, (list, tuple)):
            raise UserError(
                f"weighting 'static': parameter 'weights' must be a list of {num_tasks} numbers >= 0, got {weights!r}"
            )
        if len(weights) != num_tasks:
            raise UserError(f"weighting 'static': expected {num_tasks} weights (one per task), got {len(weights)}")
        values = [_number(self.name, "weights", w) for w in weights]
        self.register_buffer("task_weights", torch.tensor(values), persistent=False)

    def current_weights(self) -> torch.Tensor:
        return self.task_weights


class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018):
    Σₖ ½·e^(−sₖ)·ℓₖ + ½·sₖ over the known tasks, with learnable sₖ = log σₖ² starting at 0.

    `log_vars` is trained by the main optimizer. A noisy task's loss stays high, so its sₖ grows
    (toward log ℓₖ) and its weight ½·e^(−sₖ) shrinks.
    """

    name = "uncertainty"

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def current_weights(self) -> torch.Tensor:
        return 0.5 * torch.exp(-self.log_vars)

    def loss(self, terms: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        per_task = self.current_weights() * terms + 0.5 * self.log_vars
        return _masked(per_task, known).sum()


class GradNorm(Weighting):
    """GradNorm (Chen et al., ICML 2018): adapts weights wₖ so that the gradient norm of wₖ·ℓₖ on
    the last shared layer, Gₖ = wₖ·‖∇ℓₖ‖, approaches mean(G)·rₖ^α, where rₖ = (ℓₖ/ℓₖ(0)) divided
    by its mean over tasks is the relative inverse training rate: tasks that train slower get
    larger gradients.

    The model's gradient uses the current weights; then wₖ take one step down
    L_grad = Σₖ |Gₖ − target_k| (targets held constant) and are renormalised to sum to T. The
    step's gradient is scaled to unit RMS, so `lr` is in weight units whatever the gradient
    scale. ℓₖ(0) is a task's first term with a known label. Tasks without a known label keep
    their weight and take no part in the step. Norms, terms and weights go through
    `reduce_mean`, in one call per batch, as means over the workers that know each task.
    """

    name = "gradnorm"
    manipulates_gradients = True
    MIN_WEIGHT = 1e-3

    def __init__(
        self, num_tasks: int, reduce_mean: ReduceMean | None = None, alpha: float = 1.5, lr: float = 0.025
    ) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.alpha = _number(self.name, "alpha", alpha)
        self.lr = _number(self.name, "lr", lr, positive=True)
        self.register_buffer("task_weights", torch.ones(num_tasks))
        self.register_buffer("initial_terms", torch.full((num_tasks,), math.nan))

    def current_weights(self) -> torch.Tensor:
        return self.task_weights

    def backward(self, terms: torch.Tensor, known: torch.Tensor, model: nn.Module) -> torch.Tensor:
        layer = _trainable(unwrap(model).last_shared_layer().parameters())
        norms = torch.zeros(self.num_tasks, device=terms.device)
        for k in known.nonzero().flatten().tolist():
            norms[k] = _flat_grads(terms[k], layer).norm()
        total = self.loss(terms, known)
        total.backward()
        self._update(terms.detach().float(), norms, known.to(terms.device))
        return total.detach()

    def _update(self, terms: torch.Tensor, norms: torch.Tensor, known: torch.Tensor) -> None:
        flags = known.float()
        stats = self.reduce_mean(torch.stack([terms * flags, norms * flags, flags, self.task_weights]))
        share = stats[2]
        terms, norms = stats[0] / share.clamp_min(1e-12), stats[1] / share.clamp_min(1e-12)
        seen = share > 0
        weights = stats[3].clone()
        first = seen & torch.isnan(self.initial_terms)
        self.initial_terms[first] = terms[first]
        active = seen & (self.initial_terms > 0)
        if active.sum() >= 2:
            rate = terms[active] / self.initial_terms[active]
            rate = rate / rate.mean()
            grad_norms = weights[active] * norms[active]
            target = grad_norms.mean() * rate**self.alpha
            # d|Gₖ − target_k| / dwₖ with the target constant and Gₖ = wₖ·‖∇ℓₖ‖.
            step = torch.sign(grad_norms - target) * norms[active]
            rms = step.square().mean().sqrt()
            if rms > 0:
                budget = self.num_tasks - weights[~active].sum()
                updated = (weights[active] - self.lr * step / rms).clamp_min(self.MIN_WEIGHT)
                weights[active] = updated * (budget / updated.sum())
        self.task_weights.copy_(weights)


class DWA(Weighting):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019): wₖ = T·softmax(rₖ / temperature)
    with rₖ = Lₖ(t−1) / Lₖ(t−2), each task's mean loss ratio over the last two epochs, so a task
    whose loss falls slowly gets more weight. Weights are 1 for the first two epochs, and rₖ = 1
    for a task without loss in either epoch. Epoch means go through `reduce_mean`.
    """

    name = "dwa"

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None, temperature: float = 2.0) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.temperature = _number(self.name, "temperature", temperature, positive=True)
        self.register_buffer("task_weights", torch.ones(num_tasks))
        self.register_buffer("history", torch.full((2, num_tasks), math.nan))

    def current_weights(self) -> torch.Tensor:
        return self.task_weights

    def epoch_end(self, mean_terms: torch.Tensor) -> None:
        mean = self.reduce_mean(mean_terms.detach().float().to(self.history.device))
        self.history.copy_(torch.stack([self.history[1], mean]))
        before, last = self.history
        if torch.isnan(before).any():
            return
        defined = (before > 0) & (last > 0)
        ratio = torch.where(defined, last / before.clamp_min(1e-12), torch.ones_like(last))
        self.task_weights.copy_(self.num_tasks * torch.softmax(ratio / self.temperature, dim=0))


def project_conflicting(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad's projection (Yu et al. 2020, Algorithm 1) of per-task gradients [T, P] → [T, P].

    Each task's gradient, for every other task in random order whose original gradient it
    conflicts with (negative dot product), drops its component along that gradient. Zero rows
    (tasks without a known label) conflict with nothing.
    """
    projected = grads.clone()
    norms_sq = (grads * grads).sum(dim=1).clamp_min(torch.finfo(grads.dtype).tiny)
    for i in range(grads.shape[0]):
        for j in torch.randperm(grads.shape[0], generator=generator).tolist():
            if j != i:
                conflict = (projected[i] @ grads[j]).clamp(max=0)
                projected[i] -= conflict / norms_sq[j] * grads[j]
    return projected


class PCGrad(Weighting):
    """Projecting Conflicting Gradients (Yu et al., NeurIPS 2020): per-task gradients on the
    shared parameters are projected with `project_conflicting` and summed; task-specific (head)
    parameters get the ordinary gradient of the summed loss.

    Per-task gradients go through `reduce_mean` before the projection, and the random order
    comes from a generator seeded with `seed`, so every worker projects the same global-batch
    gradients the same way (cost: T× a normal all-reduce of the shared gradients).
    """

    name = "pcgrad"
    manipulates_gradients = True

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None, seed: int = 0) -> None:
        super().__init__(num_tasks, reduce_mean)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UserError(f"weighting 'pcgrad': parameter 'seed' must be an integer, got {seed!r}")
        self.generator = torch.Generator().manual_seed(seed)

    def backward(self, terms: torch.Tensor, known: torch.Tensor, model: nn.Module) -> torch.Tensor:
        net = unwrap(model)
        shared = _trainable(net.shared_parameters())
        heads = _trainable(net.task_parameters())
        masked = _masked(terms, known)
        grads = torch.zeros(self.num_tasks, sum(p.numel() for p in shared), device=terms.device)
        for k in known.nonzero().flatten().tolist():
            grads[k] = _flat_grads(masked[k], shared)
        total = masked.sum()
        total.backward(inputs=heads)
        combined = project_conflicting(self.reduce_mean(grads), self.generator).sum(dim=0)
        for p, g in zip(shared, combined.split([p.numel() for p in shared]), strict=True):
            g = g.view(p.shape).to(p.dtype)
            if p.grad is None:
                p.grad = torch.empty_like(p).copy_(g)
            else:
                p.grad.add_(g)
        return total.detach()


METHODS: dict[str, type[Weighting]] = {cls.name: cls for cls in (Equal, Static, Uncertainty, GradNorm, DWA, PCGrad)}


def available() -> list[str]:
    """Weighting method names."""
    return list(METHODS)


def get(name: str, num_tasks: int, reduce_mean: ReduceMean | None = None, **params: Any) -> Weighting:
    """The weighting method `name` for `num_tasks` tasks, configured by `params`.

    Meant for `get(**config["weighting"], num_tasks=T, reduce_mean=step.mean_over_workers)` with a
    config like `{name: gradnorm, alpha: 1.5}`. An unknown name or parameter is a UserError that
    lists the valid ones.
    """
    cls = METHODS.get(name)
    if cls is None:
        raise UserError(f"unknown weighting {name!r}: available are {', '.join(available())}")
    valid = cls.parameter_names()
    for key in params:
        if key not in valid:
            raise UserError(f"weighting {name!r}: unknown parameter {key!r}; valid: {', '.join(valid) or 'none'}")
    return cls(num_tasks, reduce_mean, **params)
