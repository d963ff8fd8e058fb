"""Placing objects: per kind, for a whole batch of scenes at once, how many stand where, how big
(perspective from the road geometry) and in which colours (`place_objects`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from mtl_ray.data.synth.parts import (
    BOX,
    BUILDING,
    CAR,
    CAR_COLOURS,
    FIRST_PART,
    HOUSING,
    LAMP_COLOURS,
    LAMP_POST,
    LEAVES,
    LIGHT,
    LIT,
    MAX_PARTS,
    PALETTE,
    PARTS,
    PED,
    POLE,
    POLE_COLOURS,
    ROUND_SIGN,
    SHIRTS,
    SIGN_RED,
    SIGNAL_BOX,
    SKINS,
    STOP,
    TRAILER,
    TREE,
    TROUSERS,
    UNLIT,
    WALLS,
    WHITE,
    Placed,
)


def road_at(road: np.ndarray, y: np.ndarray | float, size: int):
    """Depth t (0 at the horizon, 1 at the bottom row), road centre and half width at row y."""
    horizon, far_x, near_x, far_half, near_half = (road[..., k] for k in range(5))
    t = (y - horizon) / (size - horizon)
    return t, far_x + (near_x - far_x) * t, far_half + (near_half - far_half) * t


class _Site(NamedTuple):
    """Where a batch of objects of one kind stand: their depth, size factor and the road there."""

    s: float  # image size / 64
    size: int
    f: np.ndarray  # perspective size factor, 0.5 at the horizon to 1.25 at the bottom row
    centre: np.ndarray
    half: np.ndarray  # road half width
    outer: np.ndarray  # half width including the sidewalks


class _Spawned(NamedTuple):
    """One kind's objects: centre x, sprite keys, part colours [m, parts, 3], code, lit windows."""

    x: np.ndarray
    keys: list[tuple]
    colours: np.ndarray
    code: np.ndarray  # car: colour index; traffic light: lit lamp; pedestrian: on the road; building: lit windows
    lit_count: np.ndarray | None = None  # buildings: how many windows are lit (0-4)
    lit_spots: np.ndarray | None = None  # buildings: [m, 4, 2] window (row, column) as fractions of the grid


def _choose(table: np.ndarray, u: np.ndarray) -> np.ndarray:
    return table[np.minimum((u * len(table)).astype(np.intp), len(table) - 1)]


def _px(value: np.ndarray, least: int) -> np.ndarray:
    return np.maximum(least, np.round(value)).astype(np.intp)


def _shade(colours: np.ndarray, u: np.ndarray, spread: float = 0.3) -> np.ndarray:
    return colours * (1 - spread / 2 + spread * u)[:, None]


def _kerb(site: _Site, side: np.ndarray, across: np.ndarray) -> np.ndarray:
    """A point on a random side's sidewalk, biased to its outer part."""
    sign = np.where(side < 0.5, -1.0, 1.0)
    return site.centre + sign * (site.half + (site.outer - site.half) * (0.35 + 0.65 * across))


def _on_road(site: _Site, across: np.ndarray) -> np.ndarray:
    return site.centre + site.half * (1.6 * across - 0.8)


def _fixed(colour: tuple, m: int) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.float32), (m, 3))


def _spawn_building(site: _Site, u: np.ndarray) -> _Spawned:
    m = len(u)
    w, h = _px((8 + 16 * u[:, 0]) * site.s, 6), _px((8 + 26 * u[:, 1]) * site.s, 6)
    step, pane = max(3, round(4 * site.s)), max(1, round(2 * site.s))
    wall = np.where(u[:, 2:3] < 0.3, _choose(CAR_COLOURS, u[:, 3]), _choose(WALLS, u[:, 3]))
    lit_count = np.where(u[:, 5] < 0.55, np.minimum(1 + (4 * u[:, 6]).astype(np.intp), 4), 0)
    lit_colours = [_choose(LIT, u[:, 7 + k]) for k in range(4)]
    colours = np.stack([_shade(wall, u[:, 4]), _fixed((45, 50, 65), m)] + lit_colours, axis=1)
    keys = [(a, b, step, pane) for a, b in zip(w.tolist(), h.tolist(), strict=True)]
    return _Spawned(
        u[:, 19] * site.size, keys, colours, (lit_count > 0).astype(np.intp), lit_count, u[:, 11:19].reshape(m, 4, 2)
    )


def _spawn_tree(site: _Site, u: np.ndarray) -> _Spawned:
    sign = np.where(u[:, 0] < 0.5, -1.0, 1.0)
    x = site.centre + sign * (site.outer + (2 + 0.35 * site.size * u[:, 1]) * site.f)
    d = _px((9 + 6 * u[:, 2]) * site.s * site.f, 5)
    trunk_w = _px(1.8 * site.s * site.f, 1)
    keys = list(
        zip(d.tolist(), trunk_w.tolist(), np.maximum(2, np.round(0.55 * d)).astype(np.intp).tolist(), strict=True)
    )
    colours = np.stack([_choose(LEAVES, u[:, 3]), _fixed((90, 60, 35), len(u))], axis=1)
    return _Spawned(x, keys, colours, np.zeros(len(u), dtype=np.intp))


def _spawn_car(site: _Site, u: np.ndarray) -> _Spawned:
    colour = np.minimum((u[:, 0] * len(CAR_COLOURS)).astype(np.intp), len(CAR_COLOURS) - 1)
    w = _px(22 * site.s * site.f * (0.85 + 0.3 * u[:, 1]), 10)
    keys = list(zip(w.tolist(), (u[:, 2] < 0.5).astype(np.intp).tolist(), strict=True))
    lamp = LAMP_COLOURS[np.minimum((2 * u[:, 5]).astype(np.intp), 1)]  # brake red or indicator amber
    colours = np.stack(
        [
            _shade(CAR_COLOURS[colour], u[:, 3]),
            _fixed((55, 75, 100), len(u)),
            _fixed((25, 25, 25), len(u)),
            _fixed(HOUSING, len(u)),
            lamp,
        ],
        axis=1,
    )
    return _Spawned(_on_road(site, u[:, 4]), keys, colours, colour)


def _spawn_pedestrian(site: _Site, u: np.ndarray) -> _Spawned:
    crossing = u[:, 0] < 0.2
    x = np.where(crossing, _on_road(site, 0.0625 + 0.875 * u[:, 1]), _kerb(site, u[:, 2], u[:, 3]))
    h = _px(19 * site.s * site.f * (0.85 + 0.3 * u[:, 4]), 9)
    keys = list(zip(h.tolist(), (u[:, 5] < 0.5).astype(np.intp).tolist(), strict=True))
    colours = np.stack([_choose(SKINS, u[:, 6]), _choose(SHIRTS, u[:, 7]), _choose(TROUSERS, u[:, 8])], axis=1)
    return _Spawned(x, keys, colours, crossing.astype(np.intp))


def _sign(site: _Site, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, face size, pole length and the usual three colours (red face, white, pole) of signs."""
    d = _px(10 * site.s * site.f * (0.85 + 0.3 * u[:, 2]), 6)
    pole = np.round(d * (1.6 + 0.8 * u[:, 3])).astype(np.intp)
    face = _shade(_fixed(SIGN_RED, len(u)), u[:, 4], 0.25)
    colours = np.stack([face, _fixed(WHITE, len(u)), _choose(POLE_COLOURS[:2], u[:, 5])], axis=1)
    return _kerb(site, u[:, 0], u[:, 1]), d, pole, colours


def _spawn_stop_sign(site: _Site, u: np.ndarray) -> _Spawned:
    x, d, pole, colours = _sign(site, u)
    return _Spawned(x, list(zip(d.tolist(), pole.tolist(), strict=True)), colours, np.zeros(len(u), dtype=np.intp))


def _spawn_round_sign(site: _Site, u: np.ndarray) -> _Spawned:
    x, d, pole, colours = _sign(site, u)
    keys = list(zip(d.tolist(), pole.tolist(), (u[:, 6] < 0.6).tolist(), strict=True))
    return _Spawned(x, keys, colours, np.zeros(len(u), dtype=np.intp))


def _spawn_traffic_light(site: _Site, u: np.ndarray) -> _Spawned:
    w = _px(6 * site.s * site.f * (0.85 + 0.3 * u[:, 2]), 4)
    pole = np.round(w * (2.5 + 2.0 * u[:, 3])).astype(np.intp)
    lit = np.minimum((3 * u[:, 4]).astype(np.intp), 2)
    housing, unlit, pole_colour = (_fixed(c, len(u)) for c in (HOUSING, UNLIT, (75, 78, 80)))
    colours = np.stack([housing, unlit, LAMP_COLOURS[lit], pole_colour], axis=1)
    return _Spawned(
        _kerb(site, u[:, 0], u[:, 1]), list(zip(w.tolist(), pole.tolist(), lit.tolist(), strict=True)), colours, lit
    )


def _spawn_pole(site: _Site, u: np.ndarray) -> _Spawned:
    h = _px(16 * site.s * site.f * (0.85 + 0.35 * u[:, 2]), 8)
    w = _px(1.5 * site.s * site.f * (0.8 + 0.6 * u[:, 3]), 1)
    keys = list(zip(h.tolist(), w.tolist(), (u[:, 4] < 0.3).tolist(), strict=True))
    return _Spawned(
        _kerb(site, u[:, 0], u[:, 1]), keys, _choose(POLE_COLOURS, u[:, 5])[:, None], np.zeros(len(u), dtype=np.intp)
    )


def _spawn_lamp_post(site: _Site, u: np.ndarray) -> _Spawned:
    w = _px(5 * site.s * site.f, 3)
    pole = np.round(w * (4 + 2 * u[:, 2])).astype(np.intp)
    colours = np.stack(
        [_fixed((50, 52, 55), len(u)), _fixed((255, 240, 190), len(u)), _fixed((75, 78, 80), len(u))], axis=1
    )
    return _Spawned(
        _kerb(site, u[:, 0], u[:, 1]),
        list(zip(w.tolist(), pole.tolist(), strict=True)),
        colours,
        np.zeros(len(u), dtype=np.intp),
    )


def _spawn_trailer(site: _Site, u: np.ndarray) -> _Spawned:
    """A car in every way but its tail-lamp cluster: only the cluster tells the car task which is which."""
    spawned = _spawn_car(site, u)
    return spawned._replace(colours=spawned.colours[:, :3], code=np.zeros(len(u), dtype=np.intp))


def _spawn_signal_box(site: _Site, u: np.ndarray) -> _Spawned:
    """A traffic light with every lamp dark: the housing on its pole, without a lit lamp."""
    w = _px(6 * site.s * site.f * (0.85 + 0.3 * u[:, 2]), 4)
    pole = np.round(w * (2.5 + 2.0 * u[:, 3])).astype(np.intp)
    colours = np.stack([_fixed(c, len(u)) for c in (HOUSING, UNLIT, (75, 78, 80))], axis=1)
    keys = list(zip(w.tolist(), pole.tolist(), strict=True))
    return _Spawned(_kerb(site, u[:, 0], u[:, 1]), keys, colours, np.zeros(len(u), dtype=np.intp))


def _spawn_box(site: _Site, u: np.ndarray) -> _Spawned:
    x = np.where(u[:, 0] < 0.7, _kerb(site, u[:, 1], u[:, 2]), _on_road(site, u[:, 3]))
    w = _px((12 + 12 * u[:, 4]) * site.s * site.f, 8)
    h = np.maximum(5, np.round(w * (0.45 + 0.35 * u[:, 5]))).astype(np.intp)
    colour = _shade(_choose(CAR_COLOURS, u[:, 6]), u[:, 7])
    keys = list(zip(w.tolist(), h.tolist(), (u[:, 8] < 0.5).tolist(), strict=True))
    return _Spawned(x, keys, np.stack([colour, colour * 0.6], axis=1), np.zeros(len(u), dtype=np.intp))


# kind, cumulative probabilities of 1, 2, ... objects per scene, depth range (None: on the horizon), spawner
_SPAWNS: tuple[
    tuple[int, tuple[float, ...], tuple[float, float] | None, Callable[[_Site, np.ndarray], _Spawned]], ...
] = (
    (BUILDING, (0.15, 0.35, 0.6, 0.85), None, _spawn_building),
    (TREE, (0.45, 0.8), (0.05, 0.9), _spawn_tree),
    (CAR, (0.48, 0.75, 0.9), (0.08, 1.08), _spawn_car),
    (PED, (0.45, 0.75, 0.92), (0.1, 1.05), _spawn_pedestrian),
    (STOP, (0.5, 0.93), (0.25, 1.05), _spawn_stop_sign),
    (LIGHT, (0.5, 0.93), (0.25, 1.05), _spawn_traffic_light),
    (ROUND_SIGN, (0.6, 0.93), (0.25, 1.05), _spawn_round_sign),
    (POLE, (0.45, 0.8), (0.05, 1.05), _spawn_pole),
    (LAMP_POST, (0.72,), (0.2, 1.05), _spawn_lamp_post),
    (BOX, (0.6, 0.9), (0.1, 1.05), _spawn_box),
    (TRAILER, (0.7,), (0.08, 1.08), _spawn_trailer),
    (SIGNAL_BOX, (0.7,), (0.25, 1.05), _spawn_signal_box),
)
_DRAWS = 20  # uniforms per object; the building spawner uses the most


def place_objects(rng: np.random.Generator, road: np.ndarray, size: int) -> Placed:
    """Draw every scene's objects, kind by kind for the whole batch, and order them for painting."""
    count = len(road)
    names = ("scene", "kind", "x", "row", "t", "code", "entries", "colours", "keys", "lit_count", "lit_spots")
    columns: dict[str, list] = {k: [] for k in names}
    for kind, cumulative, depth, spawn in _SPAWNS:
        scene = np.repeat(np.arange(count), np.searchsorted(cumulative, rng.random(count), side="right"))
        u = rng.random((len(scene), _DRAWS + 1))
        horizon = road[scene, 0]
        if depth is None:
            t = np.full(len(scene), -1.0)
            row = horizon + np.round(2 * size / 64 * u[:, 0])
        else:
            t = depth[0] + (depth[1] - depth[0]) * u[:, 0]
            row = horizon + t * (size - horizon)
        _, centre, half = road_at(road[scene], row, size)
        site = _Site(size / 64, size, 0.5 + 0.75 * np.maximum(t, 0), centre, half, half * road[scene, 5])
        spawned = spawn(site, u[:, 1:])
        colours = np.zeros((len(scene), MAX_PARTS, 3), dtype=np.float32)
        colours[:, : spawned.colours.shape[1]] = spawned.colours
        lit_count = np.zeros(len(scene), dtype=np.intp) if spawned.lit_count is None else spawned.lit_count
        lit_spots = np.zeros((len(scene), 4, 2)) if spawned.lit_spots is None else spawned.lit_spots
        for key, value in (
            ("scene", scene),
            ("kind", np.full(len(scene), kind)),
            ("x", spawned.x),
            ("row", row),
            ("t", t),
            ("code", spawned.code),
            ("colours", colours),
            ("keys", spawned.keys),
            ("lit_count", lit_count),
            ("lit_spots", lit_spots),
            ("entries", PARTS[kind] + lit_count),
        ):
            columns[key].append(value)
    keys = [k for part in columns.pop("keys") for k in part]
    arrays = {k: np.concatenate(v) for k, v in columns.items()}
    order = np.lexsort((np.arange(len(arrays["t"])), arrays["t"], arrays["scene"]))
    arrays = {k: v[order] for k, v in arrays.items()}
    scene, entries = arrays["scene"], arrays["entries"]
    start = np.cumsum(entries) - entries
    first = scene * PALETTE + FIRST_PART + start - start[np.searchsorted(scene, scene)]
    return Placed(
        scene=scene,
        kind=arrays["kind"],
        x=arrays["x"],
        row=arrays["row"],
        t=arrays["t"],
        code=arrays["code"],
        first=first,
        entries=entries,
        colours=arrays["colours"],
        keys=[keys[i] for i in order.tolist()],
        lit_count=arrays["lit_count"],
        lit_spots=arrays["lit_spots"],
    )
