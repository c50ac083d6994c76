"""Write the tutorial notebooks from the cell sources in this file.

The notebooks in this folder are generated: edit the cells here, then run
``python tutorials/_build.py`` to rewrite them (without outputs). The test suite
executes every notebook and checks that the committed files equal this script's output.

Every notebook starts with a parameter cell: ``CAPTUM_VIT_SMALL=1`` in the environment
selects test sizes (the suite runs them so), otherwise the sizes give meaningful
results.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Tuple

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

Cell = Tuple[str, str]  # ("md" | "code", source)


def md(text: str) -> Cell:
    return ("md", text.strip("\n"))


def code(text: str) -> Cell:
    return ("code", text.strip("\n"))


_SMALL = """
import os

# CAPTUM_VIT_SMALL=1 selects test sizes (the test suite sets it); leave it unset for
# meaningful results.
SMALL = os.environ.get("CAPTUM_VIT_SMALL", "0") == "1"
"""

# ---------------------------------------------------------------------------- 01
QUICKSTART: List[Cell] = [
    md("""
# Quickstart: ViT explanations in a Captum workflow

captum-vit's methods are Captum `Attribution` objects. Build one on a stock timm
Vision Transformer, call `attribute(inputs, target=...)`, and get a tensor of the
inputs' shape, exactly where you would otherwise write
`IntegratedGradients(model).attribute(inputs, target=labels)`.

This notebook explains the small ViT that ships with the package (trained on
Fashion-MNIST scenes, so nothing is downloaded) with three methods:

- **GenAtt** (Chefer et al. 2021): attention maps weighted by their gradients and
  propagated through the blocks; one forward and one backward pass.
- **TIS**, Transformer Input Sampling (Englebert et al. 2023): masks built from the
  model's own token activations, each scored by running the model on the kept tokens
  only.
- **ViT-CX** (Xie et al. 2023): masks from clustered feature maps of the last block,
  scored by their causal impact on the class probability.
"""),
    code(_SMALL + """
N_IMAGES = 2 if SMALL else 6  # scenes to explain
TIS_MASKS = 32 if SMALL else 1024  # 1024 in the paper (capped at blocks x width)
"""),
    code("""
import time

import torch
from captum.attr import Saliency

import captum_vit
from captum_vit import GenAtt, TransformerInputSampling, ViTCX, patch_scores, viz
from captum_vit.zoo import CLASS_NAMES, load_default_model, load_default_scenes

%matplotlib inline
"""),
    md("""
## The model and the data

`load_default_model()` returns the timm `VisionTransformer`, in eval mode. Its extras
sit next to it in `captum_vit.zoo`: `CLASS_NAMES` (one per output), `preprocess`
(images in [0, 1] to model inputs) and `load_default_config()` (the training record).
`load_default_scenes(n)` draws held-out scenes: a main clothing item (the label) and a
smaller distractor of another class on a textured background. It returns the
model-ready inputs and the raw `Scenes` (images in [0, 1], labels, boxes, masks).
`ViTAdapter` tells what the methods see: the patch grid, the prefix (CLS) tokens and
the number of blocks.
"""),
    code("""
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
"""),
    md("""
## Attribute, the Captum way

Each method is built once on the model and called per batch. `target` is an int, a
per-sample list or a 1-D tensor, as in Captum; here every scene is explained for its
true label. The perturbation methods (TIS, ViT-CX) take a `seed`, so their masks and
noise are reproducible, and batch their forward passes (`perturbations_per_eval`).
Captum's own `Saliency` sits in the same loop for comparison.
"""),
    code("""
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
"""),
    md("""
## From pixels back to patches

GenAtt and TIS score tokens. To fit Captum's contract they spread each patch's score
uniformly over its pixels, and `patch_scores` recovers the (B, gh, gw) patch grid
exactly. ViT-CX works at pixel level (its masks are upsampled feature maps), and
Saliency is a pixel gradient, so for them `patch_scores` is the mean over each patch.
Below, the grid is expanded back to pixels to check the round trip, and the three
best patches of the first scene are listed as (row, column).
"""),
    code("""
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
"""),
    md("""
## Look at them

`viz.comparison_grid` draws one row per image and one column per method over the
image (signed maps in a diverging colormap, others in a sequential one). For display
only, the token methods can return smooth maps with `interpolate_mode="bilinear"`;
keep the default `"nearest"` when the maps feed metrics or `patch_scores`.
"""),
    code("""
shown = dict(attributions)
shown["GenAtt (bilinear)"] = GenAtt(model).attribute(
    inputs, target=labels, interpolate_mode="bilinear"
)
titles = [f"{names[labels[i]]} (p={probs[i, labels[i]]:.2f})" for i in range(N_IMAGES)]
fig = viz.comparison_grid(scenes.images, shown, row_titles=titles)
"""),
    md("""
## Next

- `02_skipplus.ipynb`: wrap Captum's IntegratedGradients / InputXGradient with
  SkipPLUS and compare them by insertion and deletion.
- `03_train_vit_shapley.ipynb`: train ViT Shapley for your own model and data.
- `04_evaluating_explanations.ipynb`: the metrics in `captum_vit.metrics`.
- `05_pretrained_timm.ipynb`: the same methods on a pretrained ImageNet ViT.
"""),
]

# ---------------------------------------------------------------------------- 02
SKIPPLUS: List[Cell] = [
    md("""
# SkipPLUS: Captum's gradient methods, applied inside the ViT

Input-gradient methods such as Integrated Gradients attribute the pixels, through the
patch embedding. PLUS (Mehri et al., CVPR-W 2024) instead applies the method to every
block's input: for block `l`, the sub-network `f_l` (blocks `l .. L-1`, the final norm
and the head) is explained at its input hidden states `x_l`, the D hidden values of
each token are summed into one token score, and the scores are summed over the blocks.
**SkipPLUS** keeps only the second half of the blocks, which is cheaper and scored
better in the paper.

`PLUSWrapper` and `SkipPLUSWrapper` take a Captum attributor built on the model, so
the change to an existing Captum loop is one wrapper:

```python
SkipPLUSWrapper(IntegratedGradients(model)).attribute(x, target=y, n_steps=50)
```

Keywords of the wrapped method (`n_steps`, `baselines`, `internal_batch_size`, ...)
pass through. Here IntegratedGradients (IG) and InputXGradient (IxG) are compared with
their SkipPLUS versions by insertion and deletion.
"""),
    code(_SMALL + """
N_IMAGES = 2 if SMALL else 32  # scenes explained and scored
IG_STEPS = 8 if SMALL else 50  # Riemann steps of Integrated Gradients
CURVE_STEPS = 16 if SMALL else None  # None: one patch per step (64 patches)
"""),
    code("""
import time

import torch
from captum.attr import InputXGradient, IntegratedGradients

from captum_vit import PLUSWrapper, SkipPLUSWrapper, patch_scores, viz
from captum_vit.metrics import deletion, insertion
from captum_vit.zoo import CLASS_NAMES, load_default_model, load_default_scenes

%matplotlib inline

model = load_default_model()
inputs, scenes = load_default_scenes(n=N_IMAGES, seed=1)
labels = torch.as_tensor(scenes.labels)
"""),
    md("""
## Wrap and attribute

The wrapper reads the model from the attributor. `layers` lists the blocks whose
inputs are explained: all of them for PLUS, the second half for SkipPLUS (blocks
`ceil(L/2) .. L-1`). The wrapped methods differentiate the target **logit**.

Without `baselines`, IG integrates from zero hidden states at each block. Passing
images as `baselines` (for example `torch.zeros_like(inputs)`) makes the wrapper use
*their* hidden states at each block instead.
"""),
    code("""
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
"""),
    md("""
The plain methods give a signed score per pixel and channel; the SkipPLUS maps are
token-level (constant over each patch, with `patch_scores` giving the grid). Red is
positive evidence for the label, blue negative.
"""),
    code("""
k = min(N_IMAGES, 3)
titles = [CLASS_NAMES[int(y)] for y in labels[:k]]
fig = viz.comparison_grid(
    scenes.images[:k],
    {name: a[:k] for name, a in attributions.items()},
    row_titles=titles,
)
"""),
    md("""
## Insertion and deletion

Both metrics rank the 64 patches by attribution (pixel attributions are summed per
patch). *Insertion* starts from the image with every patch token removed and adds
patches, most important first; *deletion* starts from the full image and removes them.
Each curve records the label's softmax probability; the score is the area under it
(insertion: higher is better, deletion: lower is better). On a timm ViT, patches are
removed as tokens (no pixel baseline is needed). A random ranking is the reference.

With few images (`SMALL`) the numbers are noise; at the full size they are means over
32 scenes.
"""),
    code("""
gh, gw = patch_scores(attributions["IG"], model).shape[1:]
random_scores = torch.rand(N_IMAGES, gh, gw, generator=torch.Generator().manual_seed(0))
scored = dict(attributions, random=random_scores)

print(f"{'method':<14} {'insertion':>9} {'deletion':>9} {'ins - del':>9}")
for name, attr in scored.items():
    kw = dict(target=labels, n_steps=CURVE_STEPS, seed=0)
    ins = insertion(model, inputs, attr, **kw).mean()
    dele = deletion(model, inputs, attr, **kw).mean()
    print(f"{name:<14} {ins:9.3f} {dele:9.3f} {ins - dele:9.3f}")
"""),
    md("""
Things to try: `PLUSWrapper` (all blocks) in place of `SkipPLUSWrapper`;
`token_reduction="abs_sum"` for unsigned token scores; other Captum methods such as
`Saliency`, `GradientShap` or `NoiseTunnel(...)`; `removal="blur"` in the metrics for
the pixel-baseline protocol of RISE (see `04_evaluating_explanations.ipynb`).
"""),
]

# ---------------------------------------------------------------------------- 03
SHAPLEY: List[Cell] = [
    md("""
# Training ViT Shapley for your own model and data

ViT Shapley (Covert et al., ICLR 2023) learns an *explainer* network that outputs the
Shapley values of all image patches for all classes in one forward pass. Training
needs only the classifier and unlabelled images, in three steps:

1. **Surrogate.** The classifier never saw images with patches missing. A copy of it
   is fine-tuned to match the classifier's prediction on the full image when a random
   subset of patches is held out (attention masking). The surrogate defines the
   cooperative game `v(s)`: its class probabilities given the patches in `s`.
2. **Explainer.** A ViT initialised from the surrogate, with an extra attention block
   and an MLP head, is trained so that `v(0) + sum_{i in s} phi_i` predicts `v(s)` on
   random coalitions `s`. Its outputs are normalised so that the values of each class
   sum to `v(1) - v(0)` (efficiency).
3. **Explain** with `ViTShapley(explainer).attribute(images, target=...)`.

Two routes lead there, shown one after the other: the Python functions
(`train_surrogate`, `train_explainer`) on image tensors, and the `captum-vit
train-shapley` command on a folder of image files, which also runs under `torchrun`
on many GPUs. Everything here is small enough for a CPU: a tiny timm ViT trained
from scratch on Fashion-MNIST scenes. The patch grid is small enough that the exact
Shapley values can be enumerated to check the explainer (4 x 4 = 16 patches, 65,536
coalitions; `SMALL` uses 3 x 3). Substitute your own model and images: any supported
ViT with a CLS (or register) token works.
"""),
    code(_SMALL + """
# The full sizes train for roughly 10 minutes on a 2-core CPU.
IMAGE_SIZE = 24 if SMALL else 32  # patch 8: a 3 x 3 or 4 x 4 grid
N_TRAIN = 128 if SMALL else 2000  # training images
N_VAL = 32 if SMALL else 200  # held-out images
CLASSIFIER_EPOCHS = 2 if SMALL else 15
SURROGATE_EPOCHS = 1 if SMALL else 5
EXPLAINER_EPOCHS = 1 if SMALL else 6
CLI_EPOCHS = 1 if SMALL else 3  # each stage of the command-line run
NUM_SUBSETS = 8 if SMALL else 32  # coalitions per image and step (paper: 32)
KERNEL_SHAP_EVALS = 2048 if SMALL else 100_000  # budget of the KernelSHAP check
WORK_DIR = None  # where the files go; None: a new temporary folder, removed at the end
"""),
    code("""
import math
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import timm
import torch
import torch.nn.functional as F

from captum_vit import ViTShapley, patch_scores, viz
from captum_vit.shapley import (
    ShapleyExplainer,
    SurrogateGame,
    exact_shapley,
    kernel_shap,
    load_explainer,
    save_explainer,
    train_explainer,
    train_surrogate,
)
from captum_vit.zoo import CLASS_NAMES, make_scenes, preprocess

torch.manual_seed(0)  # the model's initial weights
%matplotlib inline
"""),
    md("""
This notebook writes files: the classifier's and the explainer's weights, image
folders and a training run (tens of MB at the full sizes). They go to a working
folder, not next to the notebook: a new temporary folder unless `WORK_DIR` names one.
It becomes the working directory, so the relative paths below (`explainer.pt`,
`shapley_run`, ...) are inside it. The last cell goes back and removes the temporary
folder; a `WORK_DIR` of your own is kept.
"""),
    code("""
START_DIR = Path.cwd()
WORK = Path(WORK_DIR or tempfile.mkdtemp(prefix="captum_vit_tutorial03_")).resolve()
WORK.mkdir(parents=True, exist_ok=True)
os.chdir(WORK)
print("files go to", WORK)
"""),
    md("""
## Data

Any image tensor (or a map-style dataset of images or `(image, label)` pairs) works.
Here: scenes drawn from the Fashion-MNIST training items shipped with the package, and
held-out scenes from its test split, so the two never share an item.
"""),
    code("""
train = make_scenes(N_TRAIN, split="train", seed=1, image_size=IMAGE_SIZE)
val = make_scenes(N_VAL, split="test", seed=2, image_size=IMAGE_SIZE)

x_train, y_train = preprocess(train.images), torch.as_tensor(train.labels)
x_val, y_val = preprocess(val.images), torch.as_tensor(val.labels)
print("train", tuple(x_train.shape), "val", tuple(x_val.shape))
"""),
    md("""
## The classifier to explain

A tiny timm ViT with a CLS token, trained with a plain PyTorch loop. Nothing about it
is specific to captum-vit; with a model of your own, skip this cell.
"""),
    code("""
classifier = timm.create_model(
    "vit_tiny_patch16_224",
    pretrained=False,
    img_size=IMAGE_SIZE,
    patch_size=8,
    embed_dim=96,
    depth=4,
    num_heads=3,
    num_classes=len(CLASS_NAMES),
)
optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3, weight_decay=0.05)
steps = CLASSIFIER_EPOCHS * math.ceil(N_TRAIN / 64)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps)
generator = torch.Generator().manual_seed(0)


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(dim=-1) == y).float().mean().item()


start = time.perf_counter()
for epoch in range(CLASSIFIER_EPOCHS):
    classifier.train()
    for idx in torch.randperm(N_TRAIN, generator=generator).split(64):
        loss = F.cross_entropy(classifier(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    classifier.eval()
    acc = accuracy(classifier, x_val, y_val)
    seconds = time.perf_counter() - start
    print(
        f"epoch {epoch + 1}: loss {loss.item():.3f}, "
        f"held-out accuracy {acc:.2f} ({seconds:.0f} s)"
    )
"""),
    md("""
## 1. Surrogate

`train_surrogate` fine-tunes a copy of the classifier (the classifier itself is left
untouched) on the KL divergence between the classifier's probabilities on the full
image and the copy's on a random subset of patches, subset sizes uniform over
`0 .. N`. The paper uses `lr=1e-5` for a pretrained ViT-B; a small model trained from
scratch takes a larger step. `checkpoint=` makes long runs resumable.
"""),
    code("""
start = time.perf_counter()
result = train_surrogate(
    classifier,
    x_train,
    x_val,
    epochs=SURROGATE_EPOCHS,
    batch_size=32,
    lr=1e-4,
)
surrogate = result.model
print(f"validation KL per epoch: {[round(v, 4) for v in result.history['val_loss']]}")
print(f"{time.perf_counter() - start:.0f} s")
"""),
    md("""
## 2. Explainer

`ShapleyExplainer.from_surrogate` copies the surrogate's backbone and adds the
explainer head. `train_explainer` draws `NUM_SUBSETS` coalitions per image from the
Shapley kernel (paired with their complements) and evaluates the frozen surrogate on
them; the loss is `N * MSE(v(0) + s^T phi, v(s))` over coalitions and classes.

For cheaper explanations, `from_surrogate(surrogate, shared_blocks=k)` keeps the
embedding and the first `k` blocks frozen as the surrogate's; `ViTShapley` then runs
that trunk once for both models (the shipped default explainer shares 2 of its 4
blocks). Here everything is fine-tuned, as in the paper.
"""),
    code("""
start = time.perf_counter()
result = train_explainer(
    ShapleyExplainer.from_surrogate(surrogate),
    surrogate,
    x_train,
    x_val,
    epochs=EXPLAINER_EPOCHS,
    batch_size=32,
    num_subsets=NUM_SUBSETS,
    lr=1e-4,
)
explainer = result.model
print(f"validation loss per epoch: {[round(v, 4) for v in result.history['val_loss']]}")
print(f"{time.perf_counter() - start:.0f} s")

# Weights and configuration go to one file; loading needs the surrogate.
save_explainer(explainer, "explainer.pt")
explainer = load_explainer("explainer.pt", surrogate)
"""),
    md("""
## 3. Explain

`ViTShapley` is a Captum attributor like the others: one explainer forward (plus one
surrogate forward for `v(1)`) per batch. Values are in probability units and, per
image, the patch values of a class add up to `v(1) - v(0)`.
"""),
    code("""
vit_shapley = ViTShapley(explainer)
n_show = 4
images, targets = x_val[:n_show], y_val[:n_show]
attr = vit_shapley.attribute(images, target=targets)
values = patch_scores(attr, surrogate)  # (n_show, gh, gw)

game = SurrogateGame(surrogate)
v1 = game.full_value(images).gather(1, targets[:, None])[:, 0]
v0 = game.empty_value(images)[targets]
print("sum of patch values:", values.flatten(1).sum(dim=1).numpy().round(4))
print("v(1) - v(0):        ", (v1 - v0).numpy().round(4))

titles = [CLASS_NAMES[int(t)] for t in targets]
fig = viz.comparison_grid(
    val.images[:n_show],
    {
        "ViT Shapley": attr,
        "(bilinear)": vit_shapley.attribute(
            images, target=targets, interpolate_mode="bilinear"
        ),
    },
    row_titles=titles,
)
"""),
    md("""
## Check against ground truth

With `d` patches, `exact_shapley` evaluates the surrogate game on all `2^d`
coalitions and returns the exact values; `kernel_shap` estimates them by sampling
until its confidence intervals are narrow (`threshold`) or the budget is spent. The
explainer should agree with both, at a fraction of their cost. With `SMALL` sizes the
models are barely trained, so expect little agreement there.
"""),
    code("""
image, target = x_val[0], int(y_val[0])
d = explainer.num_patches
game_0 = game.for_image(image)

start = time.perf_counter()
exact = exact_shapley(game_0, d)[:, target]
t_exact = time.perf_counter() - start
start = time.perf_counter()
ks = kernel_shap(game_0, d, threshold=0.1, max_evals=KERNEL_SHAP_EVALS, seed=0)
t_ks = time.perf_counter() - start
predicted = vit_shapley.shapley_values(image[None])[0, :, target].double()


def compare(name, values):
    corr = torch.corrcoef(torch.stack([values, exact]))[0, 1].item()
    err = (values - exact).abs().max().item()
    print(f"{name:<12} correlation {corr:6.3f}   max |error| {err:.4f}")


print(f"exact Shapley: {2 ** d} evaluations, {t_exact:.1f} s")
print(
    f"KernelSHAP:    {ks.num_evals} evaluations, converged {ks.converged}, {t_ks:.1f} s"
)
compare("ViT Shapley", predicted)
compare("KernelSHAP", ks.values[:, target])

fig, ax = plt.subplots(figsize=(6, 2.5))
ax.plot(exact.numpy(), "k.-", label="exact")
ax.plot(ks.values[:, target].numpy(), "x", label="KernelSHAP")
ax.plot(predicted.numpy(), "o", mfc="none", label="ViT Shapley")
ax.set_xlabel("patch (row-major)")
ax.set_ylabel(f"phi ({CLASS_NAMES[target]})")
ax.legend(fontsize=8)
fig.tight_layout()
"""),
    md("""
## The command-line route: a folder of images

`captum-vit train-shapley` does both stages for any supported model on a folder of
image files (flat or in sub-folders; labels are not needed), through the model's own
preprocessing plus the paper's augmentation (random resized crops, flips, colour
jitter; `--no-augment` turns it off). It writes `surrogate.pt` and `explainer.pt`
into a run folder, with step checkpoints from which the same command resumes.

The command loads models the way `captum-vit explain` and `evaluate` do: a timm name
and a checkpoint (`--model vit_base_patch16_224 --checkpoint my_vit.pth`), `hf:...`,
`torchvision:...`. This notebook's classifier has a custom size, so it is saved in the
embedded model's format (its architecture in a `config` next to the weights) and
loaded with `--model default --checkpoint classifier.pt`. The images are the training
scenes, written as PNG files.
"""),
    code("""
import shlex

import numpy as np
from IPython.display import Image as ShowImage
from PIL import Image

from captum_vit.cli import main as captum_vit
from captum_vit.shapley import load_surrogate

config = dict(
    image_size=IMAGE_SIZE,
    patch_size=8,
    embed_dim=96,
    depth=4,
    num_heads=3,
    mlp_ratio=4.0,
    num_classes=len(CLASS_NAMES),
)
torch.save({"config": config, "state_dict": classifier.state_dict()}, "classifier.pt")


def save_png(images01, folder, prefix):
    Path(folder).mkdir(exist_ok=True)
    for i, image in enumerate(images01):
        pixels = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(f"{folder}/{prefix}{i:04d}.png")


save_png(train.images, "train_images", "scene")
save_png(val.images[:4], "val_images", "val")
print(len(list(Path("train_images").iterdir())), "training images")
"""),
    md("""
The same training as above, from the command line (a shell would run the printed
commands; here they run in the notebook's process), one stage at a time so that each
gets its own settings (without `--stage` one command runs both, and `--lr`,
`--epochs` and `--subsets` then apply to both). `--batch-size` is the global batch;
under `torchrun --nproc_per_node=N -m captum_vit -- train-shapley ...` every process
takes its share of it, and `--amp bf16` runs mixed precision.
"""),
    code("""
common = (
    "captum-vit train-shapley --model default --checkpoint classifier.pt "
    f"--data train_images --out shapley_run --epochs {CLI_EPOCHS} --batch-size 32 "
    "--lr 1e-4 --workers 0 --quiet"
)
start = time.perf_counter()
for stage in (
    "--stage surrogate",
    f"--stage explainer --subsets {NUM_SUBSETS}",
):
    command = f"{common} {stage}"
    print("$", command)
    assert captum_vit(shlex.split(command)[1:]) == 0
print(f"{time.perf_counter() - start:.0f} s")
"""),
    md("""
The run folder holds the two weight files, the step checkpoints and `record.json`
(settings and losses). Running a command again resumes from its checkpoints (and
refuses other settings); `--stage explainer` alone trains the explainer again on the
same surrogate.

`--shapley RUN` hands the run to `captum-vit explain` and `captum-vit evaluate`, which
check that the surrogate was fine-tuned from the very classifier loaded (a digest of
its weights is stored in `surrogate.pt`) and that the explainer fits its patch grid:
"""),
    code("""
command = (
    "captum-vit explain --model default --checkpoint classifier.pt "
    "--shapley shapley_run --method vit-shapley rollout --out explain_out "
    + " ".join(sorted(str(p) for p in Path("val_images").iterdir()))
)
print("$", command)
assert captum_vit(shlex.split(command)[1:]) == 0
ShowImage(filename="explain_out/explain_grid.png")
"""),
    md("""
In Python, `load_surrogate` and `load_explainer` read the run (with the same checks);
the explainer is then used exactly like the one trained above:
"""),
    code("""
cli_surrogate = load_surrogate("shapley_run/surrogate.pt", classifier)
cli_explainer = load_explainer("shapley_run/explainer.pt", cli_surrogate)
cli_game = SurrogateGame(cli_surrogate)
cli_exact = exact_shapley(cli_game.for_image(image), d)[:, target]
cli_values = ViTShapley(cli_explainer).shapley_values(image[None])[0, :, target]
corr = torch.corrcoef(torch.stack([cli_values.double(), cli_exact]))[0, 1].item()
print(f"command-line explainer vs its exact Shapley values: correlation {corr:.3f}")
"""),
    md("""
## Scaling up

For a real model, train on many more images: with the command, a folder of your
images and `torchrun` on as many GPUs as you have (`--micro-batch` when a batch does
not fit in memory; the paper's batch is 64 images x 32 coalitions); in Python, with
`checkpoint=` paths so the runs can resume (`train_surrogate(...,
checkpoint="surrogate.ckpt")`) and `save_surrogate`/`load_surrogate`. Judge the
explainer with `kernel_shap` on a few held-out images (exact enumeration stops at 16
patches) and with the metrics of `04_evaluating_explanations.ipynb`, e.g. `captum-vit
evaluate --shapley RUN --methods vit-shapley ...`.
"""),
    code("""
os.chdir(START_DIR)
if WORK_DIR is None:
    shutil.rmtree(WORK)  # set WORK_DIR above to keep the files
"""),
]

# ---------------------------------------------------------------------------- 04
METRICS: List[Cell] = [
    md("""
# Evaluating explanations

`captum_vit.metrics` scores attributions the way Captum's metrics do:
`metric(model, inputs, attributions, target=...)` returns one value per image, with no
gradients and batched forward passes. This notebook runs them on three ViT methods and
a random baseline, grouped by the property they test:

- **faithfulness**: does the model's output follow the attribution? Insertion /
  deletion curves, AOPC, faithfulness correlation, sensitivity-n;
- **localisation**: does the attribution point at the object? Pointing game against
  the scenes' ground-truth boxes;
- **complexity**: how concentrated is it? Sparseness (Gini index).

Perturbation metrics must hide features, and how they do it matters. On a timm ViT
the default removes patch **tokens** (the model runs on the kept tokens only, an input
it can process); a **pixel baseline** (`removal="blur"`, `"black"`, `"mean"`, ...)
paints over the pixels instead, as RISE does for CNNs. Both are compared below.
"""),
    code(_SMALL + """
N_IMAGES = 2 if SMALL else 32  # scenes scored
TIS_MASKS = 32 if SMALL else 1024
CURVE_STEPS = 16 if SMALL else None  # None: one patch per step (64 patches)
N_SUBSETS = 10 if SMALL else 100  # random subsets of the correlation metrics
"""),
    code("""
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

%matplotlib inline

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
"""),
    md("""
## Insertion and deletion curves

`insertion_deletion_curves` returns the x-axis (fraction of patches moved) and one
curve per image for each direction; `area_under_curve` integrates them. Insertion
should rise fast (high area), deletion fall fast (low area). `target` is the label.
"""),
    code("""
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
"""),
    md("""
## Tokens or a pixel baseline?

The same areas, now with the patches painted over by a blurred copy of the image
(`removal="blur"`, the RISE / TIS protocol) instead of removed as tokens. A blurred
patch is still a token the model attends to, and the blurred image is unlike anything
it was trained on, so the scores can move and even reorder the methods. Report which
removal a number was measured with.
"""),
    code("""
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
"""),
    md("""
## AOPC, faithfulness correlation, sensitivity-n

- **AOPC** (Samek et al. 2017): the mean drop of the label probability along the
  deletion curve; higher is better.
- **Faithfulness correlation** (Bhatt et al. 2020): over random patch subsets, the
  correlation between the attribution summed over the subset and the probability drop
  when the subset is removed; in [-1, 1], higher is better.
- **Sensitivity-n** (Ancona et al. 2018): the same correlation for subsets of a fixed
  size `n`, here several sizes at once.
"""),
    code("""
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
"""),
    md("""
Read these against the random row. By default faithfulness correlation draws subsets
of every size, and a larger subset both sums more (non-negative) attribution and
removes more evidence, so even random scores correlate positively. Sensitivity-n fixes
the size and removes that effect; `faithfulness_correlation(..., subset_size=k)` does
the same (Bhatt et al.'s original protocol).
"""),
    md("""
## Localisation and sparseness

The scenes come with ground-truth boxes `[x1, y1, x2, y2]` of the main item (the label)
and of the distractor. The **pointing game** counts a hit when the attribution's
maximum falls inside the box (for patch-constant maps, any of the tied maximal pixels;
see `ties=`). A class-specific method should point at the main item, not at the
distractor. **Sparseness** is the Gini index of the map: 0 for a uniform map, near 1
when a few values carry everything. It needs no model.
"""),
    code("""
boxes = torch.as_tensor(scenes.boxes)  # (B, 2, 4): main item, distractor
print(f"{'':<8} {'hit main':>9} {'hit distractor':>15} {'sparseness':>11}")
for name, attr in attributions.items():
    main = metrics.pointing_game(attr, boxes=boxes[:, 0]).mean()
    distractor = metrics.pointing_game(attr, boxes=boxes[:, 1]).mean()
    gini = metrics.sparseness(attr).mean()
    print(f"{name:<8} {main:9.2f} {distractor:15.2f} {gini:11.3f}")
"""),
    md("""
## Beyond ViTs

Every model-based metric also takes a Captum-style `feature_mask` (integer feature ids
over the pixels) and a pixel `removal`, which works for any model, e.g.
`metrics.deletion(cnn, images, attr, feature_mask=superpixels, removal="mean")`.
`metrics.max_sensitivity` (robustness to input noise) and
`metrics.effective_complexity` complete the set.
"""),
]

# ---------------------------------------------------------------------------- 05
PRETRAINED: List[Cell] = [
    md("""
# A pretrained timm model

The methods work on stock timm ViTs: nothing is patched or re-implemented, and every
call leaves the model as it found it (hooks and attention settings are temporary).
This notebook loads an ImageNet ViT-B/16 from the Hugging Face Hub, preprocesses a
photo with the model's own data configuration, and explains its prediction with
GenAtt, attention rollout and TIS.

**Offline?** Then the download fails and the notebook falls back to the same
architecture with random weights, printing a note: the code runs identically, but the
predictions and maps mean nothing. Set `HF_HUB_OFFLINE=1` to skip the network retries.
`SMALL` uses ViT-Ti/16, which is faster on a CPU.
"""),
    code(_SMALL + """
MODEL_NAME = "vit_tiny_patch16_224" if SMALL else "vit_base_patch16_224"
TIS_MASKS = 16 if SMALL else 256  # the paper uses 1024
"""),
    code("""
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
%matplotlib inline
"""),
    md("""
## Load the model

`pretrained=True` downloads the weights on first use (then they come from the local
cache). Only a failed download is caught: an `OSError`, which covers network and cache
misses.
"""),
    code("""
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
"""),
    md("""
## Preprocess with the model's data configuration

`resolve_model_data_config` reads the input size, interpolation, crop and
normalisation the weights were trained with; `create_transform` turns them into the
evaluation transform (resize, centre crop, tensor, normalise). The photo is Grace
Hopper, from matplotlib's sample data.
"""),
    code("""
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
"""),
    md("""
## Explain

GenAtt and TIS explain a class (here the top prediction). Attention rollout (Abnar &
Zuidema 2020) is class-agnostic and ignores `target`; `discard_ratio` drops the weakest
attention links in every block, which sharpens its map, and `start_layer=1` skips the
first block as Chefer et al. do. To show how class-specific GenAtt is, it also
explains the second-ranked class.
"""),
    code("""
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
"""),
    md("""
The inputs are undone to [0, 1] for display with `viz.to_unit_range`. The same
attributions feed the metrics of `04_evaluating_explanations.ipynb` unchanged, for
example `captum_vit.metrics.deletion(model, inputs, attributions["TIS"],
target=target)`.
"""),
]

NOTEBOOKS: Dict[str, List[Cell]] = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_skipplus.ipynb": SKIPPLUS,
    "03_train_vit_shapley.ipynb": SHAPLEY,
    "04_evaluating_explanations.ipynb": METRICS,
    "05_pretrained_timm.ipynb": PRETRAINED,
}

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` without outputs, with stable cell ids."""
    stem = name.split("_")[0]
    cells = []
    for i, (kind, source) in enumerate(NOTEBOOKS[name]):
        make = new_markdown_cell if kind == "md" else new_code_cell
        cells.append(make(source, id=f"c{stem}-{i:02d}"))
    nb = new_notebook(cells=cells, metadata=METADATA)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The file content of notebook ``name``."""
    return nbformat.writes(build(name)) + "\n"


def main() -> int:
    for name in NOTEBOOKS:
        (HERE / name).write_text(render(name), encoding="utf-8")
        print("wrote", HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
