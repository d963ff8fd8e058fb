"""The model stage, in plain torch: backbones with one head per task, the masked loss, task weighting,
metrics, the train step and checkpoints. Nothing here imports Ray: the Ray Train workers, the
in-process probes, the benchmarks' plain loops and the registered model all run this same code."""
