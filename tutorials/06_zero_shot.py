# %% [markdown]
# # Zero-shot explanations: why does an image match a text?
#
# Image–text models such as CLIP and SigLIP score an image against any text. This
# notebook explains those scores on the image–text model that ships with the package
# (nothing is downloaded): the embedded ViT's image tower, locked, with a small text
# tower trained on scene captions (LiT; see `captum_vit/zoo/IMAGE_TEXT_CARD.md`).
#
# - `ZeroShotClassifier` turns the model and a list of prompts into a classifier
#   whose logits are the model's own scores, `logit_scale · cos(image, text)`; every
#   image method then explains "why this image matches prompt `k`" with `target=k`.
# - `TextRelevance` answers the other half: which *words* of the prompt made it match
#   (Chefer et al. 2021b, through the text tower's attention).
#
# The same code runs on Hugging Face `CLIPModel` / `SiglipModel` (pass their
# tokenizer) and on OpenCLIP models.

# %%
import os

# CAPTUM_VIT_SMALL=1 selects test sizes (the test suite sets it); leave it unset for
# meaningful results.
SMALL = os.environ.get("CAPTUM_VIT_SMALL", "0") == "1"

N_IMAGES = 2 if SMALL else 6  # scenes to explain
TIS_MASKS = 32 if SMALL else 1024  # TIS masks (1024 in the paper)
N_EVAL = 100 if SMALL else 1000  # scenes for the zero-shot accuracy

# %%
import torch

from captum_vit import (
    AttentionRollout,
    GenAtt,
    TextRelevance,
    TransformerInputSampling,
    ViTAdapter,
    ZeroShotClassifier,
    viz,
)
from captum_vit.zoo import CLASS_NAMES, load_default_scenes, make_scenes, preprocess
from captum_vit.zoo.image_text import load_default_image_text

# %matplotlib inline

# %% [markdown]
# ## The model and the prompts
#
# `load_default_image_text()` returns the model with its word-level tokenizer as
# `model.tokenizer`. A `ZeroShotClassifier` is built from whole prompts, from class
# names with a template (`template="a photo of a {}."`), from token ids or from text
# embeddings; the prompts are encoded once and kept in `zs.text_embeddings`.

# %%
model = load_default_image_text()
prompts = ["a dress", "a sandal", "a bag", "a sneaker", "a coat", "trousers"]
zs = ZeroShotClassifier(model, prompts)
adapter = ViTAdapter(zs)
print(adapter.family_name, "|", zs.num_classes, "prompts |", adapter.grid_size, "grid")

inputs, scenes = load_default_scenes(n=N_IMAGES, seed=0)
with torch.no_grad():
    probs = zs(inputs).softmax(dim=-1)
pred = probs.argmax(dim=-1)
for i in range(N_IMAGES):
    print(
        f"scene {i}: {CLASS_NAMES[scenes.labels[i]]:<12} best prompt "
        f"{prompts[pred[i]]!r:<12} p = {probs[i, pred[i]]:.2f}"
    )

# %% [markdown]
# ## How good is it at zero-shot classification?
#
# One prompt per class, `"a photo of a {name}."`, over held-out scenes (the card
# reports 84.2 % on 5000 of them; the classifier whose image tower it locks has
# 84.9 %).

# %%
from captum_vit.zoo.train_image_text import class_prompts  # noqa: E402

every_class = ZeroShotClassifier(model, class_prompts())
test = make_scenes(N_EVAL, split="test", seed=1234)
with torch.no_grad():
    guess = every_class(preprocess(test.images)).argmax(-1).numpy()
print(f"zero-shot accuracy on {N_EVAL} scenes: {(guess == test.labels).mean():.1%}")

# %% [markdown]
# ## Image maps: where in the image is "a sandal"?
#
# The classifier is an ordinary captum-vit model: rollout, GenAtt and TIS run
# unchanged, with `target` the index of the prompt. Here each scene is explained for
# its best prompt.

# %%
methods = {
    "Rollout": lambda: AttentionRollout(zs).attribute(inputs),
    "GenAtt": lambda: GenAtt(zs).attribute(inputs, target=pred),
    "TIS": lambda: TransformerInputSampling(zs, n_masks=TIS_MASKS).attribute(
        inputs, target=pred, seed=0
    ),
}
maps = {name: run() for name, run in methods.items()}
titles = [f"{prompts[pred[i]]} (p={probs[i, pred[i]]:.2f})" for i in range(N_IMAGES)]
fig = viz.comparison_grid(scenes.images, maps, row_titles=titles)

# %% [markdown]
# The same scene explained for two prompts: what supports "a bag" and what supports
# "a sandal" in the first scene.

# %%
two = inputs[:1].expand(2, -1, -1, -1)
contrast = GenAtt(zs).attribute(
    two, target=[prompts.index(p) for p in ("a bag", "a sandal")]
)
fig = viz.comparison_grid(
    scenes.images[:1].repeat(2, 0),
    {"GenAtt": contrast},
    row_titles=["for 'a bag'", "for 'a sandal'"],
)

# %% [markdown]
# ## Text relevance: which words matched?
#
# `TextRelevance(model)` takes the image–text model itself (the text tower runs with
# gradients) and returns, per image, the relevance of each token of the explained
# prompt (by default the best-scoring one), with the tokens. Shown here: the words
# between the start and end tokens, normalised to sum 1, as in the authors' CLIP
# notebook. Words outside the model's 53-word vocabulary become `<unk>`.

# %%
texts = ["a photo of a sandal", "a small bag next to a dress", "a crimson sneaker"]
tr = TextRelevance(model)
out = tr.attribute(inputs, texts=texts)
for i in range(N_IMAGES):
    words = out.tokens[i][1:-1]  # between <start> and <end>, as the authors show
    scores = out.scores[i, 1 : len(words) + 1]
    scores = scores / scores.sum()
    shown = " ".join(f"{w}:{s:.2f}" for w, s in zip(words, scores.tolist()))
    print(f"scene {i} ({CLASS_NAMES[scenes.labels[i]]}) -> {texts[out.target[i]]!r}")
    print("   ", shown)

# %% [markdown]
# ## Next
#
# - Your own CLIP or SigLIP: `ZeroShotClassifier(model, names, template="a photo of
#   a {}.", tokenizer=processor)`, and on the command line `captum-vit explain
#   --model hf:FOLDER --classes "cat,dog"` or `--model openclip:ARCH --checkpoint
#   weights.bin`.
# - `04_evaluating_explanations.ipynb`: the metrics work on `zs` as on any classifier.
