"""Energy-based pointing game, segmentation F1 (mF1) and the grid pointing game
(with its grid builder) on hand-made maps, boxes and masks with hand-computed
answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_vit.metrics import (
    energy_pointing_game,
    grid_cell_masks,
    grid_pointing_game,
    make_grid,
    segmentation_f1,
)


# ------------------------------------------------------------ energy pointing game
def test_energy_pointing_game_by_hand():
    m = torch.zeros(3, 4, 4)
    m[0, 0, 0], m[0, 3, 3] = 3.0, 1.0  # 3 of 4 inside the top-left 2 x 2 box
    m[1, 0, 0], m[1, 0, 3], m[1, 3, 0] = 2.0, -5.0, 2.0  # negatives ignored: 1/2
    m[2] = -1.0  # no positive energy: 0
    boxes = torch.tensor([[0, 0, 2, 2]] * 3)
    want = torch.tensor([0.75, 0.5, 0.0])
    assert torch.allclose(energy_pointing_game(m, boxes), want)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    assert torch.allclose(energy_pointing_game(m, masks=masks), want)
    # two boxes of one sample: their union
    two = energy_pointing_game(m[:1], [[[0, 0, 2, 2], [2, 2, 4, 4]]])
    assert torch.allclose(two, torch.tensor([1.0]))


def test_energy_pointing_game_patch_map_and_threshold():
    # a 2 x 2 patch map on an 8 x 8 image, box = top-left quarter
    grid = torch.tensor([[[4.0, 2.0], [1.0, 1.0]]])
    box = [[0, 0, 4, 4]]
    got = energy_pointing_game(grid, box, image_size=(8, 8))
    assert torch.allclose(got, torch.tensor([0.5]))  # 4 of 8 (equal-size patches)
    # TAM's binarisation: normalised (1, 1/3, 0, 0) > 0.3 keeps two patches
    got = energy_pointing_game(grid, box, image_size=(8, 8), threshold=0.3)
    assert torch.allclose(got, torch.tensor([0.5]))
    got = energy_pointing_game(grid, box, image_size=(8, 8), threshold=0.5)
    assert torch.allclose(got, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="threshold"):
        energy_pointing_game(grid, box, image_size=(8, 8), threshold=1.5)
    with pytest.raises(ValueError, match="boxes/masks"):
        energy_pointing_game(grid)


# ------------------------------------------------------------------ segmentation F1
def _f1_by_hand(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 0.0


def test_segmentation_f1_by_hand():
    m = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 4.0, 4.0]]])  # 2 x 4
    # normalised: [0, .25, .5, .75], [0, 0, 1, 1]; mean = 0.3125
    mask = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 0]]], dtype=torch.bool)
    # mean threshold: predicted {(0,2),(0,3),(1,2),(1,3)} -> tp 3, fp 1, fn 1
    assert torch.allclose(
        segmentation_f1(m, masks=mask), torch.tensor([_f1_by_hand(3, 1, 1)])
    )
    # fixed threshold 0.6: predicted {(0,3),(1,2),(1,3)} -> tp 2, fp 1, fn 2
    f06 = _f1_by_hand(2, 1, 2)
    assert torch.allclose(
        segmentation_f1(m, masks=mask, threshold=0.6), torch.tensor([f06])
    )
    # a sweep: the mean of the thresholds' F1s (0.0 keeps every nonzero pixel:
    # {(0,1),(0,2),(0,3),(1,2),(1,3)} -> tp 3, fp 2, fn 1)
    sweep = segmentation_f1(m, masks=mask, threshold=[0.0, 0.6])
    assert torch.allclose(sweep, torch.tensor([(_f1_by_hand(3, 2, 1) + f06) / 2]))
    # rows (the authors' script): row 0: tp 2, fp 0, fn 0; row 1: tp 1, fp 1, fn 1
    rows = segmentation_f1(m, masks=mask, average="rows")
    assert torch.allclose(rows, torch.tensor([(1.0 + _f1_by_hand(1, 1, 1)) / 2]))


def _sklearn_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn's binary ``f1_score`` (the authors' call), written from its
    definition: 2PR / (P + R), 0 where precision or recall is undefined or 0."""
    tp = float(np.sum(y_true & y_pred))
    p = tp / y_pred.sum() if y_pred.sum() else 0.0
    r = tp / y_true.sum() if y_true.sum() else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def test_segmentation_f1_rows_follow_the_authors_script():
    """``average="rows"`` is get_f1_scores(output[0, 1], labels[0]) of
    transformerinterp: f1_score per pixel row of the mean-thresholded map,
    averaged over the rows; ``"image"`` is one f1_score over all pixels."""
    g = torch.Generator().manual_seed(0)
    m = torch.rand(2, 6, 5, generator=g)
    mask = torch.rand(2, 6, 5, generator=g) > 0.6
    mask[:, 0] = False  # a row without foreground in the mask
    rows = segmentation_f1(m, masks=mask, average="rows")
    whole = segmentation_f1(m, masks=mask)
    for i in range(2):
        r = (m[i] - m[i].min()) / (m[i].max() - m[i].min())
        pred = (r > r.mean()).numpy()
        t = mask[i].numpy()
        want = np.mean([_sklearn_f1(t[j], pred[j]) for j in range(6)])
        assert abs(float(rows[i]) - want) < 1e-6
        assert abs(float(whole[i]) - _sklearn_f1(t.ravel(), pred.ravel())) < 1e-6
    assert not torch.allclose(rows, whole)


def test_segmentation_f1_edge_cases_and_bad_input():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    # a constant map predicts nothing: F1 0
    assert float(segmentation_f1(torch.ones(1, 4, 4), masks=mask)) == 0.0
    with pytest.raises(ValueError, match="average"):
        segmentation_f1(torch.ones(1, 4, 4), masks=mask, average="pixels")
    with pytest.raises(ValueError, match="threshold"):
        segmentation_f1(torch.ones(1, 4, 4), masks=mask, threshold=[])
    with pytest.raises(ValueError, match="threshold"):
        segmentation_f1(torch.ones(1, 4, 4), masks=mask, threshold=[0.2, 2.0])
    with pytest.raises(ValueError, match="masks"):
        segmentation_f1(torch.ones(1, 4, 4), masks=torch.zeros(1, 4, 4))


# ------------------------------------------------------------------- grid pointing
def test_make_grid_places_and_resizes_cells():
    imgs = torch.stack([torch.full((3, 4, 4), float(k)) for k in range(4)])
    g = make_grid(imgs, grid=2)  # (1, 3, 4, 4): each cell 2 x 2
    assert g.shape == (1, 3, 4, 4)
    want = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    assert torch.equal(g[0, 0], want)
    # resizing is a mean of pixels: a 2 x 2 checker of 0/1 pixels becomes 0.5
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    imgs2 = checker.float().expand(4, 3, 4, 4)
    assert torch.allclose(make_grid(imgs2, grid=2), torch.full((1, 3, 4, 4), 0.5))
    # an odd side: edges floor(i * 5 / 2) = 0, 2, 5
    g5 = make_grid(imgs[None], grid=2, size=(5, 5))
    assert g5.shape == (1, 3, 5, 5)
    assert float(g5[0, 0, 1, 1]) == 0.0 and float(g5[0, 0, 4, 4]) == 3.0
    assert float(g5[0, 0, 2, 1]) == 2.0 and float(g5[0, 0, 1, 2]) == 1.0
    with pytest.raises(ValueError, match="images"):
        make_grid(imgs[:3], grid=2)
    with pytest.raises(ValueError, match="grid"):
        make_grid(imgs, grid=1)


def test_grid_cell_masks():
    m = grid_cell_masks([0, 3, 5], grid=3, size=(6, 6))
    assert m.shape == (3, 6, 6) and bool(m.flatten(1).sum(1).eq(4).all())
    assert bool(m[0, :2, :2].all()) and bool(m[1, 2:4, :2].all())
    assert bool(m[2, 2:4, 4:].all())


def test_grid_pointing_game_by_hand():
    a = torch.zeros(3, 4, 4)
    a[0, :2, :2] = 1.0  # all in cell 0
    a[1] = 1.0  # uniform: 1/4 in any cell
    a[2, 0, 0], a[2, 3, 3], a[2, 0, 3] = 1.0, 3.0, -4.0  # 3/4 in cell 3
    got = grid_pointing_game(a, cells=[0, 2, 3], grid=2)
    assert torch.allclose(got, torch.tensor([1.0, 0.25, 0.75]))
    # a 2 x 2 patch map scored on the 8 x 8 image
    p = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
    assert torch.allclose(
        grid_pointing_game(p, 1, image_size=(8, 8)), torch.tensor([0.75])
    )
    # 3 x 3 patches cannot be cut in 2 x 2 cells at their resolution: the 6 x 6
    # image can (edges at 0, 3, 6: the middle patch row and column split in half)
    q = torch.zeros(1, 3, 3)
    q[0, 1, 1] = 4.0
    assert torch.allclose(
        grid_pointing_game(q, 0, image_size=(6, 6)), torch.tensor([0.25])
    )
    # zero map: 0
    assert float(grid_pointing_game(torch.zeros(1, 4, 4), 0)) == 0.0
    with pytest.raises(ValueError, match="cells"):
        grid_pointing_game(a, cells=4, grid=2)
    with pytest.raises(ValueError, match="cells"):
        grid_pointing_game(a, cells=[0, 1], grid=2)
    with pytest.raises(TypeError, match="cells"):
        grid_pointing_game(a, cells=[0.0, 1.0, 2.0], grid=2)
