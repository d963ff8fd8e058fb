"""`mtl_ray.losses`, kept at its published path (docs/ and other tools import it): see `mtl_ray.model.losses`."""

from mtl_ray.model.losses import REDUCTIONS, known_tasks, masked_bce, per_task_losses, task_terms

__all__ = ["REDUCTIONS", "known_tasks", "masked_bce", "per_task_losses", "task_terms"]
