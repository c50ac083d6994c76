"""ZeroShotClassifier: image-text models as classifiers over prompts (issue 30).

Oracles: Hugging Face's own ``logits_per_image``, the OpenCLIP score written out
(``logit_scale.exp() * normalised image @ normalised text`` [+ ``logit_bias``]),
and, for the masking, the towers' own masked outputs scored by hand.
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    IMAGE_TEXT_FAMILIES,
    hf_image_text,
    make_model,
    model_state,
    open_clip_model,
)

from captum_vit import GenAtt, TokenMask, ViTAdapter, ZeroShotClassifier
from captum_vit.methods import METHODS
from captum_vit.shapley import ShapleyExplainer
from captum_vit.vit import CLASS_HEAD, LRP_RULES
from captum_vit.vit.adapter import ATTNLRP_RULES

open_clip = pytest.importorskip("open_clip")


def _x(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _ids(k: int = 4, length: int = 6, vocab: int = 90) -> torch.Tensor:
    ids = torch.randint(
        3, vocab, (k, length), generator=torch.Generator().manual_seed(0)
    )
    ids[:, -1] = 2
    return ids


class FakeHFTokenizer:
    """Stands in for a Hugging Face tokenizer: records the texts and the padding it
    was called with, and returns deterministic ids."""

    def __init__(self):
        self.calls = []

    def __call__(self, text, padding, truncation, return_tensors):
        self.calls.append((list(text), padding))
        ids = torch.tensor(
            [[3 + (sum(map(ord, t)) + j) % 80 for j in range(5)] for t in text]
        )
        ids = torch.cat([ids, torch.full((len(text), 1), 2)], dim=1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


# ---------------------------------------------------------------- the logits
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_logits_equal_hugging_face_logits_per_image(kind):
    model = hf_image_text(kind)
    tok = FakeHFTokenizer()
    names = ["cat", "dog", "bird"]
    before = model_state(model)
    zs = ZeroShotClassifier(model, names, template="a photo of a {}.", tokenizer=tok)
    assert model_state(model) == before
    texts = [f"a photo of a {n}." for n in names]
    assert tok.calls == [(texts, "max_length" if kind == "siglip" else True)]
    assert zs.class_names == names and zs.prompts == texts
    enc = tok(texts, None, None, None)
    x = _x()
    with torch.no_grad():
        kw = {} if kind == "siglip" else {"attention_mask": enc["attention_mask"]}
        ref = model(input_ids=enc["input_ids"], pixel_values=x, **kw).logits_per_image
        got = zs(x)
    assert got.shape == (3, 3)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    # given token ids: the same scores
    zs2 = ZeroShotClassifier(
        model,
        token_ids=enc["input_ids"],
        **{"attention_mask": enc["attention_mask"]} if kind == "clip" else {},
    )
    with torch.no_grad():
        assert torch.allclose(zs2(x), ref, atol=1e-5)
    assert zs2.class_names == ["class 0", "class 1", "class 2"]


@pytest.mark.parametrize("bias", [None, -2.5])
def test_logits_equal_the_open_clip_score_by_hand(bias):
    import open_clip as oc

    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16)
    text = dict(context_length=8, vocab_size=49408, width=32, heads=2, layers=1)
    model = oc.CLIP(16, vision, text, init_logit_bias=bias).eval()
    names = ["sandal", "dress"]
    zs = ZeroShotClassifier(model, names, template="a photo of a {}.")  # its BPE
    x = _x()
    with torch.no_grad():
        img = model.encode_image(x, normalize=True)
        ids = oc.tokenize([f"a photo of a {n}." for n in names], context_length=8)
        txt = model.encode_text(ids, normalize=True)
        ref = model.logit_scale.exp() * img @ txt.t()
        if bias is not None:
            ref = ref + model.logit_bias
        got = zs(x)
    assert torch.allclose(got, ref, atol=1e-5)
    assert float(zs.logit_bias) == (0.0 if bias is None else bias)


def test_timm_tower_with_given_text_embeddings():
    import timm

    torch.manual_seed(0)
    tower = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
    ).eval()
    emb = torch.randn(4, 32)
    zs = ZeroShotClassifier(tower, ["a", "b", "c", "d"], text_embeddings=emb)
    x = _x()
    with torch.no_grad():
        f = tower(x)
        ref = (
            100.0
            * torch.nn.functional.normalize(f, dim=-1)
            @ torch.nn.functional.normalize(emb, dim=-1).t()
        )
        assert torch.allclose(zs(x), ref, atol=1e-4)
    assert zs.class_names == ["a", "b", "c", "d"]


def test_text_embeddings_are_computed_once_without_grad_and_kept():
    model = open_clip_model()
    calls = []
    h = model.transformer.register_forward_hook(lambda *a: calls.append(1))
    model.train()
    zs = ZeroShotClassifier(model, token_ids=_ids(3, 8, 50))
    assert len(calls) == 1 and model.training  # encoded once; mode left as found
    assert not zs.text_embeddings.requires_grad
    assert "text_embeddings" in dict(zs.named_buffers())
    assert torch.allclose(zs.text_embeddings.norm(dim=-1), torch.ones(3))
    assert all(not n.startswith("transformer") for n, _ in zs.named_parameters())
    zs.eval()
    GenAtt(zs).attribute(_x(2), target=[0, 2])
    zs(_x(2))
    assert len(calls) == 1  # no text forward afterwards
    h.remove()


# ---------------------------------------------------------------- the adapter
@pytest.mark.parametrize("family", IMAGE_TEXT_FAMILIES)
def test_the_adapter_sees_through_to_the_tower(family):
    zs = make_model(family)
    a, tower = ViTAdapter(zs), ViTAdapter(zs.tower)
    assert a.family_name == f"ZeroShotClassifier({tower.family_name})"
    # no LRP rules of either kind: the head is a cosine score, not a linear layer
    lrp = {LRP_RULES, ATTNLRP_RULES}
    assert a.capabilities == (tower.capabilities - lrp) | {CLASS_HEAD}
    assert a.num_classes == 5 and a.num_prefix_tokens == tower.num_prefix_tokens
    x = _x(4)
    keep = torch.rand(4, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    keep[:, 2] = True
    with torch.no_grad():
        ref = zs(x)
        assert torch.allclose(a.head(a.run_blocks(a.embed(x))), ref, atol=1e-5)
        for mode in ("attention", "drop"):
            feats = TokenMask(zs.tower, mode)(x, keep)  # the tower's own masking
            if zs.projection is not None:
                feats = zs.projection(feats)
            want = zs.scores(feats)
            assert torch.allclose(TokenMask(zs, mode)(x, keep), want, atol=1e-5)
            assert torch.allclose(a.forward(x, keep=keep), want, atol=1e-5)
    names = [n for _, ps in a.parameter_groups() for n, _ in ps]
    assert sorted(names) == sorted(n for n, _ in zs.named_parameters())
    headless = a.without_head()
    assert ViTAdapter(headless).num_classes == 0 and zs.num_classes == 5
    with pytest.raises(TypeError, match="LRP rules"):
        a.require(LRP_RULES, "TransformerAttribution")


def _explainer(model):
    torch.manual_seed(0)
    return ShapleyExplainer.from_surrogate(model).eval()


@pytest.mark.parametrize("family", IMAGE_TEXT_FAMILIES)
def test_every_method_runs_batch_equals_per_sample_and_leaves_the_model(family):
    zs = make_model(family)
    a = ViTAdapter(zs)
    extras = {"tis_masks": 4, "rise_masks": 4, "n_steps": 2}
    if "prefix_tokens" in a.capabilities:
        extras.update(shapley_explainer=_explainer(zs), shapley_surrogate=zs)
    x, target = _x(2), torch.tensor([1, 4])
    before, text = model_state(zs), zs.text_embeddings.clone()
    # the capability errors of the README matrix's zero-shot rows
    refused = {
        "transformer-attribution": "needs LRP rules",
        "partial-lrp": "needs LRP rules",
        "attnlrp": "needs AttnLRP rules",
        "cp-lrp": "needs AttnLRP rules",
    }
    if family != "zs_timm":  # projected values: timm blocks only
        refused["beyond-intuition-token"] = "needs projected attention values"
    for name, method in METHODS.items():
        if name in refused:
            with pytest.raises(TypeError, match=refused[name]):
                method.build(zs, extras)(x, target, [0, 1])
            continue
        if name == "vit-shapley" and "shapley_explainer" not in extras:
            continue
        batch = method.build(zs, extras)(x, target, [0, 1])
        single = torch.cat(
            [
                method.build(zs, extras)(x[i : i + 1], target[i : i + 1], [i])
                for i in (0, 1)
            ]
        )
        assert batch.shape[0] == 2 and torch.isfinite(batch).all(), name
        assert torch.allclose(batch, single, atol=1e-4, rtol=1e-3), name
    assert model_state(zs) == before and torch.equal(zs.text_embeddings, text)


# ---------------------------------------------------------------- bad input
def test_bad_input_is_one_line_naming_the_argument():
    clip = hf_image_text("clip")
    tower = make_model("zs_timm").tower
    cases = [
        (lambda: ZeroShotClassifier(clip, ["cat"]), "^tokenizer: .*text_embeddings"),
        (lambda: ZeroShotClassifier(clip, [], tokenizer=FakeHFTokenizer()), "^prompts"),
        (
            lambda: ZeroShotClassifier(
                clip,
                ["cat", "dog", "cat"],
                template="a {}",
                tokenizer=FakeHFTokenizer(),
            ),
            "^prompts: duplicate class name 'cat'",
        ),
        (lambda: ZeroShotClassifier(clip, ["cat"], template="a photo"), "^template"),
        (
            lambda: ZeroShotClassifier(clip, text_embeddings=torch.randn(2, 7)),
            r"^text_embeddings: expected width 16",
        ),
        (lambda: ZeroShotClassifier(tower, ["a"]), "^tokenizer: this image tower has"),
        (
            lambda: ZeroShotClassifier(
                clip, ["a", "b"], text_embeddings=torch.randn(3, 16)
            ),
            "^prompts: 2 names for 3",
        ),
        (
            lambda: ZeroShotClassifier(
                clip, token_ids=_ids(), text_embeddings=torch.randn(3, 16)
            ),
            "^text_embeddings: pass either",
        ),
        (
            lambda: ZeroShotClassifier(clip, "cat", tokenizer=FakeHFTokenizer()),
            "^prompts",
        ),
        (lambda: ZeroShotClassifier(clip, token_ids=torch.zeros(2, 3)), "^token_ids"),
        (
            lambda: ZeroShotClassifier(
                make_model("cls"), text_embeddings=torch.randn(2, 32)
            ),
            "^model: .*classifier head",
        ),
        (
            lambda: ZeroShotClassifier(torch.nn.Linear(3, 3)),
            "^model: expected an image-text",
        ),
    ]
    import transformers as tf

    torch.manual_seed(0)
    v2 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    v2.update(num_attention_heads=2, patch_size=8, num_patches=16)
    t2 = dict(vocab_size=99, hidden_size=32, intermediate_size=64)
    t2.update(num_hidden_layers=1, num_attention_heads=2)
    siglip2 = tf.Siglip2Model(tf.Siglip2Config(vision_config=v2, text_config=t2))
    cases.append(
        (
            lambda: ZeroShotClassifier(siglip2, text_embeddings=torch.randn(2, 32)),
            "^model: the NaFlex Siglip2Model",
        )
    )
    for call, match in cases:
        with pytest.raises((TypeError, ValueError), match=match) as err:
            call()
        assert "\n" not in str(err.value)
