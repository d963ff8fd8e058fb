"""Rendering a batch of scenes: the background (sky, ground, road, lane mark), every placed object's
sprite scattered into one canvas of palette entries, then one gather through the palettes, which also
carry brightness jitter and pixel noise. The canvas doubles as the visibility map the labels come from.
"""

from __future__ import annotations

import numpy as np

from mtl_ray.data.synth.labels import ALL_TASKS, task_labels
from mtl_ray.data.synth.parts import (
    BUILDING,
    GROUND,
    LANE,
    MAX_PARTS,
    NOISE,
    PALETTE,
    PARTS,
    ROAD,
    SIDEWALK,
    SKY_BANDS,
    Placed,
)
from mtl_ray.data.synth.spawn import place_objects, road_at
from mtl_ray.data.synth.sprites import SPRITES, pane_pixels


def render_scenes(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` scenes from `rng`: uint8 images [n, size, size, 3] and bool labels [n, T], T being the
    seed tasks followed by every derived task in `extra_task_names` order."""
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    truth = np.empty((n, len(ALL_TASKS)), dtype=bool)
    batch = max(1, min(256, (1 << 20) // (size * size)))
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        truth[start:stop] = _render_batch(rng, images[start:stop], size)
    return images, truth


def _render_batch(rng: np.random.Generator, out: np.ndarray, size: int) -> np.ndarray:
    """Paint len(out) scenes into `out` and return their labels over ALL_TASKS."""
    count = len(out)
    road, palette = _background(rng, count, size)
    canvas = _zones(road, size)
    placed = place_objects(rng, road, size)
    seen = _paint(canvas, placed, palette, size)
    brightness = (0.78 + 0.4 * rng.random(count)).astype(np.float32)
    levels = palette[:, None, :, :] * brightness[:, None, None, None] + NOISE[None, :, None, None]
    lookup = np.clip(levels, 0, 255).astype(np.uint8).reshape(-1, 3)
    index = rng.integers(0, len(NOISE), size=canvas.shape, dtype=np.uint8).astype(np.intp)
    index *= PALETTE
    index += canvas
    index += (np.arange(count, dtype=np.intp) * (len(NOISE) * PALETTE))[:, None, None]
    np.take(lookup, index, axis=0, out=out, mode="clip")
    return task_labels(*seen, placed, count, size)


def _background(rng: np.random.Generator, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-scene road geometry [count, 8] and a float32 palette [count, PALETTE, 3] with the background set."""
    r = rng.random((count, 16))
    horizon = np.floor(size * (0.34 + 0.14 * r[:, 0]))
    far_x = size * (0.3 + 0.4 * r[:, 1])
    near_x = far_x + size * 0.6 * (r[:, 2] - 0.5)
    far_half = np.full(count, size * 0.015)
    near_half = size * (0.26 + 0.2 * r[:, 3])
    sidewalk = 1.3 + 0.3 * r[:, 4]
    lane = np.where(r[:, 5] < 0.85, 0.6 + 0.5 * r[:, 6], 0.0)  # dash spacing; 0 = no lane mark
    road = np.stack([horizon, far_x, near_x, far_half, near_half, sidewalk, lane, r[:, 7]], axis=1)

    palette = np.zeros((count, PALETTE, 3), dtype=np.float32)
    skies = np.array(
        [[[70, 130, 210], [175, 205, 235]], [[150, 160, 175], [205, 208, 212]], [[85, 85, 150], [240, 165, 115]]],
        dtype=np.float32,
    )  # top and horizon colour of a clear, an overcast and a dusk sky
    sky = skies[np.searchsorted([0.5, 0.8], r[:, 8])]  # day, overcast, dusk: 50, 30, 20 %
    sky = sky * (0.9 + 0.2 * r[:, 9])[:, None, None]
    mix = (np.arange(SKY_BANDS, dtype=np.float32) + 0.5) / SKY_BANDS
    palette[:, :SKY_BANDS] = sky[:, :1] + (sky[:, 1:] - sky[:, :1]) * mix[None, :, None]
    grounds = np.array([[70, 120, 50], [140, 130, 80], [110, 90, 70]], dtype=np.float32)
    palette[:, GROUND] = grounds[(r[:, 10] * len(grounds)).astype(int)] * (0.85 + 0.3 * r[:, 11])[:, None]
    palette[:, SIDEWALK] = np.array([165, 160, 150], dtype=np.float32) * (0.85 + 0.25 * r[:, 12])[:, None]
    palette[:, ROAD] = np.array([78, 78, 84], dtype=np.float32) * (0.7 + 0.6 * r[:, 13])[:, None]
    lanes = np.array([[235, 235, 225], [225, 190, 60]], dtype=np.float32)
    palette[:, LANE] = lanes[(r[:, 14] < 0.3).astype(int)]
    return road, palette


def _zones(road: np.ndarray, size: int) -> np.ndarray:
    """Background canvas [count, size, size] of entries: sky bands, ground, sidewalk, road, lane."""
    rows = np.arange(size, dtype=np.float64) + 0.5
    t, centre, half = road_at(road[:, None, :], rows[None, :], size)
    horizon = road[:, 0:1]
    sky = rows[None, :] < horizon
    outer = half * road[:, 5:6]
    dash = (np.mod(road[:, 6:7] / (t + 0.12) + road[:, 7:8], 1.0) < 0.5) & (road[:, 6:7] > 0)
    lane_half = np.where(dash, (0.35 + 0.9 * t) * size / 64, -1.0)
    bounds = [centre - outer, centre - half, centre + half, centre + outer, centre - lane_half, centre + lane_half]
    bounds = [np.where(sky, np.inf, v).astype(np.float32)[:, :, None] for v in bounds]
    base = np.where(sky, np.minimum(rows[None, :] * SKY_BANDS // horizon, SKY_BANDS - 1), GROUND).astype(np.uint8)
    x = np.arange(size, dtype=np.float32) + 0.5
    canvas = base[:, :, None] + (x >= bounds[0]).view(np.uint8)
    canvas += (x >= bounds[1]).view(np.uint8)
    canvas -= (x >= bounds[2]).view(np.uint8)
    canvas -= (x >= bounds[3]).view(np.uint8)
    canvas += ((x >= bounds[4]) & (x < bounds[5])).view(np.uint8)
    return canvas


def _paint(
    canvas: np.ndarray, placed: Placed, palette: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint every object into its scene's canvas and set the palette entries of its parts.

    Entries are handed out in drawing order, so within a scene a nearer object's entries are
    larger than a farther one's (and than the background's): scattering every sprite pixel of
    the batch with a maximum paints them all at once with the right one on top. Returns per
    object the key-part pixels left visible, the sprite's key-part area, and whether the image
    edge cuts the sprite.
    """
    count = len(canvas)
    used = np.arange(MAX_PARTS) < placed.entries[:, None]
    palette.reshape(-1, 3)[(placed.first[:, None] + np.arange(MAX_PARTS))[used]] = placed.colours[used]
    sprites = [SPRITES[kind](*key) for kind, key in zip(placed.kind.tolist(), placed.keys, strict=True)]
    numbers = np.array([sp[:10] for sp in sprites], dtype=np.intp).reshape(-1, 10).T
    height, width, anchor, key_parts, area, rows, cols, margin, step, pane = numbers
    top = np.round(placed.row).astype(np.intp) - height
    left = np.round(placed.x).astype(np.intp) - anchor
    entry = placed.first % PALETTE
    if sprites:
        pixels = np.concatenate([sp.pixels for sp in sprites], axis=1)
        counts = np.array([sp.pixels.shape[1] for sp in sprites])
        scene, dy, dx, base = (np.repeat(v.astype(np.int32), counts) for v in (placed.scene, top, left, entry - 1))
        _scatter(canvas, scene, pixels[0] + dy, pixels[1] + dx, pixels[2] + base)
    lit_owner, lit_k = np.nonzero(np.arange(4) < placed.lit_count[:, None])
    if len(lit_owner):
        spot, b = placed.lit_spots[lit_owner, lit_k], lit_owner
        wy = top[b] + margin[b] + np.minimum((spot[:, 0] * rows[b]).astype(np.intp), rows[b] - 1) * step[b]
        wx = left[b] + margin[b] + np.minimum((spot[:, 1] * cols[b]).astype(np.intp), cols[b] - 1) * step[b]
        pane_ys, pane_xs = pane_pixels(int(pane[b[0]]))  # the pane size depends only on the image size
        _scatter(
            canvas,
            np.repeat(placed.scene[b], len(pane_ys)),
            (wy[:, None] + pane_ys).ravel(),
            (wx[:, None] + pane_xs).ravel(),
            np.repeat(entry[b] + PARTS[BUILDING] + lit_k, len(pane_ys)),
        )
    flat = canvas.reshape(count, -1) + (np.arange(count, dtype=np.intp) * PALETTE)[:, None]
    cumulative = np.concatenate([[0], np.cumsum(np.bincount(flat.ravel(), minlength=count * PALETTE))])
    shown = cumulative[placed.first + key_parts] - cumulative[placed.first]
    at_edge = (top < 0) | (left < 0) | (top + height > size) | (left + width > size)
    return shown, area, at_edge


def _scatter(canvas: np.ndarray, scene: np.ndarray, y: np.ndarray, x: np.ndarray, entry: np.ndarray) -> None:
    """canvas[scene, y, x] = max(itself, entry) for the points inside the image."""
    size = canvas.shape[1]
    inside = (y >= 0) & (y < size) & (x >= 0) & (x < size)
    np.maximum.at(canvas.reshape(-1), ((scene * size + y) * size + x)[inside], entry[inside].astype(np.uint8))
