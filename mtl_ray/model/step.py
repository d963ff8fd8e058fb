"""What one training process does per batch, in plain torch: the optimisation step, prediction,
the learning-rate schedule, and the few collectives DDP workers need.

The Ray Train worker loop (`mtl_ray.train`), `mtl-ray advise`'s in-process probes and the
benchmarks' plain loops all step through `train_step`, so every path trains the same way.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from mtl_ray.config import TrainConfig
from mtl_ray.model.backbones import to_input, unwrap
from mtl_ray.model.losses import BatchLosses, batch_losses, known_tasks

if TYPE_CHECKING:
    from mtl_ray.model.weighting import Weighting


def world_size() -> int:
    """Workers in the active torch.distributed process group; 1 outside one."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(values: list[float]) -> list[float]:
    """Each value summed over the workers."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def mean_over_workers(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over the workers; the `reduce_mean` that weighting methods get under DDP."""
    if world_size() == 1:
        return t
    out = t.detach().clone()
    torch.distributed.all_reduce(out)
    return out / world_size()


def _average_gradients(model: torch.nn.Module) -> None:
    """Average `.grad` over workers by hand, for steps that ran under DDP's `no_sync()`."""
    n = world_size()
    if n == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= n


def whole_batches(batches: Iterable[dict]) -> Iterator[dict]:
    """Collated training batches of at least two rows, as batch norm needs: an epoch's last batch
    of one row joins the batch before it.

    Decided on rows read (kept plus skipped), which Ray Data's equal split makes the same on every
    worker, so DDP workers still take the same number of steps.
    """
    held = None
    for batch in batches:
        if held is None:
            held = batch
        elif len(batch["image"]) + int(batch["skipped"]) < 2:
            held = {
                "image": torch.cat([held["image"], batch["image"]]),
                "labels": torch.cat([held["labels"], batch["labels"]]),
                "skipped": held["skipped"] + batch["skipped"],
            }
        else:
            yield held
            held = batch
    if held is not None:
        yield held


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    weighting: Weighting,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One optimisation step: uint8 images moved as bytes, normalised on the device, bf16 on GPU.

    `reduction` is the loss reduction (`TrainConfig.loss_reduction`), passed by every caller so that
    no path trains with another one by default.

    The weighting method turns the per-task loss terms into gradients. Methods that edit gradients
    (GradNorm, PCGrad) run under DDP's `no_sync()` and the gradients are averaged here instead.
    A step whose gradients are not finite (a NaN or inf loss anywhere makes them so) is not taken;
    the gradients are read after they are averaged, so every DDP worker decides alike.
    Returns the weighted loss, the per-task terms (detached) and whether the step was taken.
    """
    x = to_input(images.to(device, non_blocking=True), channels_last=True)
    labels = labels.to(device, non_blocking=True)
    by_hand = weighting.manipulates_gradients and isinstance(model, torch.nn.parallel.DistributedDataParallel)
    if weighting.uses_features:
        unwrap(model).keep_features = True
    optimizer.zero_grad(set_to_none=True)
    with model.no_sync() if by_hand else contextlib.nullcontext():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        loss, terms = weighting.backward_batch(model, logits, labels, reduction)
    if by_hand:
        _average_gradients(model)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    finite = bool(torch.stack([g.isfinite().all() for g in grads]).all()) if grads else True
    if finite:
        optimizer.step()
        if weighting.needs_losses_after_step:
            weighting.after_step(losses_after_step(model, x, labels, device), known_tasks(labels))
    else:
        optimizer.zero_grad(set_to_none=True)
    return loss, terms, finite


def losses_after_step(
    model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> BatchLosses:
    """The batch's losses under the parameters just stepped (FAMO's second look at the batch), in
    training mode as the step saw it, with the model's buffers (batch-norm statistics) left as they were."""
    saved = [b.clone() for b in model.buffers()]
    with torch.no_grad():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        for buffer, value in zip(model.buffers(), saved, strict=True):
            buffer.copy_(value)
    return batch_losses(logits, labels)


def diverged(cfg: TrainConfig, epoch: int, step: int) -> str:
    """The one-line error for a run stopped by `max_nonfinite_steps` non-finite steps in a row."""
    return (
        f"epoch {epoch}, step {step}: the loss or its gradients were NaN or inf for {cfg.max_nonfinite_steps} "
        f"steps in a row (each skipped), so the run stopped; the learning rate (lr {cfg.lr:g}) is likely too high"
    )


def predict_batches(
    model: torch.nn.Module, batches: Iterable[dict], device: torch.device, autocast: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and targets over an iterable of {"image", "labels"} batches."""
    model.eval()
    probs, targets = [], []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for batch in batches:
            logits = model(to_input(batch["image"].to(device, non_blocking=True), channels_last=True))
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            targets.append(batch["labels"].cpu().numpy())
    return np.concatenate(probs), np.concatenate(targets)


def epoch_lr(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for 0-based `epoch`: constant, or cosine from `lr` at epoch 0 toward 0 after the last.

    Set per epoch rather than stepped by a scheduler object, so a resumed run needs no scheduler state.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
