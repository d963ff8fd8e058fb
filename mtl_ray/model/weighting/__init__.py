"""Task weighting methods by name: one class per method behind `base.Weighting` (its docstring has
the contract every method keeps: masked tasks, DDP, state in `state_dict`).

`get("gradnorm", T, **params)` builds one (with `groups`, one per group of a model of several
networks: `per_group.PerGroup`); `available()` lists the names.
"""

from __future__ import annotations

from typing import Any

from mtl_ray.errors import UserError
from mtl_ray.model.weighting.base import ReduceMean, Weighting
from mtl_ray.model.weighting.classic import DWA, Equal, Static, Uncertainty
from mtl_ray.model.weighting.famo import FAMO
from mtl_ray.model.weighting.gradient import IMTLG, MGDAUB, AlignedMTL, CAGrad
from mtl_ray.model.weighting.gradnorm import GradNorm
from mtl_ray.model.weighting.pcgrad import PCGrad, project_conflicting
from mtl_ray.model.weighting.per_group import PerGroup

__all__ = ["METHODS", "Weighting", "available", "get", "project_conflicting"]

METHODS: dict[str, type[Weighting]] = {
    cls.name: cls
    for cls in (Equal, Static, Uncertainty, GradNorm, DWA, PCGrad, FAMO, IMTLG, CAGrad, AlignedMTL, MGDAUB)
}


def available() -> list[str]:
    """Weighting method names."""
    return list(METHODS)


def get(
    name: str,
    num_tasks: int,
    reduce_mean: ReduceMean | None = None,
    groups: list[list[int]] | None = None,
    **params: Any,
) -> Weighting:
    """The weighting method `name` for `num_tasks` tasks, configured by `params`.

    Meant for `get(**config["weighting"], num_tasks=T, reduce_mean=step.mean_over_workers)` with a
    config like `{name: gradnorm, alpha: 1.5}`. An unknown name or parameter is a UserError that
    lists the valid ones. With `groups` (task positions; a `partition.PartitionedNet`'s), the method
    once per group, each with its tasks' values of the per-task parameters.
    """
    if groups:
        get(name, num_tasks, reduce_mean, **params)  # name and parameters checked against all T tasks
        per_task = METHODS[name].per_task_parameters

        def make(size: int, group: list[int]) -> Weighting:
            own = {k: [v[i] for i in group] if k in per_task else v for k, v in params.items()}
            return get(name, size, reduce_mean, **own)

        return PerGroup(groups, make, reduce_mean)
    cls = METHODS.get(name)
    if cls is None:
        raise UserError(f"unknown weighting {name!r}: available are {', '.join(available())}")
    valid = cls.parameter_names()
    for key in params:
        if key not in valid:
            raise UserError(f"weighting {name!r}: unknown parameter {key!r}; valid: {', '.join(valid) or 'none'}")
    return cls(num_tasks, reduce_mean, **params)
