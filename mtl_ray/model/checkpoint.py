"""Checkpoint directories: `model.pt` (model, weighting and optimizer state) plus `meta.json`.

`meta.json` holds what a reader needs without torch: tasks, backbone, image size, the run's config,
the last epoch's metrics and the per-epoch history. Only torch and the standard library are
imported here, because the registered model (`mtl_ray.pyfunc`) loads checkpoints in environments
without Ray.
"""

from __future__ import annotations

import json
import os

import torch

CHECKPOINT_FILE = "model.pt"
META_FILE = "meta.json"


def save(
    directory: str, model: torch.nn.Module, weighting: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict
) -> None:
    """A training checkpoint: model, weighting and optimizer state, so a run can resume from it."""
    state = {
        "model": model.state_dict(),
        "weighting": weighting.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": meta["epoch"],
    }
    write(directory, state, meta)


def write(directory: str, state: dict, meta: dict) -> None:
    """Write `model.pt` (torch `state`) and `meta.json` into `directory`."""
    torch.save(state, os.path.join(directory, CHECKPOINT_FILE))
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def load(directory: str) -> tuple[dict, dict]:
    """(torch state, meta) of a checkpoint directory written by `save`."""
    state = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    return state, load_meta(directory)


def input_spec(meta: dict) -> tuple[tuple[int, int], str]:
    """(height, width) and resize mode a checkpoint's model expects its images in.

    Checkpoints from before non-square sizes hold one side and were trained on squashed images.
    """
    image = meta["image"]
    size = image["size"]
    return ((size, size) if isinstance(size, int) else tuple(size)), image.get("resize", "squash")


def network(meta: dict) -> torch.nn.Module:
    """The network a checkpoint's model state loads into: its backbone, its kind of heads, one per task,
    and its task groups, one network each (`heads` and `groups` in meta only when not linear and not one
    network, so checkpoints from before either read as they did)."""
    from mtl_ray.model.partition import network

    return network(meta["backbone"], list(meta["tasks"]), meta.get("heads", "linear"), meta.get("groups"))


def load_meta(directory: str) -> dict:
    with open(os.path.join(directory, META_FILE)) as f:
        return json.load(f)
