# %% [markdown]
# # Evaluating explanations
#
# `captum_vit.metrics` scores attributions the way Captum's metrics do:
# `metric(model, inputs, attributions, target=...)` returns one value per image, with no
# gradients and batched forward passes. This notebook runs them on three ViT methods and
# a random baseline, grouped by the property they test:
#
# - **faithfulness**: does the model's output follow the attribution? Insertion /
#   deletion curves, AOPC, faithfulness correlation, sensitivity-n;
# - **localisation**: does the attribution point at the object? Pointing game against
#   the scenes' ground-truth boxes;
# - **complexity**: how concentrated is it? Sparseness (Gini index).
#
# Perturbation metrics must hide features, and how they do it matters. On a timm ViT
# the default removes patch **tokens** (the model runs on the kept tokens only, an input
# it can process); a **pixel baseline** (`removal="blur"`, `"black"`, `"mean"`, ...)
# paints over the pixels instead, as RISE does for CNNs. Both are compared below.

# %%
import os

# CAPTUM_VIT_SMALL=1 selects test sizes (the test suite sets it); leave it unset for
# meaningful results.
SMALL = os.environ.get("CAPTUM_VIT_SMALL", "0") == "1"

N_IMAGES = 2 if SMALL else 32  # scenes scored
TIS_MASKS = 32 if SMALL else 1024
CURVE_STEPS = 16 if SMALL else None  # None: one patch per step (64 patches)
N_SUBSETS = 10 if SMALL else 100  # random subsets of the correlation metrics

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from captum_vit import (
    AttentionRollout,
    GenAtt,
    TransformerInputSampling,
    ViTAdapter,
    metrics,
)
from captum_vit.zoo import load_default_model, load_default_scenes

# %matplotlib inline

model = load_default_model()
inputs, scenes = load_default_scenes(n=N_IMAGES, seed=2)
labels = torch.as_tensor(scenes.labels)

attributions = {
    "GenAtt": GenAtt(model).attribute(inputs, target=labels),
    "Rollout": AttentionRollout(model).attribute(inputs),
    "TIS": TransformerInputSampling(model, n_masks=TIS_MASKS).attribute(
        inputs, target=labels, seed=0
    ),
}
# Reference: a random score per patch, spread over the patch's pixels like the others.
gh, gw = ViTAdapter(model).grid_size
noise = torch.rand(N_IMAGES, 1, gh, gw, generator=torch.Generator().manual_seed(0))
attributions["random"] = F.interpolate(noise, size=inputs.shape[-2:]).expand_as(inputs)

# %% [markdown]
# ## Insertion and deletion curves
#
# `insertion_deletion_curves` returns the x-axis (fraction of patches moved) and one
# curve per image for each direction; `area_under_curve` integrates them. Insertion
# should rise fast (high area), deletion fall fast (low area). `target` is the label.

# %%
curves = {
    name: metrics.insertion_deletion_curves(
        model, inputs, attr, target=labels, n_steps=CURVE_STEPS, seed=0
    )
    for name, attr in attributions.items()
}

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
for name, c in curves.items():
    axes[0].plot(c.fractions, c.insertion.mean(dim=0), label=name)
    axes[1].plot(c.fractions, c.deletion.mean(dim=0), label=name)
axes[0].set_title("insertion (higher is better)")
axes[1].set_title("deletion (lower is better)")
for ax in axes:
    ax.set_xlabel("fraction of patches")
axes[0].set_ylabel("label probability")
axes[1].legend(fontsize=8)
fig.tight_layout()

for name, c in curves.items():
    ins = metrics.area_under_curve(c.fractions, c.insertion).mean()
    dele = metrics.area_under_curve(c.fractions, c.deletion).mean()
    print(f"{name:<8} insertion AUC {ins:.3f}   deletion AUC {dele:.3f}")


# %% [markdown]
# ## Tokens or a pixel baseline?
#
# The same areas, now with the patches painted over by a blurred copy of the image
# (`removal="blur"`, the RISE / TIS protocol) instead of removed as tokens. A blurred
# patch is still a token the model attends to, and the blurred image is unlike anything
# it was trained on, so the scores can move and even reorder the methods. Report which
# removal a number was measured with.


# %%
def mean_areas(c):
    ins = metrics.area_under_curve(c.fractions, c.insertion).mean().item()
    dele = metrics.area_under_curve(c.fractions, c.deletion).mean().item()
    return ins, dele


print(f"{'':<8} {'insertion':>19} {'deletion':>19}")
print(f"{'':<8} {'tokens':>9} {'blur':>9} {'tokens':>9} {'blur':>9}")
for name, attr in attributions.items():
    blurred = metrics.insertion_deletion_curves(
        model, inputs, attr, target=labels, removal="blur", n_steps=CURVE_STEPS, seed=0
    )
    ins_t, del_t = mean_areas(curves[name])
    ins_b, del_b = mean_areas(blurred)
    print(f"{name:<8} {ins_t:9.3f} {ins_b:9.3f} {del_t:9.3f} {del_b:9.3f}")

# %% [markdown]
# ## AOPC, faithfulness correlation, sensitivity-n
#
# - **AOPC** (Samek et al. 2017): the mean drop of the label probability along the
#   deletion curve; higher is better.
# - **Faithfulness correlation** (Bhatt et al. 2020): over random patch subsets, the
#   correlation between the attribution summed over the subset and the probability drop
#   when the subset is removed; in [-1, 1], higher is better.
# - **Sensitivity-n** (Ancona et al. 2018): the same correlation for subsets of a fixed
#   size `n`, here several sizes at once.

# %%
sizes = [4, 16, 32]
print(f"{'':<8} {'AOPC':>6} {'faith.':>7}  sensitivity-n for n = {sizes}")
for name, attr in attributions.items():
    kw = dict(target=labels, seed=0)
    aopc = metrics.aopc(model, inputs, attr, n_steps=CURVE_STEPS, **kw)
    faith = metrics.faithfulness_correlation(
        model, inputs, attr, n_samples=N_SUBSETS, **kw
    )
    sens = metrics.sensitivity_n(
        model, inputs, attr, n=sizes, n_samples=N_SUBSETS, **kw
    )
    print(
        f"{name:<8} {aopc.mean():6.3f} {faith.mean():7.3f}  "
        + " ".join(f"{v:6.3f}" for v in sens.mean(dim=0))
    )

# %% [markdown]
# Read these against the random row. By default faithfulness correlation draws subsets
# of every size, and a larger subset both sums more (non-negative) attribution and
# removes more evidence, so even random scores correlate positively. Sensitivity-n fixes
# the size and removes that effect; `faithfulness_correlation(..., subset_size=k)` does
# the same (Bhatt et al.'s original protocol).

# %% [markdown]
# ## Localisation and sparseness
#
# The scenes come with ground-truth boxes `[x1, y1, x2, y2]` of the main item (the
# label) and of the distractor. The **pointing game** counts a hit when the
# attribution's maximum falls inside the box (for patch-constant maps, any of the tied
# maximal pixels; see `ties=`). A class-specific method should point at the main item,
# not at the distractor. **Sparseness** is the Gini index of the map: 0 for a uniform
# map, near 1 when a few values carry everything. It needs no model.

# %%
boxes = torch.as_tensor(scenes.boxes)  # (B, 2, 4): main item, distractor
print(f"{'':<8} {'hit main':>9} {'hit distractor':>15} {'sparseness':>11}")
for name, attr in attributions.items():
    main = metrics.pointing_game(attr, boxes=boxes[:, 0]).mean()
    distractor = metrics.pointing_game(attr, boxes=boxes[:, 1]).mean()
    gini = metrics.sparseness(attr).mean()
    print(f"{name:<8} {main:9.2f} {distractor:15.2f} {gini:11.3f}")

# %% [markdown]
# ## Beyond ViTs
#
# Every model-based metric also takes a Captum-style `feature_mask` (integer feature ids
# over the pixels) and a pixel `removal`, which works for any model, e.g.
# `metrics.deletion(cnn, images, attr, feature_mask=superpixels, removal="mean")`.
# `metrics.max_sensitivity` (robustness to input noise) and
# `metrics.effective_complexity` complete the set.
