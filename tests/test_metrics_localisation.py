"""Localisation, complexity and robustness metrics against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from captum.attr import InputXGradient, Saliency
from captum.metrics import sensitivity_max

from captum_vit.metrics import (
    box_iou,
    effective_complexity,
    max_sensitivity,
    mean_iou,
    pixel_accuracy,
    pointing_game,
    segmentation_ap,
    sparseness,
)


def _peak_map(b: int, h: int, w: int, peaks) -> torch.Tensor:
    m = torch.zeros(b, h, w)
    for i, (r, c) in enumerate(peaks):
        m[i, r, c] = 1.0
    return m


# ----------------------------------------------------------------- pointing game
def test_pointing_game_boxes_masks_and_tolerance():
    maps = _peak_map(3, 10, 10, [(2, 3), (8, 8), (5, 0)])
    # [x1, y1, x2, y2]: columns x1..x2-1, rows y1..y2-1
    boxes = torch.tensor([[3, 2, 4, 3], [0, 0, 8, 8], [0, 5, 1, 6]])
    assert torch.equal(pointing_game(maps, boxes), torch.tensor([1.0, 0.0, 1.0]))
    # the same as masks
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, 2, 3] = masks[2, 5, 0] = True
    masks[1, :8, :8] = True
    assert torch.equal(pointing_game(maps, masks=masks), torch.tensor([1.0, 0, 1]))
    # (8, 8) is sqrt(2) from (7, 7): a miss at tolerance 1, a hit at 1.5
    assert float(pointing_game(maps[1:2], boxes[1:2], tolerance=1)) == 0.0
    assert float(pointing_game(maps[1:2], boxes[1:2], tolerance=1.5)) == 1.0
    # several boxes per sample: a hit in any of them
    many = [[[0, 0, 1, 1], [3, 2, 5, 5]], [[8, 8, 9, 9]], [[9, 9, 10, 10]]]
    assert torch.equal(pointing_game(maps, many), torch.tensor([1.0, 1, 0]))
    # channels are summed; a 1-tuple is unwrapped
    chans = torch.stack([maps, torch.zeros_like(maps)], dim=1)
    assert torch.equal(pointing_game((chans,), boxes), torch.tensor([1.0, 0, 1]))


def test_pointing_game_skips_large_boxes_and_handles_ties():
    maps = _peak_map(2, 10, 10, [(1, 1), (9, 9)])
    boxes = torch.tensor([[0, 0, 8, 8], [0, 0, 2, 2]])  # 64% and 4% of the image
    out = pointing_game(maps, boxes, max_box_fraction=0.5)
    assert torch.isnan(out[0]) and out[1] == 0.0
    assert float(torch.nanmean(out)) == 0.0
    # a 2x2 patch grid upsampled to 10x10 (nearest): the top-left patch is the max
    grid = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    box = torch.tensor([[4, 4, 6, 6]])  # overlaps the top-left patch in one pixel
    kw = dict(image_size=(10, 10))
    assert float(pointing_game(grid, box, ties="any", **kw)) == 1.0
    assert float(pointing_game(grid, box, ties="all", **kw)) == 0.0
    r1 = pointing_game(grid, box, ties="random", seed=1, **kw)
    assert torch.equal(r1, pointing_game(grid, box, ties="random", seed=1, **kw))


def test_localisation_bad_input():
    maps = torch.rand(2, 10, 10)
    with pytest.raises(ValueError, match="boxes"):
        pointing_game(maps, torch.tensor([[0, 0, 11, 5], [0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="boxes"):
        pointing_game(maps, torch.tensor([[-1, 0, 5, 5], [0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="boxes"):
        pointing_game(maps, torch.tensor([[3, 3, 3, 5], [0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="boxes"):
        pointing_game(maps, torch.tensor([[0, 0, 2, 2]]))  # one box for two maps
    with pytest.raises(ValueError, match="masks"):
        segmentation_ap(maps, masks=torch.zeros(2, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="boxes/masks"):
        mean_iou(maps)
    with pytest.raises(ValueError, match="ties"):
        pointing_game(maps, torch.tensor([[0, 0, 2, 2]] * 2), ties="last")


# ------------------------------------------------------- segmentation metrics
def test_segmentation_ap_closed_form():
    # scores 0.9, 0.8, 0.7, 0.6 with labels 1, 0, 1, 0:
    # AP = 1 * 1/2 + 2/3 * 1/2 = 5/6
    maps = torch.tensor([[[0.9, 0.8], [0.7, 0.6]]])
    masks = torch.tensor([[[True, False], [True, False]]])
    fg = segmentation_ap(maps, masks, include_background=False)
    assert torch.allclose(fg, torch.tensor([5 / 6]))
    # ties are grouped: scores 1, 1, 0, 0 with labels 1, 0, 1, 0 -> 0.5 * 0.5 + 0.5
    tied = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    got = segmentation_ap(tied, masks, include_background=False)
    assert torch.allclose(got, torch.tensor([0.5]))
    # Chefer protocol: r = (1, 2/3, 1/3, 0) ranked with 1 - r for the background:
    # scores/labels 1:{1,1} 2/3:{0,0} 1/3:{1,1} 0:{0,0}
    # -> AP = 0.5 * 1 + 0.5 * 4/6 = 5/6
    both = segmentation_ap(maps, masks)
    assert torch.allclose(both, torch.tensor([5 / 6]))
    # a perfect map
    perfect = masks.float()
    assert torch.allclose(segmentation_ap(perfect, masks), torch.ones(1))


def test_miou_pixel_accuracy_closed_form():
    m = torch.tensor(
        [[[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0], [0, 0, 0, 0], [0, 0, 0, 0]]]
    )
    # normalised: /3; mean = (6 / 3) / 16 = 0.125 -> predicted foreground: values > 0
    # i.e. columns 1..3 of the first two rows (6 pixels)
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :2, 2:] = True  # 4 pixels, all predicted
    acc = pixel_accuracy(m, gt)
    assert torch.allclose(acc, torch.tensor([14 / 16]))
    # fg IoU 4/6; bg: pred bg 10 px, gt bg 12 px, intersection 10 -> 10/12
    assert torch.allclose(mean_iou(m, gt), torch.tensor([(4 / 6 + 10 / 12) / 2]))
    # fixed threshold 0.5 on the normalised map: values 2, 3 -> exactly gt
    assert torch.allclose(mean_iou(m, gt, threshold=0.5), torch.ones(1))
    assert torch.allclose(pixel_accuracy(m, gt, threshold=0.5), torch.ones(1))
    # boxes instead of masks give the same result
    box = torch.tensor([[2, 0, 4, 2]])
    assert torch.allclose(mean_iou(m, boxes=box), mean_iou(m, gt))
    # a constant map predicts nothing: accuracy = background share
    const = torch.ones(1, 4, 4)
    assert torch.allclose(pixel_accuracy(const, gt), torch.tensor([12 / 16]))
    assert torch.allclose(mean_iou(const, gt), torch.tensor([(0 + 12 / 16) / 2]))


def test_box_iou_closed_form_and_upsampling():
    maps = torch.zeros(2, 8, 8)
    maps[0, 2:6, 1:5] = 1.0  # predicted box [1, 2, 5, 6]
    maps[1, 0:4, 0:4] = 1.0
    gt = torch.tensor([[3, 2, 7, 6], [0, 0, 4, 4]])
    # sample 0: intersection x 3..5 (2) * y 2..6 (4) = 8; union 16 + 16 - 8 = 24
    assert torch.allclose(box_iou(maps, gt), torch.tensor([8 / 24, 1.0]))
    # a (B, 2, 2) grid upsampled to 8x8: top-left quarter = [0, 0, 4, 4]
    grid = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    got = box_iou(grid, torch.tensor([[0, 0, 4, 4]]), image_size=(8, 8))
    assert torch.allclose(got, torch.ones(1))
    assert float(box_iou(torch.ones(1, 8, 8), torch.tensor([[0, 0, 4, 4]]))) == 0.0
    # the best of several boxes
    two = [[[6, 6, 8, 8], [1, 2, 5, 6]], [[0, 0, 4, 4]]]
    assert torch.allclose(box_iou(maps, two), torch.ones(2))


# -------------------------------------------------------------------- complexity
def test_sparseness_gini_closed_form():
    a = torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    # sorted (1, 2, 3, 4): sum (2k - 5) a_k = -3 - 2 + 3 + 12 = 10; / (4 * 10)
    assert torch.allclose(sparseness(a), torch.tensor([0.75, 0.0, 0.25]))
    # negatives: shift (-1, 1) -> (0, 2): 0.5; abs -> (1, 1): 0; clip -> (0, 1): 0.5
    s = torch.tensor([[-1.0, 1.0]])
    assert torch.allclose(sparseness(s), torch.tensor([0.5]))
    assert torch.allclose(sparseness(s, negatives="abs"), torch.tensor([0.0]))
    assert torch.allclose(sparseness(s, negatives="clip"), torch.tensor([0.5]))
    # all-zero map: documented 0, no NaN
    assert torch.equal(sparseness(torch.zeros(1, 5)), torch.zeros(1))
    # invariant to nearest upsampling of a grid, and to scale
    grid = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    up = (
        grid.repeat_interleave(8, 1)
        .repeat_interleave(8, 2)[:, None]
        .expand(2, 3, 32, 32)
    )
    assert torch.allclose(sparseness(grid), sparseness(up), atol=1e-6)
    assert torch.allclose(sparseness(grid), sparseness(grid * 7), atol=1e-6)


def test_effective_complexity():
    a = torch.tensor([[0.0, 1e-6, -0.5, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(effective_complexity(a), torch.tensor([2.0, 0.0]))
    assert torch.equal(
        effective_complexity(a, eps=0.3, normalize=True), torch.tensor([1.0, 0.0])
    )


# -------------------------------------------------------------------- robustness
class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_max_sensitivity_matches_captum_and_is_seeded():
    model = _Linear()
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(1)).requires_grad_()
    # the gradient of a linear model does not move: sensitivity 0
    sal = max_sensitivity(Saliency(model), x, target=1, abs=False)
    assert torch.allclose(sal, torch.zeros(3), atol=1e-7)
    ixg = InputXGradient(model)
    state = torch.random.get_rng_state()
    a = max_sensitivity(ixg, x, target=[0, 1, 2])
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    b = max_sensitivity(ixg, x, target=[0, 1, 2])
    assert torch.equal(a, b) and bool((a > 0).all())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = sensitivity_max(ixg.attribute, x, target=[0, 1, 2], n_perturb_samples=10)
    assert torch.allclose(a, ref)
    # InputXGradient: ||w (x + d) - w x|| / ||w x||, |d| <= 0.02 per element
    w = model.fc.weight.detach()[torch.tensor([0, 1, 2])]
    bound = (w.abs() * 0.02).norm(dim=1) / (w * x).norm(dim=1)
    assert bool((a <= bound + 1e-6).all())


def test_max_sensitivity_tensor_only_explainer_and_feature_mask():
    model = _Linear()
    x = torch.randn(2, 12, generator=torch.Generator().manual_seed(2))
    mask = torch.arange(12).view(1, 12).repeat(2, 1) // 3  # per-example mask

    def explain(inputs, target, feature_mask):
        assert isinstance(inputs, torch.Tensor)  # never a tuple
        assert feature_mask.shape[0] == inputs.shape[0]
        with torch.no_grad():
            return model(inputs)[:, target][:, None] * torch.ones_like(inputs) + (
                feature_mask * 0.0
            )

    out = max_sensitivity(explain, x, target=0, feature_mask=mask)
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_max_sensitivity_with_a_captum_vit_attributor():
    from helpers import make_model

    from captum_vit import GenAtt

    model = make_model("cls")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    before = [p.detach().clone() for p in model.parameters()]
    a = max_sensitivity(GenAtt(model), images, target=[1, 2], n_perturb_samples=3)
    b = max_sensitivity(GenAtt(model), images, target=[1, 2], n_perturb_samples=3)
    assert a.shape == (2,) and torch.isfinite(a).all() and torch.equal(a, b)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
