"""The training stage, on Ray: the Ray Data pipeline (`dataset`), JPEG decoding in the worker
(`device_decode`), the Ray Train worker loop (`worker`) and its driver (`driver`, `inputs`), and the
Ray Tune search (`tune`, `search`, `trial_callbacks`)."""
