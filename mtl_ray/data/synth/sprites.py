"""Sprites: each object kind drawn as a map of part numbers (0 = transparent, key parts first),
anchored at its bottom centre and cached by its integer parameters."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import NamedTuple

import numpy as np

from mtl_ray.data.synth.parts import (
    BOX,
    BUILDING,
    CAR,
    LAMP_POST,
    LIGHT,
    PED,
    POLE,
    ROUND_SIGN,
    SIGNAL_BOX,
    STOP,
    TRAILER,
    TREE,
)


class Sprite(NamedTuple):
    """An object's picture, anchored at its bottom centre: pixels as [3, n] rows y, x and part."""

    height: int
    width: int
    anchor: int  # column of the bottom-centre point
    key_parts: int  # parts 1..key_parts are the object itself (not its pole or trunk)
    area: int  # pixels of the key parts
    rows: int  # buildings: the window grid (rows, columns, margin, step, pane); 0 for other kinds
    cols: int
    margin: int
    step: int
    pane: int
    pixels: np.ndarray


def _finish(parts: np.ndarray, key_parts: int, grid: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)) -> Sprite:
    ys, xs = np.nonzero(parts)
    values = parts[ys, xs]
    return Sprite(
        parts.shape[0],
        parts.shape[1],
        parts.shape[1] // 2,
        key_parts,
        int(np.count_nonzero(values <= key_parts)),
        *grid,
        np.stack([ys, xs, values]).astype(np.int32),
    )


@cache
def pane_pixels(pane: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(np.ones((pane, pane), dtype=bool))
    return ys, xs


@cache
def _disk(d: int) -> np.ndarray:
    c = (np.arange(d) + 0.5 - d / 2) ** 2
    return c[:, None] + c[None, :] <= (d / 2) ** 2


@cache
def _octagon(d: int) -> np.ndarray:
    c = np.abs(np.arange(d) + 0.5 - d / 2)
    return c[:, None] + c[None, :] <= d / 2 * 1.35


def _centred(parts: np.ndarray, mask: np.ndarray, top: int, value: int) -> None:
    left = (parts.shape[1] - mask.shape[1]) // 2
    region = parts[top : top + mask.shape[0], left : left + mask.shape[1]]
    region[mask] = value


def _bar(parts: np.ndarray, top: int, bottom: int, width: int, value: int) -> None:
    left = (parts.shape[1] - width) // 2
    parts[top:bottom, left : left + width] = value


@cache
def _pedestrian_sprite(h: int, striding: int) -> Sprite:
    """Head (1), shirt with arms (2), two legs (3)."""
    head = max(2, round(0.22 * h))
    body = max(2, round(0.34 * h))
    body_w = max(2, round(0.32 * h))
    arm = max(1, round(0.08 * h))
    leg = max(1, round(0.12 * h))
    gap = max(1, round((0.16 if striding else 0.06) * h))
    width = max(body_w + 2 * arm, 2 * leg + gap, head)
    parts = np.zeros((h, width), dtype=np.uint8)
    _centred(parts, _disk(head), 0, 1)
    _bar(parts, head, head + body, body_w, 2)
    _bar(parts, head, head + max(2, round(0.85 * body)), body_w + 2 * arm, 2)
    legs_left = (width - 2 * leg - gap) // 2
    parts[head + body :, legs_left : legs_left + leg] = 3
    parts[head + body :, legs_left + leg + gap : legs_left + 2 * leg + gap] = 3
    return _finish(parts, 3)


@cache
def _car_sprite(w: int, hatchback: int) -> Sprite:
    """Body and cabin (1), windows (2), two wheels (3), and at the rear the tail-lamp cluster: a small
    traffic-light head, dark housing (4) with one lit lamp (5)."""
    wheel = max(3, round(0.24 * w))
    body = max(3, round(0.28 * w))
    cabin = max(3, round(0.2 * w))
    height = cabin + body + (wheel + 1) // 2
    parts = np.zeros((height, w), dtype=np.uint8)
    c0, c1 = (round(0.12 * w), round(0.68 * w)) if hatchback else (round(0.22 * w), round(0.8 * w))
    parts[0:cabin, c0:c1] = 1
    parts[1:cabin, c0 + 1 : c1 - 1] = 2
    if c1 - c0 >= 9:
        parts[1:cabin, (c0 + c1) // 2] = 1
    parts[cabin : cabin + body, :] = 1
    disk = _disk(wheel)
    for centre in (round(0.22 * w), round(0.78 * w)):
        y0, x0 = height - wheel, max(0, min(w - wheel, centre - wheel // 2))
        parts[y0:height, x0 : x0 + wheel][disk] = 3
    lamp = max(1, round(0.09 * w))
    cluster_w, cluster_h = lamp + 2, 3 * lamp + 4
    top = max(0, cabin + body - cluster_h)
    parts[top : top + cluster_h, w - cluster_w : w] = 4
    for k in range(3):
        y = top + 1 + k * (lamp + 1)
        parts[y : y + lamp, w - cluster_w + 1 : w - 1][_disk(lamp)] = 5 if k == 0 else 4
    return _finish(parts, 5)


@cache
def _stop_sprite(d: int, pole: int) -> Sprite:
    """Red octagon (1) with a white bar (2) on a pole (3)."""
    parts = np.zeros((d + pole, d), dtype=np.uint8)
    _bar(parts, d // 2, d + pole, max(1, round(d / 6)), 3)
    _centred(parts, _octagon(d), 0, 1)
    bar = max(1, round(0.22 * d))
    margin = max(1, round(0.18 * d))
    parts[(d - bar) // 2 : (d - bar) // 2 + bar, margin : d - margin] = 2
    return _finish(parts, 2)


@cache
def _round_sign_sprite(d: int, pole: int, ring: bool) -> Sprite:
    """Red disk (1), white centre (2) when it is a ring sign, on a pole (3)."""
    parts = np.zeros((d + pole, d), dtype=np.uint8)
    _bar(parts, d // 2, d + pole, max(1, round(d / 6)), 3)
    _centred(parts, _disk(d), 0, 1)
    inner = d - 2 * max(1, round(d / 5))
    if ring and inner >= 2:
        _centred(parts, _disk(inner), (d - inner) // 2, 2)
    return _finish(parts, 2)


@cache
def _light_sprite(w: int, pole: int, lit: int) -> Sprite:
    """Dark box (1), unlit lamps (2), the lit lamp (3), pole (4)."""
    return _finish(_housing_on_pole(w, pole, lit, pole_part=4), 3)


def _housing_on_pole(w: int, pole: int, lit: int | None, pole_part: int) -> np.ndarray:
    """A traffic-light head's part map: dark box (1), three lamps (2 unlit, 3 the `lit` one), pole."""
    margin = max(1, round(0.15 * w))
    lamp = w - 2 * margin
    box = 3 * lamp + 4 * margin
    parts = np.zeros((box + pole, w), dtype=np.uint8)
    parts[:box] = 1
    _bar(parts, box, box + pole, max(1, round(w / 3)), pole_part)
    disk = _disk(lamp)
    for k in range(3):
        _centred(parts, disk, margin + k * (lamp + margin), 3 if k == lit else 2)
    return parts


@cache
def _trailer_sprite(w: int, hatchback: int) -> Sprite:
    """A car's body and cabin (1), windows (2) and wheels (3), without the tail-lamp cluster."""
    car = _car_sprite(w, hatchback)
    keep = car.pixels[2] <= 3
    return car._replace(key_parts=3, area=int(np.count_nonzero(car.pixels[2][keep] <= 3)), pixels=car.pixels[:, keep])


@cache
def _signal_box_sprite(w: int, pole: int) -> Sprite:
    """A traffic light's dark housing (1) with unlit lamps (2), on a pole (3)."""
    return _finish(_housing_on_pole(w, pole, None, pole_part=3), 2)


@cache
def _pole_sprite(h: int, w: int, cap: bool) -> Sprite:
    """A bare pole (1), sometimes with a wider cap."""
    parts = np.zeros((h, w + 2 if cap else w), dtype=np.uint8)
    _bar(parts, 0, h, w, 1)
    if cap:
        parts[: max(1, round(h / 10))] = 1
    return _finish(parts, 1)


@cache
def _lamp_post_sprite(w: int, pole: int) -> Sprite:
    """Lamp head (1) with a bright lamp (2) under it, on a pole (3)."""
    head = max(2, round(0.4 * w))
    parts = np.zeros((head + 1 + pole, w), dtype=np.uint8)
    _bar(parts, head, head + 1 + pole, max(1, round(w / 4)), 3)
    parts[:head] = 1
    _bar(parts, head, head + max(1, head // 2), max(1, w - 2), 2)
    return _finish(parts, 3)


@cache
def _tree_sprite(d: int, trunk_w: int, trunk_h: int) -> Sprite:
    """Round canopy (1) on a trunk (2)."""
    parts = np.zeros((d + trunk_h, d), dtype=np.uint8)
    _bar(parts, d // 2, d + trunk_h, trunk_w, 2)
    _centred(parts, _disk(d), 0, 1)
    return _finish(parts, 2)


@cache
def _box_sprite(w: int, h: int, banded: bool) -> Sprite:
    """A plain box in a car colour (1), sometimes with a darker band (2)."""
    parts = np.ones((h, w), dtype=np.uint8)
    if banded:
        parts[max(1, h // 3) : max(2, h // 3 + h // 5)] = 2
    return _finish(parts, 2)


@cache
def _building_sprite(w: int, h: int, step: int, pane: int) -> Sprite:
    """A wall (1) with a grid of dark windows (2); lit windows are painted over it per building."""
    parts = np.ones((h, w), dtype=np.uint8)
    margin = max(1, step // 2)
    rows, cols = max(0, (h - 2 * margin + step - pane) // step), max(0, (w - 2 * margin + step - pane) // step)
    for r in range(rows):
        for c in range(cols):
            parts[margin + r * step : margin + r * step + pane, margin + c * step : margin + c * step + pane] = 2
    return _finish(parts, 2, (max(rows, 1), max(cols, 1), margin, step, pane))


SPRITES: dict[int, Callable[..., Sprite]] = {
    PED: _pedestrian_sprite,
    CAR: _car_sprite,
    STOP: _stop_sprite,
    LIGHT: _light_sprite,
    ROUND_SIGN: _round_sign_sprite,
    POLE: _pole_sprite,
    LAMP_POST: _lamp_post_sprite,
    BUILDING: _building_sprite,
    TREE: _tree_sprite,
    BOX: _box_sprite,
    TRAILER: _trailer_sprite,
    SIGNAL_BOX: _signal_box_sprite,
}
