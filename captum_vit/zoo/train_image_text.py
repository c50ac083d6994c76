"""The recipe of the embedded image–text model (LiT: locked image tower).

``python -m captum_vit.zoo.train_image_text --out default_image_text.pt`` trains the
text tower of :mod:`captum_vit.zoo.image_text` on captions of Fashion-MNIST scenes:

1. the image features of ``--train-scenes`` train-split scenes are computed once with
   the locked default ViT (headless: its 128-d CLS features);
2. every step draws a batch of scenes and, per scene, a caption (a template of
   :data:`~captum_vit.zoo.image_text.TEMPLATES` with a name of
   :data:`~captum_vit.zoo.image_text.CLASS_SYNONYMS` for its main item and, where the
   template has one, for its distractor);
3. the text tower and the logit scale learn with a contrastive loss over the batch
   (CLIP's symmetric cross-entropy, where the captions of the same class are all
   positives: with ten classes a batch holds many of each);
4. zero-shot accuracy is measured on ``--eval-scenes`` held-out test-split scenes
   (``make_scenes(5000, split="test", seed=1234)``, the classifier's evaluation set)
   with the prompts ``"a photo of a {name}."`` and ``"a {name}"``.

The weights file holds the text side only (float16), the config and the results; the
image tower is the shipped default ViT.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import CLASS_NAMES, make_scenes, preprocess
from .image_text import (
    CLASS_SYNONYMS,
    TEMPLATES,
    ImageTextModel,
    build_image_text,
)

#: The architecture of the shipped text tower.
CONFIG: Dict[str, Any] = dict(
    embed_dim=128, context_length=16, width=64, layers=2, heads=4
)


def caption(label: int, distractor: int, rng: random.Random) -> str:
    """A random caption of a scene with main item ``label`` and a distractor."""
    names = CLASS_SYNONYMS[CLASS_NAMES[label]]
    template = rng.choice(TEMPLATES)
    other = rng.choice(CLASS_SYNONYMS[CLASS_NAMES[distractor]])
    return template.replace("{d}", other).replace("{}", rng.choice(names))


def class_prompts(template: str = "a photo of a {}.") -> List[str]:
    """One prompt per class (its main name in ``template``), in class order."""
    return [template.format(CLASS_SYNONYMS[n][0]) for n in CLASS_NAMES]


@torch.no_grad()
def image_features(
    model: ImageTextModel, images: np.ndarray, batch: int = 500
) -> Tensor:
    """(N, E) image embeddings of scene images in [0, 1] (the locked tower)."""
    model.visual.eval()
    out = [
        model.encode_image(preprocess(images[i : i + batch]))
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out)


@torch.no_grad()
def zero_shot_accuracy(
    model: ImageTextModel, feats: Tensor, labels: np.ndarray, prompts: Sequence[str]
) -> float:
    """Accuracy of the argmax over the prompts' scores."""
    model.eval()
    txt = model.encode_text(model.tokenizer(list(prompts)), normalize=True)
    pred = (F.normalize(feats, dim=-1) @ txt.t()).argmax(-1).numpy()
    return float((pred == labels).mean())


def train(
    train_scenes: int = 20000,
    eval_scenes: int = 5000,
    steps: int = 3000,
    batch: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    log=print,
) -> Dict[str, Any]:
    """Train the text tower; returns ``{"model", "results"}``."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = build_image_text(CONFIG)
    model.lock_image_tower()
    t0 = time.time()
    sc = make_scenes(train_scenes, split="train", seed=seed)
    feats = F.normalize(image_features(model, sc.images), dim=-1)
    test = make_scenes(eval_scenes, split="test", seed=1234)
    test_feats = image_features(model, test.images)
    log(f"image features: {time.time() - t0:.0f} s")
    params = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    labels = torch.as_tensor(sc.labels)
    history = []
    for step in range(steps):
        model.train()
        model.visual.eval()
        idx = torch.randint(0, train_scenes, (batch,))
        texts = [
            caption(int(sc.labels[i]), int(sc.distractor_labels[i]), rng) for i in idx
        ]
        txt = model.encode_text(model.tokenizer(texts), normalize=True)
        logits = model.logit_scale.exp() * feats[idx] @ txt.t()
        same = (labels[idx][:, None] == labels[idx][None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (
            -(target * logits.log_softmax(1)).sum(1).mean()
            - (target * logits.t().log_softmax(1)).sum(1).mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        if step % 250 == 0 or step == steps - 1:
            acc = zero_shot_accuracy(model, test_feats, test.labels, class_prompts())
            history.append(dict(step=step, loss=loss.item(), accuracy=acc))
            log(f"step {step}: loss {loss.item():.3f}, zero-shot accuracy {acc:.3f}")
    model.eval()
    results = {
        "zero_shot_accuracy": {
            t: zero_shot_accuracy(model, test_feats, test.labels, class_prompts(t))
            for t in ("a photo of a {}.", "a {}", "{}")
        },
        "eval_scenes": f"make_scenes({eval_scenes}, split='test', seed=1234)",
        "train_scenes": f"make_scenes({train_scenes}, split='train', seed={seed})",
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seconds": round(time.time() - t0, 1),
        "history": history,
    }
    log(f"results: {results['zero_shot_accuracy']}")
    return {"model": model, "results": results}


def save(model: ImageTextModel, results: Dict[str, Any], path: str) -> None:
    """The shipped format: config, text-side state_dict (float16), results."""
    state = {k: v.half() for k, v in model.text_state_dict().items()}
    config = dict(CONFIG, vocabulary=list(model.tokenizer.vocabulary))
    torch.save({"config": config, "state_dict": state, "results": results}, path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-scenes", type=int, default=20000)
    ap.add_argument("--eval-scenes", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = train(
        args.train_scenes, args.eval_scenes, args.steps, args.batch, args.lr, args.seed
    )
    save(out["model"], out["results"], args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
