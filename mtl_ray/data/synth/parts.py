"""The synthetic world's vocabulary: object kinds and their parts, the canvas's palette entries,
the colours objects are drawn in, and the record of a batch's placed objects (`Placed`).

Every other module of `mtl_ray.data.synth` paints, places or labels in these terms.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SEED_TASKS = ("pedestrian", "car", "stop_sign", "traffic_light")
PED, CAR, STOP, LIGHT, ROUND_SIGN, POLE, LAMP_POST, BUILDING, TREE, BOX, TRAILER, SIGNAL_BOX = range(12)
SEED_KINDS = (PED, CAR, STOP, LIGHT)
DISTRACTORS = (
    ("red_round_sign", ROUND_SIGN),
    ("bare_pole", POLE),
    ("lamp_post", LAMP_POST),
    ("building", BUILDING),
    ("tree", TREE),
    ("box", BOX),
    ("trailer", TRAILER),
    ("signal_box", SIGNAL_BOX),
)

# Canvas entries: 8 sky bands, ground, sidewalk, road, lane mark, then one entry per object part.
SKY_BANDS = 8
GROUND, SIDEWALK, ROAD, LANE = 8, 9, 10, 11
FIRST_PART = 12
PALETTE = 128
NOISE = np.arange(-7, 8, 2, dtype=np.float32)  # per-pixel brightness offsets, picked uniformly

KINDS = 12
MAX_PARTS = 6  # palette entries one object may take: a building's wall, windows and four lit windows
PARTS = {
    BUILDING: 2,
    TREE: 2,
    CAR: 5,
    PED: 3,
    STOP: 3,
    LIGHT: 4,
    ROUND_SIGN: 3,
    POLE: 1,
    LAMP_POST: 3,
    BOX: 2,
    TRAILER: 3,
    SIGNAL_BOX: 3,
}


def colour_table(*colours: tuple[int, int, int]) -> np.ndarray:
    return np.array(colours, dtype=np.float32)


CAR_COLOURS = colour_table(
    (200, 30, 30), (40, 70, 190), (235, 235, 235), (165, 168, 172), (35, 35, 40), (225, 195, 40), (40, 135, 60)
)
CAR_RED, CAR_BLUE, CAR_WHITE = 0, 1, 2
LAMP_COLOURS = colour_table((255, 40, 30), (255, 175, 30), (40, 230, 90))  # red, amber, green, top to bottom
SKINS = colour_table((250, 215, 180), (205, 150, 110), (140, 95, 65), (95, 62, 42))
SHIRTS = colour_table(
    (210, 40, 40),
    (40, 80, 200),
    (40, 150, 70),
    (230, 200, 50),
    (240, 240, 240),
    (30, 30, 30),
    (240, 130, 40),
    (150, 60, 160),
)
TROUSERS = colour_table((30, 40, 90), (25, 25, 25), (90, 90, 95), (100, 70, 45))
POLE_COLOURS = colour_table((130, 130, 135), (75, 78, 80), (45, 80, 50), (60, 70, 120), (200, 170, 40))
WALLS = colour_table((150, 145, 140), (175, 150, 120), (120, 90, 75), (200, 190, 170), (95, 100, 110))
LIT = colour_table((255, 225, 120), (255, 170, 40), (235, 45, 35), (70, 220, 100))
LEAVES = colour_table((50, 120, 45), (35, 95, 40), (90, 140, 50), (200, 95, 35))
SIGN_RED = (215, 30, 35)
HOUSING = (28, 28, 30)  # a traffic light's housing, its unlit twin and a car's tail-lamp cluster
UNLIT = (48, 48, 46)
WHITE = (238, 238, 235)


class Placed(NamedTuple):
    """A batch's objects in drawing order (scene, then far to near), with their palette entries."""

    scene: np.ndarray
    kind: np.ndarray
    x: np.ndarray
    row: np.ndarray
    t: np.ndarray
    code: np.ndarray
    first: np.ndarray  # flat palette index (scene * PALETTE + entry) of the object's first part
    entries: np.ndarray  # palette entries the object takes: its parts, then its lit windows
    colours: np.ndarray  # [objects, MAX_PARTS, 3], one colour per entry
    keys: list[tuple]
    lit_count: np.ndarray
    lit_spots: np.ndarray
