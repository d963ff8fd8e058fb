"""`mtl-ray data synth`: procedural driving scenes whose tasks share parts (see `dataset`)."""
