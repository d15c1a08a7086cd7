"""The object kinds: COCO category, caption nouns, colour variants and drawing function."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline.demo.draw_food import (
    _draw_apple,
    _draw_banana,
    _draw_donut,
    _draw_orange,
    _draw_pizza,
)
from pipeline.demo.draw_things import (
    _draw_ball,
    _draw_clock,
    _draw_cup,
    _draw_fire_hydrant,
    _draw_kite,
    _draw_stop_sign,
    _draw_teddy_bear,
    _draw_traffic_light,
    _draw_umbrella,
    _draw_wine_glass,
)
from pipeline.demo.sprite import RGB, _Sprite


@dataclass(frozen=True)
class Variant:
    """A colour scheme of a kind; ``adjectives`` are words a caption may use for it."""

    name: str
    colours: dict[str, RGB]
    adjectives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Kind:
    """An object kind: its COCO category, caption nouns and drawing parameters."""

    category: str  # COCO category name
    coco_id: int
    supercategory: str
    singular: str  # the noun captions use
    plural: str
    aspect: tuple[float, float]  # sprite (width, height) relative to the object size
    scale: float  # relative size among kinds
    max_rotation: float  # degrees
    mirror: bool  # may be flipped left-right
    crowd: bool  # may appear as a crowd ("a pile of apples")
    variants: tuple[Variant, ...]
    draw: Callable[["_Sprite", np.random.Generator, dict[str, RGB]], None] = field(repr=False)


def _v(name: str, adjectives: tuple[str, ...], **colours: Any) -> Variant:
    return Variant(name, dict(colours), adjectives)


KINDS: dict[str, Kind] = {
    k.category: k
    for k in (
        Kind("traffic light", 10, "outdoor", "traffic light", "traffic lights", (0.42, 1.0), 1.05,
             6, False, False,
             (_v("black", (), body=(40, 42, 46), pole=(95, 95, 100)),
              _v("yellow", ("yellow",), body=(215, 175, 35), pole=(95, 95, 100))),
             _draw_traffic_light),
        Kind("fire hydrant", 11, "outdoor", "fire hydrant", "fire hydrants", (0.62, 1.0), 0.95,
             5, False, False,
             (_v("red", ("red",), main=(200, 32, 28), cap=(150, 150, 155)),
              _v("yellow", ("yellow",), main=(230, 185, 30), cap=(60, 60, 65))),
             _draw_fire_hydrant),
        Kind("stop sign", 13, "outdoor", "stop sign", "stop signs", (0.7, 1.0), 1.05,
             8, False, False,
             (_v("red", ("red", "octagonal"), red=(200, 25, 30), pole=(120, 120, 125)),),
             _draw_stop_sign),
        Kind("umbrella", 28, "accessory", "umbrella", "umbrellas", (1.0, 0.95), 1.1,
             15, True, False,
             (_v("red", ("red", "striped"), a=(205, 35, 40), b=(240, 235, 230)),
              _v("blue", ("blue",), a=(35, 80, 200), b=(25, 55, 150)),
              _v("green", ("green",), a=(40, 150, 70), b=(240, 220, 60)),
              _v("purple", ("purple",), a=(120, 50, 160), b=(90, 35, 125))),
             _draw_umbrella),
        Kind("sports ball", 37, "sports", "ball", "balls", (1.0, 1.0), 0.8,
             180, True, True,
             (_v("football", ("white",), a=(240, 240, 240), pent=(25, 25, 25)),
              _v("beach", ("striped", "colorful"), a=(225, 40, 40), stripe=(250, 210, 30)),
              _v("tennis", ("yellow", "fuzzy"), a=(210, 225, 55), seam=(245, 245, 240)),
              _v("red", ("red", "shiny"), a=(210, 30, 35), seam=(250, 250, 250)),
              _v("blue", ("blue",), a=(40, 90, 215), seam=(250, 250, 250))),
             _draw_ball),
        Kind("kite", 38, "sports", "kite", "kites", (0.62, 1.0), 1.05,
             25, True, False,
             (_v("red", ("red", "colorful"), a=(215, 35, 35), b=(250, 215, 40)),
              _v("blue", ("blue",), a=(40, 90, 210), b=(245, 245, 245)),
              _v("green", ("green",), a=(40, 160, 70), b=(250, 220, 60)),
              _v("purple", ("purple",), a=(130, 50, 170), b=(240, 120, 190))),
             _draw_kite),
        Kind("wine glass", 46, "kitchen", "wine glass", "wine glasses", (0.5, 1.0), 0.95,
             8, False, False,
             (_v("empty", ("empty",), glass=(205, 220, 230)),
              _v("full", ("full",), glass=(205, 220, 230), wine=(125, 15, 35))),
             _draw_wine_glass),
        Kind("cup", 47, "kitchen", "cup", "cups", (1.0, 0.85), 0.8,
             8, True, False,
             (_v("white", ("white",), main=(235, 235, 228), drink=(90, 55, 30), band=(40, 90, 190)),
              _v("blue", ("blue",), main=(45, 90, 190), drink=(90, 55, 30), band=(235, 235, 235)),
              _v("red", ("red",), main=(190, 40, 40), drink=(235, 225, 200), band=(250, 250, 250)),
              _v("green", ("green",), main=(50, 140, 75), drink=(90, 55, 30), band=(235, 220, 90))),
             _draw_cup),
        Kind("banana", 52, "food", "banana", "bananas", (1.0, 0.5), 1.0,
             40, True, True,
             (_v("yellow", ("yellow", "ripe"), main=(238, 205, 55)),
              _v("spotted", ("ripe", "spotted"), main=(235, 195, 60), spot=(100, 70, 30)),
              _v("green", ("green",), main=(175, 200, 60))),
             _draw_banana),
        Kind("apple", 53, "food", "apple", "apples", (1.0, 1.0), 0.75,
             15, True, True,
             (_v("red", ("red", "shiny"), main=(195, 30, 35)),
              _v("green", ("green",), main=(125, 190, 60)),
              _v("yellow", ("yellow",), main=(225, 200, 70))),
             _draw_apple),
        Kind("orange", 55, "food", "orange", "oranges", (1.0, 1.0), 0.75,
             180, False, True,
             (_v("ripe", ("ripe", "juicy"), main=(240, 140, 25)),),
             _draw_orange),
        Kind("pizza", 59, "food", "pizza", "pizzas", (1.0, 1.0), 1.0,
             180, False, False,
             (_v("cheese", ("hot", "fresh"),),),
             _draw_pizza),
        Kind("donut", 60, "food", "donut", "donuts", (1.0, 1.0), 0.8,
             180, False, True,
             (_v("pink", ("pink", "frosted"), dough=(205, 150, 85), icing=(240, 140, 185)),
              _v("brown", ("brown", "frosted"), dough=(210, 160, 90), icing=(95, 55, 35)),
              _v("white", ("white", "frosted"), dough=(200, 145, 80), icing=(245, 240, 235)),
              _v("glazed", ("glazed",), dough=(215, 165, 90))),
             _draw_donut),
        Kind("clock", 85, "indoor", "clock", "clocks", (1.0, 1.0), 0.9,
             10, False, False,
             (_v("black", ("black",), rim=(30, 30, 32), face=(245, 245, 240)),
              _v("brown", ("brown",), rim=(110, 70, 35), face=(240, 230, 210)),
              _v("red", ("red",), rim=(180, 30, 30), face=(248, 248, 248))),
             _draw_clock),
        Kind("teddy bear", 88, "indoor", "teddy bear", "teddy bears", (0.8, 1.0), 1.0,
             12, True, False,
             (_v("brown", ("brown", "fluffy"), fur=(140, 90, 45), bow=(200, 30, 40)),
              _v("light", ("fluffy", "cute"), fur=(195, 150, 95), bow=(40, 80, 190)),
              _v("white", ("white", "fluffy"), fur=(228, 222, 212), bow=(200, 30, 40))),
             _draw_teddy_bear),
    )
}


def categories() -> list[dict[str, Any]]:
    """The COCO ``categories`` entries of the kinds drawn, by id."""
    return [
        {"id": k.coco_id, "name": k.category, "supercategory": k.supercategory}
        for k in sorted(KINDS.values(), key=lambda k: k.coco_id)
    ]
