"""Labels from what a scene shows: an object is visible when enough of it survives nearer objects
and the image edge; the seed tasks ask whether a kind is visible, and up to 100 derived tasks ask
about counts, positions, colours and combinations (`extra_task_names`, a fixed order)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mtl_ray.data.synth.parts import (
    BUILDING,
    CAR,
    CAR_BLUE,
    CAR_RED,
    CAR_WHITE,
    DISTRACTORS,
    KINDS,
    LIGHT,
    PED,
    SEED_KINDS,
    SEED_TASKS,
    STOP,
    Placed,
)

VISIBLE_FRACTION = 0.4


class _Summary:
    """Per scene and object kind, what the visible objects look like: [scenes, kinds] arrays."""

    def __init__(
        self, scenes: int, size: int, placed: Placed, shown: np.ndarray, at_edge: np.ndarray, visible: np.ndarray
    ):
        slot = (placed.scene * KINDS + placed.kind)[visible]
        x, t, code = placed.x[visible] / size, placed.t[visible], placed.code[visible]

        def tally(where: np.ndarray | None = None) -> np.ndarray:
            chosen = slot if where is None else slot[where]
            return np.bincount(chosen, minlength=scenes * KINDS).reshape(scenes, KINDS)

        def extreme(ufunc: np.ufunc, values: np.ndarray, empty: float) -> np.ndarray:
            out = np.full(scenes * KINDS, empty)
            ufunc.at(out, slot, values)
            return out.reshape(scenes, KINDS)

        self.count = tally()
        self.left, self.right = tally(x < 0.5), tally(x >= 0.5)
        self.near, self.far = tally(t >= 0.6), tally(t < 0.4)
        self.hidden, self.edge = tally(shown[visible] < 0.9), tally(at_edge[visible])
        self.code = [tally(code == c) for c in range(3)]
        self.min_x, self.max_x = extreme(np.minimum, x, np.inf), extreme(np.maximum, x, -np.inf)
        self.min_t, self.max_t = extreme(np.minimum, t, np.inf), extreme(np.maximum, t, -np.inf)

    def has(self, kind: int) -> np.ndarray:
        return self.count[:, kind] > 0


def task_labels(
    shown_pixels: np.ndarray, area: np.ndarray, at_edge: np.ndarray, placed: Placed, count: int, size: int
) -> np.ndarray:
    """bool [count, len(ALL_TASKS)] from what _paint saw of each placed object.

    An object is visible when at least VISIBLE_FRACTION of its key parts' pixels (of the whole
    sprite, so the image edge hides pixels too) survive the nearer objects, and a few pixels do.
    """
    shown = shown_pixels / np.maximum(area, 1)
    visible = (shown >= VISIBLE_FRACTION) & (shown_pixels >= 4 * (size / 64) ** 2)
    summary = _Summary(count, size, placed, shown, at_edge, visible)
    return np.stack([rule(summary) for _, rule in _RULES], axis=1)


def _derived_rules() -> list[tuple[str, Callable[[_Summary], np.ndarray]]]:
    """The extra tasks in their fixed order: a varied few first, then each family in turn."""
    kinds = dict(zip(SEED_TASKS, SEED_KINDS, strict=True))
    pairs = [(kinds[a], kinds[b], a, b) for i, a in enumerate(SEED_TASKS) for b in SEED_TASKS[i + 1 :]]
    ordered = [(kinds[a], kinds[b], a, b) for a in SEED_TASKS for b in SEED_TASKS if a != b]
    rules: dict[str, Callable[[_Summary], np.ndarray]] = {}

    def add(name: str, rule: Callable[[_Summary], np.ndarray]) -> None:
        rules.setdefault(name, rule)

    def seed_objects(f: _Summary) -> np.ndarray:
        return f.count[:, list(SEED_KINDS)].sum(axis=1)

    add("car_count_ge2", lambda f: f.count[:, CAR] >= 2)
    add("pedestrian_left_of_car", lambda f: f.min_x[:, PED] < f.max_x[:, CAR])
    add("car_and_stop_sign", lambda f: f.has(CAR) & f.has(STOP))
    add("pedestrian_on_road", lambda f: f.code[1][:, PED] > 0)
    add("traffic_light_red", lambda f: f.code[0][:, LIGHT] > 0)
    add("car_without_pedestrian", lambda f: f.has(CAR) & ~f.has(PED))
    add("pedestrian_count_ge2", lambda f: f.count[:, PED] >= 2)
    add("stop_sign_near", lambda f: f.near[:, STOP] > 0)
    for name, k in kinds.items():
        add(f"{name}_count_ge2", lambda f, k=k: f.count[:, k] >= 2)
    for name in ("pedestrian", "car"):
        add(f"{name}_count_ge3", lambda f, k=kinds[name]: f.count[:, k] >= 3)
    for name, k in kinds.items():
        add(f"{name}_count_eq1", lambda f, k=k: f.count[:, k] == 1)
    for ka, kb, a, b in pairs:
        add(f"{a}_and_{b}", lambda f, ka=ka, kb=kb: f.has(ka) & f.has(kb))
    for ka, kb, a, b in ordered:
        add(f"{a}_without_{b}", lambda f, ka=ka, kb=kb: f.has(ka) & ~f.has(kb))
    for ka, kb, a, b in ordered:
        add(f"{a}_left_of_{b}", lambda f, ka=ka, kb=kb: f.min_x[:, ka] < f.max_x[:, kb])
    for ka, kb, a, b in ordered:
        add(f"{a}_nearer_than_{b}", lambda f, ka=ka, kb=kb: f.max_t[:, ka] > f.min_t[:, kb])
    for ka, kb, a, b in pairs:
        add(f"{a}_or_{b}", lambda f, ka=ka, kb=kb: f.has(ka) | f.has(kb))
    for name, k in kinds.items():
        for what in ("left", "right", "near", "far"):
            add(
                f"{name}_{'on_' if what in ('left', 'right') else ''}{what}",
                lambda f, k=k, w=what: getattr(f, w)[:, k] > 0,
            )
        add(f"{name}_partly_hidden", lambda f, k=k: f.hidden[:, k] > 0)
        add(f"{name}_at_edge", lambda f, k=k: f.edge[:, k] > 0)
    for colour, code in (("red", CAR_RED), ("blue", CAR_BLUE), ("white", CAR_WHITE)):
        add(f"car_{colour}", lambda f, c=code: f.code[c][:, CAR] > 0)
    for lamp, code in (("red", 0), ("amber", 1), ("green", 2)):
        add(f"traffic_light_{lamp}", lambda f, c=code: f.code[c][:, LIGHT] > 0)
    for name, kind in DISTRACTORS:
        add(name, lambda f, k=kind: f.has(k))
    add("lit_windows", lambda f: f.code[1][:, BUILDING] > 0)
    for k in (2, 3, 4):
        add(f"seed_objects_ge{k}", lambda f, k=k: seed_objects(f) >= k)
    add("empty_street", lambda f: seed_objects(f) == 0)
    for skip in reversed(SEED_TASKS):
        names = [t for t in SEED_TASKS if t != skip]
        add("_and_".join(names), lambda f, ks=[kinds[t] for t in names]: (f.count[:, ks] > 0).all(axis=1))
    add("all_seed_objects", lambda f: (f.count[:, list(SEED_KINDS)] > 0).all(axis=1))
    return list(rules.items())


_RULES = [
    (name, lambda f, k=kind: f.has(k)) for name, kind in zip(SEED_TASKS, SEED_KINDS, strict=True)
] + _derived_rules()
ALL_TASKS = [name for name, _ in _RULES]


def extra_task_names(m: int) -> list[str]:
    """The first `m` derived task names; the list is fixed, so the same m always gives the same names."""
    return ALL_TASKS[len(SEED_TASKS) : len(SEED_TASKS) + m]
