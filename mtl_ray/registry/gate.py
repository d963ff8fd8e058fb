"""The alias gate: does a newly registered version take the alias (`champion`) from the current one?

Both models are scored the same way on the same rows: each is loaded from the registry as users load
it (`mlflow.pyfunc`) and predicts the challenger's validation rows (at most `GATE_ROWS`, read from
the shards its checkpoint names), so two numbers measured on different data are never compared. A
checkpoint that names no validation rows (made before they were recorded), or whose rows cannot be
read here, falls back to the `mean_auroc` tags, and the reason says so.

- Different tasks do not compare: the alias stays, with the reason.
- A champion that cannot be loaded (its artifacts gone) is reported and loses to a loadable,
  scored challenger: an alias must point at a model that loads.
- An MLflow error while reading the alias is an error, never "no champion yet".
- Two registrations at once: the alias is re-read before it is written and again after, and the
  decision is taken again whenever another process moved it in between, or created it in the same
  instant (the database refuses the second writer), so the alias ends on the better model instead
  of on the last writer's.

Needs no Ray; loads models with MLflow and torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from mtl_ray.data.rows import shard_rows
from mtl_ray.errors import UserError, describe
from mtl_ray.model.metrics import evaluate, mean_auroc
from mtl_ray.result import number

GATE_METRIC = "mean_auroc"
GATE_ROWS = 2000
"""Validation rows both models predict at most (the first ones, in shard order)."""
ROUNDS = 5
"""Decisions taken again, at most, when other registrations keep moving the alias."""
SETTLE_S = 1.0
"""Wait after writing the alias before reading it back (another writer's window)."""
WRITE_RACE = ("unique constraint", "duplicate key")
"""How the database refuses the second of two writers creating the same alias at once (PostgreSQL:
`duplicate key value violates unique constraint "registered_model_alias_pk"`; SQLite: `UNIQUE
constraint failed`)."""


def champion(client, name: str, alias: str):
    """The version `alias` points at, or None when it points nowhere yet; any other failure to read it
    is raised: a registry that cannot be read must not pass for one without a champion."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if "not found" in exc.message and exc.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


def score(model_uri: str, images: list[bytes], labels: np.ndarray, tasks: list[str]) -> float | None:
    """Mean validation AUROC of the registered model at `model_uri` on these rows, loaded and run as
    users run it (`mlflow.pyfunc`)."""
    import mlflow.pyfunc
    import pandas as pd

    out = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"image": images}))
    return mean_auroc(evaluate(out[tasks].to_numpy(dtype=np.float64), labels, tasks))


@dataclass
class Decision:
    moved: bool
    reason: str
    scores: dict | None = None
    """{"rows", "challenger", "champion"}: both models on the same rows, when they were scored."""


def decide(name: str, alias: str, version: str, meta: dict, current) -> Decision:
    """Should `version` (trained as `meta` says) take `alias` from `current` (a model version or None)?"""
    tasks = meta["tasks"]
    own = meta["metrics"].get(GATE_METRIC)
    if own is None:
        return Decision(False, f"the new version has no validation {GATE_METRIC}")
    if current is None:
        return Decision(True, f"no {alias} yet")
    theirs = json.loads(current.tags.get("tasks", "null"))
    if theirs != tasks:
        return Decision(
            False, f"{alias} version {current.version} predicts other tasks ({theirs}): the scores do not compare"
        )
    val = (meta.get("data") or {}).get("val")
    why_tags = "the checkpoint names no validation rows"
    if val:
        try:
            _, images, labels = shard_rows(val["path"], GATE_ROWS, val.get("split"), tuple(tasks))
        except UserError as exc:
            images, why_tags = [], f"its validation rows cannot be read here ({exc})"
        if images:
            return _scored(name, alias, version, current, images, labels, tasks)
    raw = current.tags.get(GATE_METRIC)
    best = float(raw) if raw not in (None, "None") else None
    moved = best is None or own > best
    verb = "beats" if moved else "does not beat"
    return Decision(
        moved,
        f"{GATE_METRIC} {own:.4f} {verb} {alias} version {current.version} ({number(best, '.4f')}), "
        f"each on its own validation data: {why_tags}",
    )


def _scored(name: str, alias: str, version: str, current, images, labels, tasks) -> Decision:
    mine = score(f"models:/{name}/{version}", images, labels, tasks)
    try:
        theirs = score(f"models:/{name}/{current.version}", images, labels, tasks)
    except Exception as exc:  # its artifacts are gone, or its code no longer loads: it cannot stay champion
        return Decision(
            mine is not None,
            f"{alias} version {current.version} cannot be loaded ({describe(exc)}): replaced by a model that loads",
            {"rows": len(images), "challenger": mine, "champion": None},
        )
    scores = {"rows": len(images), "challenger": mine, "champion": theirs}
    moved = mine is not None and (theirs is None or mine > theirs)
    verb = "beats" if moved else "does not beat"
    return Decision(
        moved,
        f"{GATE_METRIC} {number(mine, '.4f')} {verb} {alias} version {current.version} ({number(theirs, '.4f')}) "
        f"on the same {len(images)} validation rows",
        scores,
    )


def settle(client, name: str, alias: str, version: str, meta: dict) -> Decision:
    """Decide, and move the alias if `version` wins; taken again while other writers move it."""
    decision = Decision(False, "")
    for _ in range(ROUNDS):
        current = champion(client, name, alias)
        decision = decide(name, alias, version, meta, current)
        if not decision.moved:
            return decision
        now = champion(client, name, alias)
        if _version(now) != _version(current):
            continue  # moved while we scored: decide against the new one
        try:
            client.set_registered_model_alias(name, alias, version)
        except Exception as exc:  # MLflow wraps the store's error in RestException or MlflowException
            if not any(mark in str(exc).lower() for mark in WRITE_RACE):
                raise
            continue  # another registration wrote the first alias at the same moment: decide against it
        time.sleep(SETTLE_S)
        if _version(champion(client, name, alias)) == version:
            return decision
    holder = _version(champion(client, name, alias))
    return Decision(holder == version, f"{decision.reason}; after {ROUNDS} rounds {alias} is version {holder}")


def _version(model_version) -> str | None:
    return None if model_version is None else str(model_version.version)
