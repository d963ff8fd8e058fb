"""`mtl_ray.models`, kept at its published path (docs/ and other tools import it): see `mtl_ray.model.backbones`."""

from mtl_ray.model.backbones import BACKBONES, MultiTaskNet, available, build, to_input

__all__ = ["BACKBONES", "MultiTaskNet", "available", "build", "to_input"]
