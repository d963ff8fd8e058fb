"""`mtl_ray.weighting`, kept at its published path (docs/ and other tools import it): see `mtl_ray.model.weighting`."""

from mtl_ray.model.weighting import METHODS, Weighting, available, get

__all__ = ["METHODS", "Weighting", "available", "get"]
