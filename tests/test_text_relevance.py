"""TextRelevance (Chefer et al. 2021b, text side) against hand-written oracles.

The oracles run the text transformer written out from each library's modules (an
explicit attention from the ``nn.MultiheadAttention`` parameters for OpenCLIP,
``output_attentions=True`` on an eager copy for Hugging Face), take the gradient of
the image-text score with an ordinary backward and apply the relevance rule.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import hf_image_text, model_state, open_clip_model

from captum_vit import TextRelevance

open_clip = pytest.importorskip("open_clip")


def _x(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _rule(atts, grads, row_index, start=0):
    t = atts[0].shape[-1]
    r = torch.eye(t, dtype=torch.float64)
    for a, g in list(zip(atts, grads))[start:]:
        cam = (g * a).clamp(min=0).mean(0).double()
        r = r + cam @ r
    return r[row_index]


def open_clip_oracle(m, image, ids, start=0):
    """Relevance of one text for one image, everything written out."""
    with torch.no_grad():
        img = F.normalize(m.encode_image(image[None]), dim=-1)[0]
    x = m.token_embedding(ids[None]) + m.positional_embedding
    atts = []
    for blk in m.transformer.resblocks:
        h = blk.ln_1(x)
        mha = blk.attn
        b, t, e = h.shape
        q, k, v = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)
        q, k, v = (
            z.reshape(b, t, mha.num_heads, -1).transpose(1, 2) for z in (q, k, v)
        )
        s = q @ k.transpose(-2, -1) / (e // mha.num_heads) ** 0.5 + m.attn_mask
        a = s.softmax(-1)
        atts.append(a)
        x = x + mha.out_proj((a @ v).transpose(1, 2).reshape(b, t, e))
        x = x + blk.mlp(blk.ln_2(x))
    x = m.ln_final(x)
    eot = int(ids.argmax())
    f = F.normalize(x[0, eot] @ m.text_projection, dim=-1)
    score = m.logit_scale.exp() * (f * img).sum()
    grads = torch.autograd.grad(score, atts)
    return _rule([a[0].detach() for a in atts], [g[0] for g in grads], eot, start)


def _oc_ids(k: int = 3):
    ids = torch.randint(3, 48, (k, 8), generator=torch.Generator().manual_seed(0))
    ids[:, 5] = 49  # the end-of-text token, the largest id
    ids[:, 6:] = 0
    return ids


@pytest.mark.parametrize("start", [0, -1])
def test_open_clip_equals_the_rule_written_out(start):
    m = open_clip_model(depth=2)
    m.transformer.resblocks.append(copy.deepcopy(m.transformer.resblocks[0]))
    ids, x = _oc_ids(), _x()
    before = model_state(m)
    out = TextRelevance(m, start_layer=start).attribute(x, token_ids=ids, target=[2, 0])
    assert model_state(m) == before
    assert out.scores.shape == (2, 8) and out.target.tolist() == [2, 0]
    assert out.tokens[0] == [str(i) for i in ids[2, :6].tolist()]  # no tokenizer
    for b, k in enumerate([2, 0]):
        ref = open_clip_oracle(m, x[b], ids[k], start=start % 2)  # 2 text blocks
        assert torch.allclose(out.scores[b].double(), ref, atol=1e-5), (b, ref)
    assert (out.scores[:, 6:] == 0).all()  # causal: nothing after the end token
    # batch equals per sample; default target = the best-scoring text
    single = TextRelevance(m, start_layer=start).attribute(
        x[1:], token_ids=ids, target=0
    )
    assert torch.allclose(single.scores[0], out.scores[1], atol=1e-6)
    auto = TextRelevance(m).attribute(x, token_ids=ids)
    assert torch.equal(auto.target, auto.logits.argmax(-1))
    with torch.no_grad():
        i = F.normalize(m.encode_image(x), dim=-1)
        t = F.normalize(m.encode_text(ids), dim=-1)
        assert torch.allclose(auto.logits, m.logit_scale.exp() * i @ t.t(), atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hugging_face_equals_the_rule_on_library_attentions(kind):
    m = hf_image_text(kind)
    ids = torch.randint(3, 90, (3, 6), generator=torch.Generator().manual_seed(0))
    ids[:, -1] = 2
    x = _x()
    before = model_state(m)
    out = TextRelevance(m).attribute(x, token_ids=ids, target=[1, 2])
    assert model_state(m) == before and m.config._attn_implementation == "sdpa"
    eager = copy.deepcopy(m)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        img = eager.get_image_features(pixel_values=x).pooler_output
        img = F.normalize(img, dim=-1)
    for b, k in enumerate([1, 2]):
        o = eager.text_model(input_ids=ids[k : k + 1], output_attentions=True)
        atts = list(o.attentions)
        pooled = o.pooler_output
        if kind == "clip":
            pooled = eager.text_projection(pooled)
            row = int(ids[k].argmax())  # eos_token_id == 2: CLIP's legacy argmax
            scale, bias = eager.logit_scale.exp(), 0.0
        else:
            row = ids.shape[1] - 1
            scale, bias = eager.logit_scale.exp(), eager.logit_bias
        score = scale * (F.normalize(pooled, dim=-1)[0] * img[b]).sum() + bias
        grads = torch.autograd.grad(score.sum(), atts)
        ref = _rule([a[0].detach() for a in atts], [g[0] for g in grads], row)
        assert torch.allclose(out.scores[b].double(), ref, atol=1e-5), kind


def test_bad_input_names_the_argument():
    m = open_clip_model()
    tr = TextRelevance(m)
    x, ids = _x(), _oc_ids()
    with pytest.raises(ValueError, match="^texts: give texts or token_ids"):
        tr.attribute(x)
    with pytest.raises(ValueError, match="^texts: give texts or token_ids"):
        tr.attribute(x, texts=["a"], token_ids=ids)
    with pytest.raises(ValueError, match=r"^target: text indices must lie in \[0, 3\)"):
        tr.attribute(x, token_ids=ids, target=[0, 3])
    with pytest.raises(TypeError, match="^target"):
        tr.attribute(x, token_ids=ids, target=1.0)
    with pytest.raises(ValueError, match="^start_layer"):
        TextRelevance(m, start_layer=5)
    with pytest.raises(TypeError, match="^model: an image tower alone"):
        TextRelevance(m.visual)
    with pytest.raises(ValueError, match="^tokenizer: no tokenizer"):
        tr.attribute(x, texts=["a dog"])
    with pytest.raises(ValueError, match="^prompts: expected at least one"):
        TextRelevance(m, tokenizer=lambda t: _oc_ids(len(t))).attribute(x, texts=[])
