# %% [markdown]
# # A pretrained timm model
#
# The methods work on stock timm ViTs: nothing is patched or re-implemented, and every
# call leaves the model as it found it (hooks and attention settings are temporary).
# This notebook loads an ImageNet ViT-B/16 from the Hugging Face Hub, preprocesses a
# photo with the model's own data configuration, and explains its prediction with
# GenAtt, attention rollout and TIS.
#
# **Offline?** Then the download fails and the notebook falls back to the same
# architecture with random weights, printing a note: the code runs identically, but the
# predictions and maps mean nothing. Set `HF_HUB_OFFLINE=1` to skip the network retries.
# `SMALL` uses ViT-Ti/16, which is faster on a CPU.

# %%
import os

# CAPTUM_VIT_SMALL=1 selects test sizes (the test suite sets it); leave it unset for
# meaningful results.
SMALL = os.environ.get("CAPTUM_VIT_SMALL", "0") == "1"

MODEL_NAME = "vit_tiny_patch16_224" if SMALL else "vit_base_patch16_224"
TIS_MASKS = 16 if SMALL else 256  # the paper uses 1024

# %%
import matplotlib.cbook
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_model_data_config

from captum_vit import (
    AttentionRollout,
    GenAtt,
    TransformerInputSampling,
    ViTAdapter,
    patch_scores,
    viz,
)

torch.manual_seed(0)  # weights of the random-weight fallback
# %matplotlib inline

# %% [markdown]
# ## Load the model
#
# `pretrained=True` downloads the weights on first use (then they come from the local
# cache). Only a failed download is caught: an `OSError`, which covers network and cache
# misses.

# %%
try:
    model = timm.create_model(MODEL_NAME, pretrained=True)
    pretrained = True
except OSError as err:
    print(
        f"NOTE: the pretrained weights of {MODEL_NAME} could not be downloaded "
        f"({type(err).__name__}). Falling back to RANDOM weights: the code below runs "
        "the same, but its predictions and explanations are meaningless."
    )
    model = timm.create_model(MODEL_NAME, pretrained=False)
    pretrained = False
model.eval()

adapter = ViTAdapter(model)
print(
    f"{MODEL_NAME}: {adapter.num_layers} blocks, patch grid {adapter.grid_size}, "
    f"{adapter.num_prefix_tokens} prefix token(s), pretrained={pretrained}"
)

# %% [markdown]
# ## Preprocess with the model's data configuration
#
# `resolve_model_data_config` reads the input size, interpolation, crop and
# normalisation the weights were trained with; `create_transform` turns them into the
# evaluation transform (resize, centre crop, tensor, normalise). The photo is Grace
# Hopper, from matplotlib's sample data.

# %%
config = resolve_model_data_config(model)
transform = create_transform(**config)
print(config)

with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
    photo = Image.open(f).convert("RGB")
inputs = transform(photo)[None]  # (1, 3, 224, 224)

info = ImageNetInfo()
with torch.no_grad():
    probs = model(inputs).softmax(dim=-1)[0]
top = probs.topk(3)
for p, i in zip(top.values, top.indices):
    print(f"{p:.3f}  {info.index_to_description(int(i))}")
target = int(top.indices[0])

# %% [markdown]
# ## Explain
#
# GenAtt and TIS explain a class (here the top prediction). Attention rollout (Abnar &
# Zuidema 2020) is class-agnostic and ignores `target`; `discard_ratio` drops the
# weakest attention links in every block, which sharpens its map, and `start_layer=1`
# skips the first block as Chefer et al. do. To show how class-specific GenAtt is, it
# also explains the second-ranked class.

# %%
second = int(top.indices[1])
attributions = {
    "GenAtt": GenAtt(model).attribute(inputs, target=target),
    "GenAtt, 2nd class": GenAtt(model).attribute(inputs, target=second),
    "Rollout": AttentionRollout(model, discard_ratio=0.9).attribute(inputs),
    "TIS": TransformerInputSampling(model, n_masks=TIS_MASKS).attribute(
        inputs, target=target, seed=0
    ),
}
for name, attr in attributions.items():
    grid = patch_scores(attr, model)
    print(f"{name:<18} {tuple(attr.shape)} -> patch grid {tuple(grid.shape)}")

image = viz.to_unit_range(inputs, config["mean"], config["std"])
fig = viz.comparison_grid(image, attributions, cell_size=2.6)

# %% [markdown]
# The inputs are undone to [0, 1] for display with `viz.to_unit_range`. The same
# attributions feed the metrics of `04_evaluating_explanations.ipynb` unchanged, for
# example `captum_vit.metrics.deletion(model, inputs, attributions["TIS"],
# target=target)`.
