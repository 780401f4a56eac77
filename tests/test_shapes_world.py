"""The shapes world's rules, checked on the drawn pixels and recomputed from the objects."""
from __future__ import annotations

import numpy as np
import pytest

from prunesid_vlm.shapes_world import (BACKGROUNDS, COLORS, GAP, KINDS, MARGIN, MAX_SIDE, MIN_SIDE, NUMBERS, SHAPES,
                                       SIZE, ShapeObject, draw_objects, draw_scene, draw_scenes, one_per_kind,
                                       questions)

SCENES = draw_scenes(123, 60)


def pixels(scene) -> np.ndarray:
    return np.asarray(scene.image)


def colour_mask(array: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(array == np.array(rgb, dtype=np.uint8), axis=-1)


def test_pictures_are_336_rgb_with_a_flat_background_and_one_to_six_objects():
    for scene in SCENES:
        assert scene.image.size == (SIZE, SIZE) and scene.image.mode == "RGB"
        assert 1 <= len(scene.objects) <= 6
        array = pixels(scene)
        background = colour_mask(array, BACKGROUNDS[scene.background])
        palette = background | np.any([colour_mask(array, c) for c in COLORS.values()], axis=0)
        assert palette.all(), "no antialiasing: every pixel is the background or an object colour"
        # Every pixel outside all bounding squares is background.
        inside = np.zeros((SIZE, SIZE), bool)
        for o in scene.objects:
            inside[o.y0:o.y0 + o.side, o.x0:o.x0 + o.side] = True
        assert background[~inside].all()


def test_margins_gaps_and_sides_hold_on_the_pixels():
    for scene in SCENES:
        array = pixels(scene)
        background = colour_mask(array, BACKGROUNDS[scene.background])
        # 4 px frame of background all around.
        assert background[:MARGIN].all() and background[-MARGIN:].all()
        assert background[:, :MARGIN].all() and background[:, -MARGIN:].all()
        objs = scene.objects
        for o in objs:
            assert MIN_SIDE <= o.side <= MAX_SIDE
            assert o.x0 >= MARGIN and o.y0 >= MARGIN and o.x0 + o.side <= SIZE - MARGIN and o.y0 + o.side <= SIZE - MARGIN
        for i, a in enumerate(objs):
            for b in objs[i + 1:]:
                dx = max(a.x0 - (b.x0 + b.side), b.x0 - (a.x0 + a.side))
                dy = max(a.y0 - (b.y0 + b.side), b.y0 - (a.y0 + a.side))
                assert max(dx, dy) >= GAP, (a, b)


def test_each_object_is_drawn_in_its_colour_and_shape():
    for scene in SCENES:
        array = pixels(scene)
        for o in scene.objects:
            patch = colour_mask(array[o.y0:o.y0 + o.side, o.x0:o.x0 + o.side], COLORS[o.color])
            share = patch.mean()
            # Filled share of the square: square 1, circle π/4 ≈ 0.785, triangle ½.
            expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[o.shape]
            assert abs(share - expected) < 0.06, (o, share)
            # Square: corners filled; circle: corners empty, centre row full width; triangle: apex
            # at the top row's middle, base on the bottom row.
            s = o.side
            if o.shape == "square":
                assert patch[0, 0] and patch[-1, -1]
            elif o.shape == "circle":
                assert not patch[0, 0] and not patch[-1, -1] and patch[s // 2].mean() > 0.95
            else:
                assert patch[-1].mean() > 0.95 and patch[0, s // 2 - 1:s // 2 + 1].any() and patch[0].mean() < 0.1


def test_a_circle_a_square_and_a_triangle_by_hand():
    objs = (ShapeObject("square", "red", 10, 10, 40), ShapeObject("circle", "blue", 100, 10, 41),
            ShapeObject("triangle", "green", 200, 200, 61))
    array = np.asarray(draw_objects(objs, "white"))
    assert colour_mask(array, COLORS["red"]).sum() == 40 * 40
    assert colour_mask(array[10:51, 100:141], COLORS["blue"])[20].all()  # the middle row spans the square
    tri = colour_mask(array[200:261, 200:261], COLORS["green"])
    assert tri[-1].all() and tri[0, 30] and not tri[0, 0]


def recompute(scene, question) -> str:
    """The answer from the objects alone, parsed back from the question's text."""
    objs = scene.objects
    text = question.text
    if text == "How many objects are there?":
        return NUMBERS[len(objs)]
    for s in SHAPES:
        if text == f"How many {s}s are there?":
            return NUMBERS[sum(o.shape == s for o in objs)]
        if text == f"What color is the {s}?":
            (only,) = [o for o in objs if o.shape == s]
            return only.color
    for c in COLORS:
        if text == f"What shape is the {c} object?":
            (only,) = [o for o in objs if o.color == c]
            return only.shape
        for s in SHAPES:
            if text == f"Is there a {c} {s}?":
                return "yes" if any(o.color == c and o.shape == s for o in objs) else "no"
            if text == f"Is the {c} {s} on the left or the right?":
                (only,) = [o for o in objs if o.color == c and o.shape == s]
                return "left" if only.x0 + only.side / 2 < 168 else "right"
    raise AssertionError(f"not a question of the world: {text!r}")


def test_answers_agree_with_the_objects_and_every_applicable_kind_is_asked():
    rng = np.random.default_rng(5)
    answers = []
    for scene in SCENES:
        qs = questions(scene, rng)
        for q in qs:
            assert q.answer == recompute(scene, q), q
            assert q.answer == q.answer.lower() and " " not in q.answer
        kinds = {q.kind for q in qs}
        shapes = [o.shape for o in scene.objects]
        colors = [o.color for o in scene.objects]
        assert {"count_objects", "count_shape", "exists"} <= kinds
        assert ("color_of_shape" in kinds) == any(shapes.count(s) == 1 for s in SHAPES)
        assert ("shape_of_color" in kinds) == any(colors.count(c) == 1 for c in COLORS)
        assert sum(q.kind == "left_right" for q in qs) == len(set(zip(colors, shapes)) - {
            p for p in zip(colors, shapes) if list(zip(colors, shapes)).count(p) > 1})
        answers += [q.answer for q in qs if q.kind == "exists"]
    yes = answers.count("yes") / len(answers)
    assert 0.35 < yes < 0.65, yes


def test_the_same_seed_draws_the_same_scenes_and_questions():
    a, b = draw_scenes(7, 5), draw_scenes(7, 5)
    assert [s.objects for s in a] == [s.objects for s in b]
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b))
    qa = [questions(s, np.random.default_rng(1)) for s in a]
    qb = [questions(s, np.random.default_rng(1)) for s in b]
    assert qa == qb
    assert [s.objects for s in draw_scenes(8, 5)] != [s.objects for s in a]


def test_the_sampled_world_covers_its_range():
    scenes = draw_scenes(11, 300)
    counts = {len(s.objects) for s in scenes}
    assert counts == set(range(1, 7))
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == set(SHAPES) and {o.color for o in objs} == set(COLORS)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert min(o.side for o in objs) < 45 and max(o.side for o in objs) > 85


@pytest.mark.parametrize("seed", [0, 1])
def test_one_per_kind_picks_one_of_each_present_kind(seed):
    rng = np.random.default_rng(seed)
    scene = draw_scene(rng)
    qs = questions(scene, rng)
    picked = one_per_kind(qs, rng)
    assert [q.kind for q in picked] == [k for k in KINDS if any(q.kind == k for q in qs)]
    assert all(q in qs for q in picked)


def test_a_training_run_may_widen_the_sides_and_the_rule_stays_the_default():
    from prunesid_vlm.shapes_world import MAX_SIDE, MIN_SIDE, TRAINING_SIDES

    ruled, named = draw_scenes(31, 12), draw_scenes(31, 12, (MIN_SIDE, MAX_SIDE))
    assert [s.objects for s in ruled] == [s.objects for s in named]
    wide = [o.side for s in draw_scenes(31, 40, (20, 120)) for o in s.objects]
    assert min(wide) < MIN_SIDE and max(wide) > MAX_SIDE and 20 <= min(wide) and max(wide) <= 120
    for refused in ((TRAINING_SIDES[0] - 1, 90), (MAX_SIDE + 1, 120), (60, 50)):
        with pytest.raises(ValueError, match="object sides"):
            draw_scenes(31, 1, refused)
    assert len(draw_scenes(3, 20, (MAX_SIDE, TRAINING_SIDES[1]))) == 20  # the largest allowed still places six
