# %% [markdown]
# # Quickstart: ViT explanations in a Captum workflow
#
# captum-vit's methods are Captum `Attribution` objects. Build one on a stock timm
# Vision Transformer, call `attribute(inputs, target=...)`, and get a tensor of the
# inputs' shape, exactly where you would otherwise write
# `IntegratedGradients(model).attribute(inputs, target=labels)`.
#
# This notebook explains the small ViT that ships with the package (trained on
# Fashion-MNIST scenes, so nothing is downloaded) with three methods:
#
# - **GenAtt** (Chefer et al. 2021): attention maps weighted by their gradients and
#   propagated through the blocks; one forward and one backward pass.
# - **TIS**, Transformer Input Sampling (Englebert et al. 2023): masks built from the
#   model's own token activations, each scored by running the model on the kept tokens
#   only.
# - **ViT-CX** (Xie et al. 2023): masks from clustered feature maps of the last block,
#   scored by their causal impact on the class probability.

# %%
import os

# CAPTUM_VIT_SMALL=1 selects test sizes (the test suite sets it); leave it unset for
# meaningful results.
SMALL = os.environ.get("CAPTUM_VIT_SMALL", "0") == "1"

N_IMAGES = 2 if SMALL else 6  # scenes to explain
TIS_MASKS = 32 if SMALL else 1024  # 1024 in the paper (capped at blocks x width)

# %%
import time

import torch
from captum.attr import Saliency

import captum_vit
from captum_vit import GenAtt, TransformerInputSampling, ViTCX, patch_scores, viz
from captum_vit.zoo import CLASS_NAMES, load_default_model, load_default_scenes

# %matplotlib inline

# %% [markdown]
# ## The model and the data
#
# `load_default_model()` returns the timm `VisionTransformer`, in eval mode. Its extras
# sit next to it in `captum_vit.zoo`: `CLASS_NAMES` (one per output), `preprocess`
# (images in [0, 1] to model inputs) and `load_default_config()` (the training record).
# `load_default_scenes(n)` draws held-out scenes: a main clothing item (the label) and a
# smaller distractor of another class on a textured background. It returns the
# model-ready inputs and the raw `Scenes` (images in [0, 1], labels, boxes, masks).
# `ViTAdapter` tells what the methods see: the patch grid, the prefix (CLS) tokens and
# the number of blocks.

# %%
model = load_default_model()
inputs, scenes = load_default_scenes(n=N_IMAGES, seed=0)
labels = torch.as_tensor(scenes.labels)
names = CLASS_NAMES

adapter = captum_vit.ViTAdapter(model)
print(
    f"{type(model).__name__}: {adapter.num_layers} blocks, patch grid "
    f"{adapter.grid_size}, {adapter.num_prefix_tokens} prefix token(s)"
)
print("inputs", tuple(inputs.shape))

with torch.no_grad():
    probs = model(inputs).softmax(dim=-1)
pred = probs.argmax(dim=-1)
for i in range(N_IMAGES):
    print(
        f"scene {i}: label {names[labels[i]]:<12} predicted {names[pred[i]]:<12} "
        f"p = {probs[i, pred[i]]:.2f}"
    )

# %% [markdown]
# ## Attribute, the Captum way
#
# Each method is built once on the model and called per batch. `target` is an int, a
# per-sample list or a 1-D tensor, as in Captum; here every scene is explained for its
# true label. The perturbation methods (TIS, ViT-CX) take a `seed`, so their masks and
# noise are reproducible, and batch their forward passes (`perturbations_per_eval`).
# Captum's own `Saliency` sits in the same loop for comparison.

# %%
explainers = {
    "Saliency": Saliency(model),
    "GenAtt": GenAtt(model),
    "TIS": TransformerInputSampling(model, n_masks=TIS_MASKS),
    "ViT-CX": ViTCX(model),
}
options = {
    "Saliency": dict(abs=True),
    "GenAtt": {},
    "TIS": dict(seed=0),
    "ViT-CX": dict(seed=0),
}

attributions = {}
for name, explainer in explainers.items():
    start = time.perf_counter()
    attributions[name] = explainer.attribute(inputs, target=labels, **options[name])
    seconds = time.perf_counter() - start
    print(f"{name:<8} {tuple(attributions[name].shape)}  {seconds:.1f} s")

# %% [markdown]
# ## From pixels back to patches
#
# GenAtt and TIS score tokens. To fit Captum's contract they spread each patch's score
# uniformly over its pixels, and `patch_scores` recovers the (B, gh, gw) patch grid
# exactly. ViT-CX works at pixel level (its masks are upsampled feature maps), and
# Saliency is a pixel gradient, so for them `patch_scores` is the mean over each patch.
# Below, the grid is expanded back to pixels to check the round trip, and the three
# best patches of the first scene are listed as (row, column).

# %%
grids = {name: patch_scores(a, model) for name, a in attributions.items()}
ph, pw = adapter.patch_size
for name, grid in grids.items():
    pixels = grid.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)
    exact = torch.allclose(
        pixels[:, None].expand_as(attributions[name]).float(),
        attributions[name].float(),
        atol=1e-6,
    )
    top = grid[0].flatten().topk(3).indices
    cells = [divmod(int(j), grid.shape[-1]) for j in top]
    print(f"{name:<8} grid {tuple(grid.shape)}  patch-constant: {exact}  top: {cells}")

# %% [markdown]
# ## Look at them
#
# `viz.comparison_grid` draws one row per image and one column per method over the
# image (signed maps in a diverging colormap, others in a sequential one). For display
# only, the token methods can return smooth maps with `interpolate_mode="bilinear"`;
# keep the default `"nearest"` when the maps feed metrics or `patch_scores`.

# %%
shown = dict(attributions)
shown["GenAtt (bilinear)"] = GenAtt(model).attribute(
    inputs, target=labels, interpolate_mode="bilinear"
)
titles = [f"{names[labels[i]]} (p={probs[i, labels[i]]:.2f})" for i in range(N_IMAGES)]
fig = viz.comparison_grid(scenes.images, shown, row_titles=titles)

# %% [markdown]
# ## Next
#
# - `02_skipplus.ipynb`: wrap Captum's IntegratedGradients / InputXGradient with
#   SkipPLUS and compare them by insertion and deletion.
# - `03_train_vit_shapley.ipynb`: train ViT Shapley for your own model and data.
# - `04_evaluating_explanations.ipynb`: the metrics in `captum_vit.metrics`.
# - `05_pretrained_timm.ipynb`: the same methods on a pretrained ImageNet ViT.
