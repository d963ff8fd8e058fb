"""A run's model settings checked before Ray starts, so a mistake is one line from the driver and
never an error inside a worker: backbone, image size against it, weighting and its parameters, trunk,
task groups."""

from __future__ import annotations

from mtl_ray.config import TrainConfig
from mtl_ray.data.images import show_size
from mtl_ray.errors import UserError
from mtl_ray.model.backbones import available, min_image_side
from mtl_ray.model.partition import partition_of
from mtl_ray.model.weighting import METHODS
from mtl_ray.model.weighting import get as get_weighting


def check_model_config(cfg: TrainConfig, tasks: list[str], size: tuple[int, int] | None = None) -> None:
    """Backbone, image size, weighting and task-group errors surface here, before Ray starts, not
    inside a worker.

    `tasks` are the run's tasks; `size` is the (height, width) the run trains at, when it is known
    (`cfg.image_size` otherwise).
    """
    if cfg.backbone not in available():
        raise UserError(f"unknown backbone {cfg.backbone!r}: available are {', '.join(available())}")
    size = size or cfg.size()
    least = min_image_side(cfg.backbone)
    if size is not None and min(size) < least:
        raise UserError(
            f"image size {show_size(size)} (HxW) is below backbone {cfg.backbone!r}'s "
            f"minimum of {least} px per side: set image_size to at least {least}"
        )
    method = get_weighting(cfg.weighting.name, len(tasks), **cfg.weighting.params())
    if cfg.trunk == "freeze" and cfg.init is None:
        raise UserError("trunk: freeze keeps the weights an init gave the trunk: set --init too")
    if cfg.trunk == "freeze" and method.manipulates_gradients:
        usable = [name for name, cls in METHODS.items() if not cls.manipulates_gradients]
        raise UserError(
            f"trunk: freeze leaves weighting {cfg.weighting.name!r} no shared gradients to work on: "
            f"use {', '.join(usable[:-1])} or {usable[-1]}"
        )
    if partition_of(cfg.groups, tasks) and cfg.init is not None:
        raise UserError(
            f"groups {cfg.groups!r} with init: init starts one shared network; a model of several networks "
            "trains from scratch (leave init unset, or groups)"
        )
