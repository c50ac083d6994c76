# %% [markdown]
# # Training ViT Shapley for your own model and data
#
# ViT Shapley (Covert et al., ICLR 2023) learns an *explainer* network that outputs the
# Shapley values of all image patches for all classes in one forward pass. Training
# needs only the classifier and unlabelled images, in three steps:
#
# 1. **Surrogate.** The classifier never saw images with patches missing. A copy of it
#    is fine-tuned to match the classifier's prediction on the full image when a random
#    subset of patches is held out (attention masking). The surrogate defines the
#    cooperative game `v(s)`: its class probabilities given the patches in `s`.
# 2. **Explainer.** A ViT initialised from the surrogate, with an extra attention block
#    and an MLP head, is trained so that `v(0) + sum_{i in s} phi_i` predicts `v(s)` on
#    random coalitions `s`. Its outputs are normalised so that the values of each class
#    sum to `v(1) - v(0)` (efficiency).
# 3. **Explain** with `ViTShapley(explainer).attribute(images, target=...)`.
#
# Two routes lead there, shown one after the other: the Python functions
# (`train_surrogate`, `train_explainer`) on image tensors, and the `captum-vit
# train-shapley` command on a folder of image files, which also runs under `torchrun`
# on many GPUs. Everything here is small enough for a CPU: a tiny timm ViT trained
# from scratch on Fashion-MNIST scenes. The patch grid is small enough that the exact
# Shapley values can be enumerated to check the explainer (4 x 4 = 16 patches, 65,536
# coalitions; `SMALL` uses 3 x 3). Substitute your own model and images: any supported
# ViT with a CLS (or register) token works.

# %%
import os

# CAPTUM_VIT_SMALL=1 selects test sizes (the test suite sets it); leave it unset for
# meaningful results.
SMALL = os.environ.get("CAPTUM_VIT_SMALL", "0") == "1"

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

# %%
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
# %matplotlib inline

# %% [markdown]
# This notebook writes files: the classifier's and the explainer's weights, image
# folders and a training run (tens of MB at the full sizes). They go to a working
# folder, not next to the notebook: a new temporary folder unless `WORK_DIR` names one.
# It becomes the working directory, so the relative paths below (`explainer.pt`,
# `shapley_run`, ...) are inside it. The last cell goes back and removes the temporary
# folder; a `WORK_DIR` of your own is kept.

# %%
START_DIR = Path.cwd()
WORK = Path(WORK_DIR or tempfile.mkdtemp(prefix="captum_vit_tutorial03_")).resolve()
WORK.mkdir(parents=True, exist_ok=True)
os.chdir(WORK)
print("files go to", WORK)

# %% [markdown]
# ## Data
#
# Any image tensor (or a map-style dataset of images or `(image, label)` pairs) works.
# Here: scenes drawn from the Fashion-MNIST training items shipped with the package, and
# held-out scenes from its test split, so the two never share an item.

# %%
train = make_scenes(N_TRAIN, split="train", seed=1, image_size=IMAGE_SIZE)
val = make_scenes(N_VAL, split="test", seed=2, image_size=IMAGE_SIZE)

x_train, y_train = preprocess(train.images), torch.as_tensor(train.labels)
x_val, y_val = preprocess(val.images), torch.as_tensor(val.labels)
print("train", tuple(x_train.shape), "val", tuple(x_val.shape))

# %% [markdown]
# ## The classifier to explain
#
# A tiny timm ViT with a CLS token, trained with a plain PyTorch loop. Nothing about it
# is specific to captum-vit; with a model of your own, skip this cell.

# %%
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

# %% [markdown]
# ## 1. Surrogate
#
# `train_surrogate` fine-tunes a copy of the classifier (the classifier itself is left
# untouched) on the KL divergence between the classifier's probabilities on the full
# image and the copy's on a random subset of patches, subset sizes uniform over
# `0 .. N`. The paper uses `lr=1e-5` for a pretrained ViT-B; a small model trained from
# scratch takes a larger step. `checkpoint=` makes long runs resumable.

# %%
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

# %% [markdown]
# ## 2. Explainer
#
# `ShapleyExplainer.from_surrogate` copies the surrogate's backbone and adds the
# explainer head. `train_explainer` draws `NUM_SUBSETS` coalitions per image from the
# Shapley kernel (paired with their complements) and evaluates the frozen surrogate on
# them; the loss is `N * MSE(v(0) + s^T phi, v(s))` over coalitions and classes.
#
# For cheaper explanations, `from_surrogate(surrogate, shared_blocks=k)` keeps the
# embedding and the first `k` blocks frozen as the surrogate's; `ViTShapley` then runs
# that trunk once for both models (the shipped default explainer shares 2 of its 4
# blocks). Here everything is fine-tuned, as in the paper.

# %%
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

# %% [markdown]
# ## 3. Explain
#
# `ViTShapley` is a Captum attributor like the others: one explainer forward (plus one
# surrogate forward for `v(1)`) per batch. Values are in probability units and, per
# image, the patch values of a class add up to `v(1) - v(0)`.

# %%
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

# %% [markdown]
# ## Check against ground truth
#
# With `d` patches, `exact_shapley` evaluates the surrogate game on all `2^d`
# coalitions and returns the exact values; `kernel_shap` estimates them by sampling
# until its confidence intervals are narrow (`threshold`) or the budget is spent. The
# explainer should agree with both, at a fraction of their cost. With `SMALL` sizes the
# models are barely trained, so expect little agreement there.

# %%
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

# %% [markdown]
# ## The command-line route: a folder of images
#
# `captum-vit train-shapley` does both stages for any supported model on a folder of
# image files (flat or in sub-folders; labels are not needed), through the model's own
# preprocessing plus the paper's augmentation (random resized crops, flips, colour
# jitter; `--no-augment` turns it off). It writes `surrogate.pt` and `explainer.pt`
# into a run folder, with step checkpoints from which the same command resumes.
#
# The command loads models the way `captum-vit explain` and `evaluate` do: a timm name
# and a checkpoint (`--model vit_base_patch16_224 --checkpoint my_vit.pth`), `hf:...`,
# `torchvision:...`. This notebook's classifier has a custom size, so it is saved in the
# embedded model's format (its architecture in a `config` next to the weights) and
# loaded with `--model default --checkpoint classifier.pt`. The images are the training
# scenes, written as PNG files.

# %%
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

# %% [markdown]
# The same training as above, from the command line (a shell would run the printed
# commands; here they run in the notebook's process), one stage at a time so that each
# gets its own settings (without `--stage` one command runs both, and `--lr`,
# `--epochs` and `--subsets` then apply to both). `--batch-size` is the global batch;
# under `torchrun --nproc_per_node=N -m captum_vit -- train-shapley ...` every process
# takes its share of it, and `--amp bf16` runs mixed precision.

# %%
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

# %% [markdown]
# The run folder holds the two weight files, the step checkpoints and `record.json`
# (settings and losses). Running a command again resumes from its checkpoints (and
# refuses other settings); `--stage explainer` alone trains the explainer again on the
# same surrogate.
#
# `--shapley RUN` hands the run to `captum-vit explain` and `captum-vit evaluate`, which
# check that the surrogate was fine-tuned from the very classifier loaded (a digest of
# its weights is stored in `surrogate.pt`) and that the explainer fits its patch grid:

# %%
command = (
    "captum-vit explain --model default --checkpoint classifier.pt "
    "--shapley shapley_run --method vit-shapley rollout --out explain_out "
    + " ".join(sorted(str(p) for p in Path("val_images").iterdir()))
)
print("$", command)
assert captum_vit(shlex.split(command)[1:]) == 0
ShowImage(filename="explain_out/explain_grid.png")

# %% [markdown]
# In Python, `load_surrogate` and `load_explainer` read the run (with the same checks);
# the explainer is then used exactly like the one trained above:

# %%
cli_surrogate = load_surrogate("shapley_run/surrogate.pt", classifier)
cli_explainer = load_explainer("shapley_run/explainer.pt", cli_surrogate)
cli_game = SurrogateGame(cli_surrogate)
cli_exact = exact_shapley(cli_game.for_image(image), d)[:, target]
cli_values = ViTShapley(cli_explainer).shapley_values(image[None])[0, :, target]
corr = torch.corrcoef(torch.stack([cli_values.double(), cli_exact]))[0, 1].item()
print(f"command-line explainer vs its exact Shapley values: correlation {corr:.3f}")

# %% [markdown]
# ## Scaling up
#
# For a real model, train on many more images: with the command, a folder of your
# images and `torchrun` on as many GPUs as you have (`--micro-batch` when a batch does
# not fit in memory; the paper's batch is 64 images x 32 coalitions); in Python, with
# `checkpoint=` paths so the runs can resume (`train_surrogate(...,
# checkpoint="surrogate.ckpt")`) and `save_surrogate`/`load_surrogate`. Judge the
# explainer with `kernel_shap` on a few held-out images (exact enumeration stops at 16
# patches) and with the metrics of `04_evaluating_explanations.ipynb`, e.g. `captum-vit
# evaluate --shapley RUN --methods vit-shapley ...`.

# %%
os.chdir(START_DIR)
if WORK_DIR is None:
    shutil.rmtree(WORK)  # set WORK_DIR above to keep the files
