"""The shapes world: pictures the project draws itself, and questions with one-word answers.

A model trained on it (``demo/shapes-llava``) truly sees, so its answers with and without
pruning can be checked. Other tools draw their own scenes from these rules, so they are exact:

* **Picture**: 336 × 336 RGB; the background is one flat colour, white (255, 255, 255), light
  grey (220, 220, 220) or beige (240, 230, 210).
* **Objects**: 1 to 6. Each has a bounding square of side 40–90 px whose top-left pixel is
  ``(x0, y0)``; the square covers the pixels ``x0 … x0 + side − 1`` and ``y0 … y0 + side − 1``.
  Squares lie at least 4 px inside the picture (``x0 ≥ 4``, ``x0 + side ≤ 332``, same for y) and
  at least 4 background pixels apart (on x or on y: ``a.x0 ≥ b.x0 + b.side + 4`` or the converse,
  or the same on y). Each is a **circle**, **square** or **triangle**, filled with one of **red**
  (220, 40, 40), **green** (40, 170, 60), **blue** (40, 80, 220), **yellow** (240, 200, 40) or
  **purple** (150, 60, 180). A circle fills its square's inscribed ellipse, a square the whole
  square, and a triangle has its base on the square's bottom row and its apex at the middle of the
  top row. Drawn with PIL's ``ImageDraw`` (no antialiasing), on the inclusive box
  ``[x0, y0, x0 + side − 1, y0 + side − 1]``.
* **Questions**, answered with one lowercase word:

  - ``How many objects are there?`` → ``one`` … ``six``
  - ``How many {shape}s are there?`` → ``zero`` … ``six``
  - ``Is there a {color} {shape}?`` → ``yes`` / ``no``
  - ``What color is the {shape}?`` (only when exactly one object has that shape) → the colour
  - ``What shape is the {color} object?`` (only when exactly one object has that colour) → the shape
  - ``Is the {color} {shape} on the left or the right?`` (only when that colour-shape pair is
    unique) → ``left`` if the centre's x (``x0 + side / 2``) is below 168, else ``right``.

Sampling (this module's, so that a seed gives the same scenes everywhere): the number of objects
is uniform on 1 … 6, then each object's shape, colour and side (uniform integers) and its
position (uniform over the places inside the margins), drawn again until it keeps its gaps;
after 200 failed places all the objects are drawn again (same count and background).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 336
MARGIN = 4
GAP = 4
MIN_SIDE, MAX_SIDE = 40, 90
WORLD_SIDES = (MIN_SIDE, MAX_SIDE)
MAX_OBJECTS = 6
CENTRE = SIZE / 2
"""``left`` when an object's centre x is below this, else ``right``."""
PLACE_TRIES = 200

BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "light grey": (220, 220, 220),
                                                "beige": (240, 230, 210)}
COLORS: dict[str, tuple[int, int, int]] = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
                                           "yellow": (240, 200, 40), "purple": (150, 60, 180)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")

KINDS: tuple[str, ...] = ("count_objects", "count_shape", "exists", "color_of_shape", "shape_of_color", "left_right")
"""Question kinds, in the order :func:`questions` lists them."""


@dataclass(frozen=True)
class ShapeObject:
    """One object: its shape, colour name and bounding square (top-left pixel, side)."""

    shape: str
    color: str
    x0: int
    y0: int
    side: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Inclusive pixel box ``(x0, y0, x1, y1)``, as ``ImageDraw`` takes it."""
        return (self.x0, self.y0, self.x0 + self.side - 1, self.y0 + self.side - 1)

    @property
    def centre_x(self) -> float:
        return self.x0 + self.side / 2

    def apart_from(self, other: "ShapeObject", gap: int = GAP) -> bool:
        """Whether the two bounding squares are at least ``gap`` background pixels apart."""
        return (self.x0 >= other.x0 + other.side + gap or other.x0 >= self.x0 + self.side + gap
                or self.y0 >= other.y0 + other.side + gap or other.y0 >= self.y0 + self.side + gap)


@dataclass(frozen=True)
class Scene:
    """A drawn picture, its objects and its background's name."""

    image: Image.Image
    objects: tuple[ShapeObject, ...]
    background: str


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: str


def draw_objects(objects: tuple[ShapeObject, ...], background: str) -> Image.Image:
    """The picture of ``objects`` on ``background`` (the rules above)."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    for o in objects:
        fill = COLORS[o.color]
        x0, y0, x1, y1 = o.box
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
    return image


def _place(rng: np.random.Generator, count: int, sides: tuple[int, int] = WORLD_SIDES
           ) -> tuple[ShapeObject, ...] | None:
    """``count`` objects with their gaps, or None when one found no place in ``PLACE_TRIES`` draws."""
    placed: list[ShapeObject] = []
    colors = tuple(COLORS)
    for _ in range(count):
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = colors[rng.integers(len(colors))]
        side = int(rng.integers(sides[0], sides[1] + 1))
        high = SIZE - MARGIN - side + 1  # exclusive: x0 + side ≤ SIZE − MARGIN
        # All tries' positions at once; the first that keeps its gaps wins.
        xs, ys = rng.integers(MARGIN, high, size=(2, PLACE_TRIES))
        for x0, y0 in zip(xs.tolist(), ys.tolist()):
            candidate = ShapeObject(shape, color, x0, y0, side)
            if all(candidate.apart_from(p) for p in placed):
                placed.append(candidate)
                break
        else:
            return None
    return tuple(placed)


TRAINING_SIDES = (14, 120)
"""The widest side range a training scene may take (``draw_scenes(sides=...)``): from a patch to 120
px, with the smallest side at most the world's 90 px, so that six objects still find their places
(only four of 110 px or more fit the canvas)."""


def draw_scene(rng: np.random.Generator, sides: tuple[int, int] = WORLD_SIDES) -> Scene:
    """One scene drawn from ``rng`` (same generator state, same scene). ``sides``: the objects' side
    range, the world's 40–90 px unless a training run widens it (:data:`TRAINING_SIDES`)."""
    background = tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    while (objects := _place(rng, count, sides)) is None:
        pass  # crowded: draw the whole scene again (rare with sides ≤ 90)
    return Scene(draw_objects(objects, background), objects, background)


def check_sides(sides: tuple[int, ...]) -> tuple[int, int]:
    """``sides`` as ``(smallest, largest)`` when a scene can be drawn with them (:data:`TRAINING_SIDES`,
    the smallest at most ``MAX_SIDE``); a ``ValueError`` saying the range otherwise."""
    low, high = TRAINING_SIDES
    if len(sides) != 2 or not (low <= sides[0] <= sides[1] <= high and sides[0] <= MAX_SIDE):
        raise ValueError(f"object sides must be two numbers within {low}–{high} px (smallest first, at most "
                         f"{MAX_SIDE}), not {'–'.join(map(str, sides))}")
    return int(sides[0]), int(sides[1])


def draw_scenes(seed: int, count: int, sides: tuple[int, int] = WORLD_SIDES) -> list[Scene]:
    """``count`` scenes from one generator seeded with ``seed`` (``sides``: see :func:`draw_scene`)."""
    sides = check_sides(sides)
    rng = np.random.default_rng(seed)
    return [draw_scene(rng, sides) for _ in range(count)]


def questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """Every question kind that applies to ``scene``, answered from its objects.

    ``count_objects``: one; ``count_shape``: one per shape; ``color_of_shape``, ``shape_of_color``
    and ``left_right``: one per shape, colour or pair they apply to; ``exists``: two, each asking
    about a present pair with probability ½ (else an absent one), so that about half say yes.
    """
    objs = scene.objects
    shapes = [o.shape for o in objs]
    colors = [o.color for o in objs]
    pairs = [(o.color, o.shape) for o in objs]
    out = [Question("count_objects", "How many objects are there?", NUMBERS[len(objs)])]
    out += [Question("count_shape", f"How many {s}s are there?", NUMBERS[shapes.count(s)]) for s in SHAPES]
    present = sorted(set(pairs))
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in set(pairs)]
    for _ in range(2):
        ask_present = bool(rng.random() < 0.5) or not absent
        pool = present if ask_present else absent
        color, shape = pool[rng.integers(len(pool))]
        out.append(Question("exists", f"Is there a {color} {shape}?", "yes" if ask_present else "no"))
    out += [Question("color_of_shape", f"What color is the {o.shape}?", o.color) for o in objs
            if shapes.count(o.shape) == 1]
    out += [Question("shape_of_color", f"What shape is the {o.color} object?", o.shape) for o in objs
            if colors.count(o.color) == 1]
    out += [Question("left_right", f"Is the {o.color} {o.shape} on the left or the right?",
                     "left" if o.centre_x < CENTRE else "right") for o in objs if pairs.count((o.color, o.shape)) == 1]
    return out


def one_per_kind(qs: list[Question], rng: np.random.Generator) -> list[Question]:
    """One question of each kind present in ``qs``, drawn with ``rng`` (kinds in :data:`KINDS` order)."""
    out = []
    for kind in KINDS:
        of_kind = [q for q in qs if q.kind == kind]
        if of_kind:
            out.append(of_kind[rng.integers(len(of_kind))])
    return out


def all_question_texts() -> list[str]:
    """Every question text the rules can ask (for the vocabulary)."""
    texts = ["How many objects are there?"] + [f"How many {s}s are there?" for s in SHAPES]
    texts += [f"What color is the {s}?" for s in SHAPES] + [f"What shape is the {c} object?" for c in COLORS]
    for c in COLORS:
        for s in SHAPES:
            texts += [f"Is there a {c} {s}?", f"Is the {c} {s} on the left or the right?"]
    return texts


def all_answers() -> list[str]:
    """Every answer word the rules can give."""
    return list(NUMBERS) + ["yes", "no"] + list(COLORS) + list(SHAPES) + ["left", "right"]
