"""The embedded image-text model (LiT on the scenes, issue 30): tokenizer, scores,
shipped weights, recipe and model card."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from helpers import cli, model_state

from captum_vit import GenAtt, TextRelevance, ZeroShotClassifier
from captum_vit.zoo import (
    load_default_model,
    load_default_scenes,
    make_scenes,
    preprocess,
)
from captum_vit.zoo.image_text import (
    DEFAULT_IMAGE_TEXT_WEIGHTS,
    VOCABULARY,
    WordTokenizer,
    load_default_image_text,
)

CARD = Path(__file__).resolve().parents[1] / "captum_vit" / "zoo" / "IMAGE_TEXT_CARD.md"


def test_word_tokenizer():
    tok = WordTokenizer(context_length=6)
    ids = tok(["A Dress!", "a crimson bag", "a b c d e f g"])
    w = {x: VOCABULARY.index(x) + 3 for x in ("a", "dress", "bag")}
    assert ids[0].tolist() == [2, w["a"], w["dress"], tok.eot_id, 0, 0]
    assert ids[1].tolist() == [2, w["a"], 1, w["bag"], tok.eot_id, 0]
    assert (
        ids[2, -1] == tok.eot_id
        and (ids.argmax(-1) == (ids == tok.eot_id).int().argmax(-1)).all()
    )
    assert tok.tokens("a crimson bag") == ["<start>", "a", "<unk>", "bag", "<end>"]
    assert [tok.id_to_token(i) for i in ids[0, :4].tolist()] == [
        "<start>",
        "a",
        "dress",
        "<end>",
    ]


def test_scores_are_the_cosine_of_the_locked_tower_and_the_text_tower():
    model = load_default_image_text()
    classifier = load_default_model()
    x, _ = load_default_scenes(3)
    with torch.no_grad():  # the image tower is the classifier's, headless
        feats = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        assert torch.allclose(model.encode_image(x), feats, atol=1e-5)
    prompts = ["a dress", "a sandal", "a bag"]
    zs = ZeroShotClassifier(model, prompts)
    before = model_state(model)
    with torch.no_grad():
        t = F.normalize(model.encode_text(model.tokenizer(prompts)), dim=-1)
        ref = model.logit_scale.exp() * F.normalize(feats, dim=-1) @ t.t()
        assert torch.allclose(zs(x), ref, atol=1e-4)
    GenAtt(zs).attribute(x, target=[0, 1, 2])
    out = TextRelevance(model).attribute(x[:1], texts=prompts, target=1)
    assert out.tokens == [["<start>", "a", "sandal", "<end>"]]
    assert model_state(model) == before


def test_shipped_weights_classify_held_out_scenes_and_match_the_card():
    payload = torch.load(DEFAULT_IMAGE_TEXT_WEIGHTS, weights_only=True)
    acc = payload["results"]["zero_shot_accuracy"]["a photo of a {}."]
    card = CARD.read_text()
    assert f"**Zero-shot accuracy {100 * acc:.1f} %**" in card
    assert (
        re.search(r"\(232 KiB\)", card)
        and DEFAULT_IMAGE_TEXT_WEIGHTS.stat().st_size < 300_000
    )
    from captum_vit.zoo.train_image_text import class_prompts

    sc = make_scenes(100, split="test", seed=1234)  # the evaluation set's first 100
    zs = ZeroShotClassifier(load_default_image_text(), class_prompts())
    with torch.no_grad():
        pred = zs(preprocess(sc.images)).argmax(-1).numpy()
    assert (pred == sc.labels).mean() >= 0.7


def test_the_recipe_trains_saves_and_loads(tmp_path):
    from captum_vit.zoo.train_image_text import save, train

    out = train(train_scenes=64, eval_scenes=32, steps=3, batch=16, log=lambda s: None)
    path = tmp_path / "it.pt"
    save(out["model"], out["results"], str(path))
    loaded = load_default_image_text(weights=path)
    ids = loaded.tokenizer(["a bag"])
    with torch.no_grad():
        a = out["model"].encode_text(ids)
        b = loaded.encode_text(ids)
    assert torch.allclose(a, b, atol=1e-2)  # float16 storage
    assert len(out["results"]["history"]) == 2


def test_explain_with_prompts_works_out_of_the_box(capsys, tmp_path):
    rc, out, err = cli(
        capsys,
        "explain",
        "--prompts",
        "a dress",
        "a sandal",
        "a bag",
        "a sneaker",
        "--method",
        "rollout",
        "--out",
        tmp_path,
    )
    assert rc == 0, err
    assert "scene 2 (Sandal): top: a sandal" in out
    assert (tmp_path / "explain_grid.png").is_file()
