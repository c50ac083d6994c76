# %% [markdown]
# # SkipPLUS: Captum's gradient methods, applied inside the ViT
#
# Input-gradient methods such as Integrated Gradients attribute the pixels, through the
# patch embedding. PLUS (Mehri et al., CVPR-W 2024) instead applies the method to every
# block's input: for block `l`, the sub-network `f_l` (blocks `l .. L-1`, the final norm
# and the head) is explained at its input hidden states `x_l`, the D hidden values of
# each token are summed into one token score, and the scores are summed over the blocks.
# **SkipPLUS** keeps only the second half of the blocks, which is cheaper and scored
# better in the paper.
#
# `PLUSWrapper` and `SkipPLUSWrapper` take a Captum attributor built on the model, so
# the change to an existing Captum loop is one wrapper:
#
# ```python
# SkipPLUSWrapper(IntegratedGradients(model)).attribute(x, target=y, n_steps=50)
# ```
#
# Keywords of the wrapped method (`n_steps`, `baselines`, `internal_batch_size`, ...)
# pass through. Here IntegratedGradients (IG) and InputXGradient (IxG) are compared with
# their SkipPLUS versions by insertion and deletion.

# %%
import os

# CAPTUM_VIT_SMALL=1 selects test sizes (the test suite sets it); leave it unset for
# meaningful results.
SMALL = os.environ.get("CAPTUM_VIT_SMALL", "0") == "1"

N_IMAGES = 2 if SMALL else 32  # scenes explained and scored
IG_STEPS = 8 if SMALL else 50  # Riemann steps of Integrated Gradients
CURVE_STEPS = 16 if SMALL else None  # None: one patch per step (64 patches)

# %%
import time

import torch
from captum.attr import InputXGradient, IntegratedGradients

from captum_vit import PLUSWrapper, SkipPLUSWrapper, patch_scores, viz
from captum_vit.metrics import deletion, insertion
from captum_vit.zoo import CLASS_NAMES, load_default_model, load_default_scenes

# %matplotlib inline

model = load_default_model()
inputs, scenes = load_default_scenes(n=N_IMAGES, seed=1)
labels = torch.as_tensor(scenes.labels)

# %% [markdown]
# ## Wrap and attribute
#
# The wrapper reads the model from the attributor. `layers` lists the blocks whose
# inputs are explained: all of them for PLUS, the second half for SkipPLUS (blocks
# `ceil(L/2) .. L-1`). The wrapped methods differentiate the target **logit**.
#
# Without `baselines`, IG integrates from zero hidden states at each block. Passing
# images as `baselines` (for example `torch.zeros_like(inputs)`) makes the wrapper use
# *their* hidden states at each block instead.

# %%
ig = IntegratedGradients(model)
ixg = InputXGradient(model)
skip_ig = SkipPLUSWrapper(ig)
skip_ixg = SkipPLUSWrapper(ixg)
print("PLUS layers:    ", PLUSWrapper(ig).layers)
print("SkipPLUS layers:", skip_ig.layers)

calls = {
    "IG": lambda: ig.attribute(inputs, target=labels, n_steps=IG_STEPS),
    "IxG": lambda: ixg.attribute(inputs, target=labels),
    "SkipPLUS(IG)": lambda: skip_ig.attribute(inputs, target=labels, n_steps=IG_STEPS),
    "SkipPLUS(IxG)": lambda: skip_ixg.attribute(inputs, target=labels),
}
attributions = {}
for name, call in calls.items():
    start = time.perf_counter()
    attributions[name] = call().detach()
    print(f"{name:<14} {time.perf_counter() - start:5.1f} s")

# %% [markdown]
# The plain methods give a signed score per pixel and channel; the SkipPLUS maps are
# token-level (constant over each patch, with `patch_scores` giving the grid). Red is
# positive evidence for the label, blue negative.

# %%
k = min(N_IMAGES, 3)
titles = [CLASS_NAMES[int(y)] for y in labels[:k]]
fig = viz.comparison_grid(
    scenes.images[:k],
    {name: a[:k] for name, a in attributions.items()},
    row_titles=titles,
)

# %% [markdown]
# ## Insertion and deletion
#
# Both metrics rank the 64 patches by attribution (pixel attributions are summed per
# patch). *Insertion* starts from the image with every patch token removed and adds
# patches, most important first; *deletion* starts from the full image and removes them.
# Each curve records the label's softmax probability; the score is the area under it
# (insertion: higher is better, deletion: lower is better). On a timm ViT, patches are
# removed as tokens (no pixel baseline is needed). A random ranking is the reference.
#
# With few images (`SMALL`) the numbers are noise; at the full size they are means over
# 32 scenes.

# %%
gh, gw = patch_scores(attributions["IG"], model).shape[1:]
random_scores = torch.rand(N_IMAGES, gh, gw, generator=torch.Generator().manual_seed(0))
scored = dict(attributions, random=random_scores)

print(f"{'method':<14} {'insertion':>9} {'deletion':>9} {'ins - del':>9}")
for name, attr in scored.items():
    kw = dict(target=labels, n_steps=CURVE_STEPS, seed=0)
    ins = insertion(model, inputs, attr, **kw).mean()
    dele = deletion(model, inputs, attr, **kw).mean()
    print(f"{name:<14} {ins:9.3f} {dele:9.3f} {ins - dele:9.3f}")

# %% [markdown]
# Things to try: `PLUSWrapper` (all blocks) in place of `SkipPLUSWrapper`;
# `token_reduction="abs_sum"` for unsigned token scores; other Captum methods such as
# `Saliency`, `GradientShap` or `NoiseTunnel(...)`; `removal="blur"` in the metrics for
# the pixel-baseline protocol of RISE (see `04_evaluating_explanations.ipynb`).
