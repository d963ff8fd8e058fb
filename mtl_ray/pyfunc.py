"""`mtl_ray.pyfunc`, kept because models registered before mtl-ray 0.2 pickled `mtl_ray.pyfunc.MultiTaskModel`:
where today's `mtl_ray` is already imported (the gate, `mtl-ray predict`) they unpickle it from here."""

from mtl_ray.registry.pyfunc import MultiTaskModel

__all__ = ["MultiTaskModel"]
