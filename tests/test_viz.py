"""viz: grid geometry, palette, overlays and charts, on hand-made Selections (and on real
select_tokens output when the shared reference cases are present)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import viz
from prunesid.result import Selection
from viz import PatchGrid
from viz.palette import NUM_COLORBLIND_SAFE, group_colors, group_hex

SHARED = Path(__file__).parents[1].parent / "shared"


def make_selection(
    rows: int = 4,
    cols: int = 4,
    group: list[int] | None = None,
    picks: dict[int, list[int]] | None = None,
    kept: list[int] | None = None,
    suppressed_by: dict[int, int] | None = None,
) -> Selection:
    """A hand-made one-row Selection on a ``rows x cols`` grid.

    Default (4 x 4): group 0 = left half, group 1 = top right, group 2 = bottom right;
    picks 0, 5 (group 0), 2 (group 1), 11 (group 2); kept patches 0, 2, 11 (5 is a
    pick that lost out); every other patch is suppressed by its group's first pick.
    """
    n = rows * cols
    if group is None:
        g = np.zeros((rows, cols), int)
        g[: rows // 2, cols // 2 :] = 1
        g[rows // 2 :, cols // 2 :] = 2
        group = g.flatten().tolist()
    picks = picks or {0: [0, 5], 1: [2], 2: [11]}
    kept = kept if kept is not None else [0, 2, 11]
    gcount = max(group) + 1
    nms_rank = np.full(n, -1)
    sup = np.full(n, -1)
    for g_, ps in picks.items():
        for r, p in enumerate(ps):
            nms_rank[p] = r
    for i in range(n):
        if nms_rank[i] < 0:
            sup[i] = (suppressed_by or {}).get(i, picks[group[i]][0])
    size = np.bincount(group, minlength=gcount)
    survivors = np.array([len(picks.get(g_, [])) for g_ in range(gcount)])
    budget = np.bincount([group[k] for k in kept], minlength=gcount)
    keep = torch.tensor([[0] + [k + 1 for k in kept]])
    importance = torch.linspace(0.0, 1.0, n)[None]
    return Selection(
        keep=keep,
        num_tokens=torch.tensor([len(kept) + 1]),
        group=torch.tensor([group]),
        num_groups=torch.tensor([gcount]),
        nms_rank=torch.tensor(nms_rank)[None],
        suppressed_by=torch.tensor(sup)[None],
        group_size=torch.tensor(size)[None],
        group_survivors=torch.tensor(survivors)[None],
        group_budget=torch.tensor(budget)[None],
        importance=importance,
        rho=torch.tensor([0.4]),
        tau=torch.tensor([0.05]),
        phi=torch.tensor([0.6]),
    )


def test_image(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 226, (h, w, 3), dtype=np.uint8)


test_image.__test__ = False  # a helper, not a test


# ---- grid ---------------------------------------------------------------------------------
@pytest.mark.parametrize("h, w", [(336, 336), (672, 672), (350, 301)])
def test_grid_round_trip_and_tiling(h, w):
    grid = PatchGrid(h, w, 24, 24)
    p = np.arange(576)
    centers = grid.center(p)
    assert (grid.patch_at(centers[:, 0], centers[:, 1]) == p).all()
    rects = grid.rect(p)  # (x0, y0, x1, y1)
    x0, y0, x1, y1 = rects.T
    assert (grid.patch_at(x0, y0) == p).all() and (grid.patch_at(x1 - 1, y1 - 1) == p).all()
    assert ((x1 - x0) * (y1 - y0)).sum() == h * w  # cells tile the image exactly
    assert (x1 - x0).max() - (x1 - x0).min() <= 1
    cm = grid.cell_map
    assert cm.shape == (h, w) and (np.bincount(cm.ravel()) == (x1 - x0) * (y1 - y0)).all()
    assert cm[y0[100], x0[100]] == 100


def test_grid_raster_order_and_clicks():
    grid = PatchGrid.for_display(336)
    assert (grid.height, grid.cell_size) == (336, 14)
    assert tuple(grid.rect(25)) == (14, 14, 28, 28)  # row 1, col 1
    assert int(grid.patch_at(335.9, 0)) == 23 and int(grid.patch_at(0, 14)) == 24
    assert int(grid.patch_at(1e6, 1e6)) == 575  # clicks outside are clipped
    assert PatchGrid.for_display(700).height == 720  # rounded up to a multiple of 24
    with pytest.raises(ValueError, match="out of range"):
        grid.rect(576)
    with pytest.raises(ValueError, match="too small"):
        PatchGrid(10, 10, 24, 24)


def test_grid_fit_integer_upscale_is_nearest():
    img = test_image(336, 336)
    big = PatchGrid.for_display(672).fit(img)
    assert big.shape == (672, 672, 3)
    assert (big[::2, ::2] == img).all() and (big[1::2, 1::2] == img).all()
    assert PatchGrid.for_display(336).fit(test_image(500, 400)).shape == (336, 336, 3)


# ---- palette --------------------------------------------------------------------------------
def test_palette_distinct_and_deterministic():
    c = group_colors(150)
    assert c.shape == (150, 3) and c.dtype == np.uint8
    assert len({tuple(x) for x in c}) == 150
    assert (group_colors(150) == c).all() and (group_colors(5) == c[:5]).all()
    assert group_hex(NUM_COLORBLIND_SAFE)[0] == "#E69F00"  # Okabe-Ito orange first
    d = np.linalg.norm(np.diff(c.astype(float), axis=0), axis=1)
    assert d.min() > 60  # consecutive groups (often neighbours) clearly differ


# ---- overlays -------------------------------------------------------------------------------
def test_kept_tokens_dims_exactly_the_dropped_cells():
    sel = make_selection()
    img = test_image()
    before = img.copy()
    out = viz.draw_kept_tokens(img, sel, legend=False, dim_alpha=0.65)
    assert (img == before).all()  # input untouched
    assert out.shape == img.shape
    grid = PatchGrid(64, 64, 4, 4)
    kept = sel.kept_patches[0].numpy()
    kept_px = kept[grid.cell_map]
    expected_dim = img.astype(np.float64) * 0.35
    assert np.abs(out[~kept_px] - expected_dim[~kept_px]).max() <= 0.5 + 1e-6  # rounding only
    changed = (out != img).any(-1)
    assert (changed == (~kept_px | (kept_px & grid.border_mask(1)))).all()  # nothing else touched
    inner = kept_px & ~grid.border_mask(1)
    assert (out[inner] == img[inner]).all()  # kept cells keep their pixels inside the outline
    outline = kept_px & grid.border_mask(1)
    assert (out[outline] == viz.palette.hex_to_rgb(viz.KEPT_HEX)).all()


def test_kept_tokens_legend_and_size():
    sel = make_selection(rows=24, cols=24, group=[0] * 288 + [1] * 288, picks={0: [0], 1: [300]}, kept=[0, 300])
    img = test_image(336, 336)
    out = viz.draw_kept_tokens(img, sel, size=672)
    assert out.shape[1] == 672 and out.shape[0] > 672  # legend band below
    assert (out[:672] != viz.draw_kept_tokens(img, sel, size=672, legend=False)).sum() == 0


def test_groups_overlay_colours_cells():
    sel = make_selection()
    img = np.full((64, 64, 3), 128, np.uint8)
    out = viz.draw_groups(img, sel, legend=False, mark_kept=False, fill_alpha=0.5)
    colors = group_colors(3).astype(float)
    # Centre of cell 5 (group 0, away from group borders): half image, half group colour.
    cy, cx = 16 + 8, 16 + 8
    assert np.abs(out[cy, cx] - (0.5 * 128 + 0.5 * colors[0])).max() <= 1
    marked = viz.draw_groups(img, sel, legend=False, mark_kept=True)
    x, y = PatchGrid(64, 64, 4, 4).center(2)
    assert (marked[int(y), int(x)] >= 240).all()  # white dot on kept patch 2


def test_group_masks_partition_the_image():
    sel = make_selection()
    grid = PatchGrid(64, 64, 4, 4)
    ann = viz.group_masks(sel, grid=grid, cutout_kept=False)
    assert [label.split(":")[0] for _, label in ann] == ["group 1", "group 2", "group 3"]
    masks = np.stack([m for m, _ in ann])
    assert masks.dtype == np.float32 and masks.shape == (3, 64, 64)
    assert ((masks > 0).sum(0) == 1).all()  # every pixel in exactly one group
    assert masks.max() == 1.0 and 0 < masks[masks > 0].min() < 1  # borders strong, fill light
    assert ann[0][1] == "group 1: 8 patches, keeps 1"
    full = viz.group_annotations(test_image(), sel)
    assert set(full.color_map) == {label for _, label in full.annotations}
    assert full.color_map["group 2: 4 patches, keeps 1"] == group_hex(3)[1]
    x, y = grid.center(0)
    assert all(m[int(y), int(x)] == 0 for m, _ in viz.group_masks(sel, grid=grid))  # a hole under a kept dot


def test_each_group_layer_carries_only_its_own_kept_dots():
    """Hovering a legend entry hides every other layer: a group's kept tokens must be drawn in its
    own layer (white centre, dark rim), not on the base picture, or every dot stays on screen."""
    from viz.overlays import DOT_CODE, MARK_LEVELS, RIM_CODE, group_layer_palette

    sel = make_selection()
    image = test_image()
    full = viz.group_annotations(image, sel, size=64)
    grid = PatchGrid(64, 64, 4, 4)
    sr = viz.selection_row(sel)
    assert np.array_equal(full.base, grid.fit(image))  # no marks on the picture itself
    for layer, label in full.annotations:
        g = int(label.split(":")[0].split()[1]) - 1
        assert layer.dtype == np.uint8
        for p in range(sr.num_patches):
            x, y = grid.center(p)
            centre = int(layer[int(y), int(x)])
            if sr.kept[p] and sr.group[p] == g:
                assert centre == DOT_CODE + MARK_LEVELS - 1, (label, p)  # opaque white
            else:
                assert centre < RIM_CODE, (label, p)  # another group's dot is not in this layer
    rgb, alpha = group_layer_palette((200, 30, 40))
    assert len(rgb) == 768 and len(alpha) == 256
    assert rgb[3 * (DOT_CODE + MARK_LEVELS - 1):][:3] == bytes((255, 255, 255)) and alpha[-1] == 255
    assert rgb[:3] == bytes((200, 30, 40)) and alpha[0] == 0


def test_group_masks_skip_empty_groups():
    sel = make_selection(group=[0] * 8 + [2] * 8, picks={0: [0], 1: [], 2: [8]}, kept=[0, 8])
    labels = [label for _, label in viz.group_masks(sel, grid=PatchGrid(64, 64, 4, 4))]
    assert [lab.split(":")[0] for lab in labels] == ["group 1", "group 3"]


def test_nms_marks_picks_and_draws_lines():
    sel = make_selection()
    img = np.full((64, 64, 3), 200, np.uint8)
    out = viz.draw_nms(img, sel, legend=False)
    grid = PatchGrid(64, 64, 4, 4)
    colors = group_colors(3).astype(int)
    bg = out[0, 63].astype(int)  # a corner far from markers... except lines; compare to gray
    x, y = grid.center(11)
    assert np.abs(out[int(y), int(x)].astype(int) - colors[2]).max() <= 2  # kept pick: filled disc
    x, y = grid.center(5)
    centre5 = out[int(y), int(x)].astype(int)
    assert np.abs(centre5 - colors[0]).max() > 40  # non-kept pick: hollow ring
    # A line from suppressed patch 3 (group 1) to its pick 2 passes between them.
    (x3, y3), (x2, y2) = grid.center(3), grid.center(2)
    mid = out[int((y3 + y2) / 2), int((x3 + x2) / 2)].astype(int)
    assert np.abs(mid - colors[1]).max() < np.abs(bg - colors[1]).max()
    assert viz.draw_nms(img, sel).shape[0] > 64


def test_importance_heatmap_orders_colours():
    sel = make_selection()  # importance rises with the patch index
    img = np.full((64, 64, 3), 128, np.uint8)
    out = viz.draw_importance(img, sel, legend=False, alpha=1.0, clip_percentile=100)
    grid = PatchGrid(64, 64, 4, 4)
    lum = out.astype(float) @ [0.299, 0.587, 0.114]
    (xa, ya), (xb, yb) = grid.center(0), grid.center(15)
    assert lum[int(yb), int(xb)] > lum[int(ya), int(xa)] + 100  # inferno: dark -> bright
    with_bar = viz.draw_importance(img, sel)
    assert with_bar.shape[0] > 64 and with_bar.shape[1] == 64 * 1  # bar under, same width


def test_views_reject_mismatched_grid():
    with pytest.raises(ValueError, match="does not match"):
        viz.draw_kept_tokens(test_image(), make_selection(), grid_shape=(3, 3))
    with pytest.raises(ValueError, match="out of range"):
        viz.draw_kept_tokens(test_image(), make_selection(), row=1)


# ---- charts ---------------------------------------------------------------------------------
def test_charts_are_figures_without_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    sel = make_selection()
    figs = [
        viz.plot_group_budgets(sel),
        viz.plot_dynamic_ratio(0.62, np.linspace(0.4, 0.7, 30), 71, mean_budget=64),
        viz.plot_frame_budgets([60, 70, 64], phis=[0.5, 0.7, 0.6], times=[0.5, 1.5, 2.5]),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        assert fig.axes[0].get_title()
        arr = viz.figure_to_array(fig)
        assert arr.ndim == 3 and arr.shape[2] == 3 and arr.std() > 0
    assert plt.get_fignums() == before


def test_complexity_label():
    ref = np.linspace(0, 1, 31)
    assert [viz.complexity_label(p, ref) for p in (0.1, 0.5, 0.9)] == ["low", "medium", "high"]


def test_contact_sheet_layout():
    tiles = [test_image(40, 50, s) for s in range(5)]
    sheet = viz.contact_sheet(tiles, [f"f{i}" for i in range(5)], cols=3, pad=4)
    assert sheet.shape == (2 * 40 + 3 * 4, 3 * 50 + 4 * 4, 3)
    assert (sheet[4 + 40 - 1, 4 + 50 - 1] == tiles[0][-1, -1]).all()  # bottom-right of tile 0
    with pytest.raises(ValueError):
        viz.contact_sheet([])


# ---- with the real selection rule ------------------------------------------------------------
@pytest.fixture(scope="module")
def real_selection():
    if not (SHARED / "reference" / "cases.py").exists():
        pytest.skip(f"shared reference cases not found at {SHARED / 'reference'}")
    try:
        from prunesid import select_tokens
    except ImportError:
        pytest.skip("prunesid.select_tokens is not available yet")
    sys.path.insert(0, str(SHARED / "reference"))
    try:
        from cases import make_case
    finally:
        sys.path.remove(str(SHARED / "reference"))
    h, a = make_case(1)
    return select_tokens(h, a, 64)


def test_views_on_real_selection(real_selection):
    from PIL import Image

    img = np.asarray(Image.open(Path(__file__).parents[1] / "assets" / "cat.jpg").convert("RGB").resize((336, 336)))
    sel = real_selection
    kept = viz.draw_kept_tokens(img, sel, legend=False)
    grid = PatchGrid.for_display(336)
    n_kept = int(sel.kept_patches.sum())
    assert n_kept == int(sel.num_tokens[0]) - 1
    unchanged_cells = np.bincount(grid.cell_map.ravel(), weights=(kept == img).all(-1).ravel())
    assert (unchanged_cells > 0).sum() == n_kept  # only kept cells keep any original pixel
    for fn in (viz.draw_groups, viz.draw_nms, viz.draw_importance):
        assert fn(img, sel, size=672).shape[1] == 672
    ann = viz.group_annotations(img, sel)
    assert sum(int(label.split("keeps ")[1]) for _, label in ann.annotations) == n_kept
    assert isinstance(viz.plot_group_budgets(sel), Figure)


def test_dynamic_ratio_cached_background_matches_a_full_draw():
    """The dynamic-ratio chart reuses a cached rendering of its static part (histogram, marker,
    labels) across budgets; the result must equal a full draw pixel for pixel."""
    from viz.plots import DynamicRatioFigure

    ref = np.linspace(0.4, 0.7, 30)
    DynamicRatioFigure._backgrounds.clear()
    viz.figure_to_array(viz.plot_dynamic_ratio(0.62, ref, 71, mean_budget=64))  # fills the cache
    assert len(DynamicRatioFigure._backgrounds) == 1
    for budget, mean_budget in ((140, 128), (30, None)):
        cached = viz.figure_to_array(viz.plot_dynamic_ratio(0.62, ref, budget, mean_budget=mean_budget))
        fig = viz.plot_dynamic_ratio(0.62, ref, budget, mean_budget=mean_budget)
        fig.set_background_key(None)  # always a full draw
        assert np.array_equal(cached, viz.figure_to_array(fig))
    assert len(DynamicRatioFigure._backgrounds) == 2  # with and without the top axis
    # another φ is another background, and the PNG written for gr.Plot has the same pixels
    import io

    from PIL import Image

    fig = viz.plot_dynamic_ratio(0.5, ref, 64, mean_budget=64)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(png, viz.figure_to_array(fig))
    assert len(DynamicRatioFigure._backgrounds) == 3


def test_a_long_colour_bar_title_shrinks_to_fit_instead_of_being_cut():
    from viz._draw import colorbar_band

    title = "importance = attention from the CLS token (kept tokens outlined)"
    band = colorbar_band("inferno", 0.0, 1.0, title, width=336)
    title_rows = band[: band.shape[0] // 3]
    ink = (title_rows < 200).any(axis=(0, 2))  # columns with dark title pixels
    assert ink.any() and not ink[:3].any() and not ink[-3:].any()


def test_on_original_shows_what_the_tower_sees_and_the_kept_tokens_in_place():
    from viz import draw_on_original

    image = np.full((300, 600, 3), 200, dtype=np.uint8)  # 600 wide, 300 high
    kept = np.zeros(576, dtype=bool)
    kept[0] = True
    out = draw_on_original(image, [(150, 0, 450, 300)], kept=kept, max_side=600, legend=False)
    assert out.shape == (300, 600, 3)
    cell = 300 / 24
    inside_kept = out[int(cell / 2), int(150 + cell / 2)]  # centre of patch 0 (top-left of the box)
    dropped = out[int(cell / 2), int(150 + 1.5 * cell)]  # centre of patch 1
    unseen = out[150, 40]  # left of the centre square: cut off by the processor
    assert inside_kept.tolist() == [200, 200, 200]
    assert dropped.max() < 120 and unseen.max() < 120
    # A box reaching past the image (AnyRes padding) widens the canvas; the padding is grey.
    padded = draw_on_original(image, [(0, 0, 600, 300), (0, -150, 300, 150)], focus=1, max_side=600, legend=False)
    assert padded.shape[0] > 300 and padded[5, 450].tolist() == [150, 150, 150]
    with_legend = draw_on_original(image, [(150, 0, 450, 300)], kept=kept, max_side=600)
    assert with_legend.shape[0] > 300
    with pytest.raises(ValueError, match="focus"):
        draw_on_original(image, [(0, 0, 600, 300)], focus=2)


def test_a_legend_entry_wider_than_the_picture_wraps_instead_of_being_cut():
    """A narrow overlay (a Qwen grid) with a long legend entry: the text goes on to further lines,
    and nothing is drawn in the right margin (it was cut at the edge)."""
    from viz._draw import LegendItem, legend_band

    words = "group 1 only; duplicate = similarity > τ = 0.75 and a few more words to be sure"
    short = legend_band([LegendItem("disc", (200, 0, 0), "kept")], 160)
    band = legend_band([LegendItem("disc", (200, 0, 0), "kept"), LegendItem("none", "", words)], 160)
    assert band.shape[0] >= 3 * short.shape[0]  # several lines
    ink = (band < 200).any(axis=(0, 2))
    assert not ink[-4:].any()  # the right margin stays white
