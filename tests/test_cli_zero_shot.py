"""The command line on image-text models (issue 30): ``--model hf:DIR`` of a CLIP
folder and ``openclip:ARCH``, with ``--classes`` / ``--prompts`` / ``--template`` or
an ImageFolder's folder names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import FAST_EVALUATE, cli, write_scene_folder

from captum_vit import ZeroShotClassifier
from captum_vit.models import PromptSpec, load_model

tf = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIP folder as ``save_pretrained`` writes it: weights, a
    character-level CLIP tokenizer and the image processor (32 px)."""
    d = tmp_path_factory.mktemp("hfclip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in "abcdefghijklmnopqrstuvwxyz.,":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = tf.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), pad_token="!")
    torch.manual_seed(0)
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    text = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    cfg = tf.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)
    model = tf.CLIPModel(cfg)
    out = d / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    proc = tf.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory) -> str:
    """A tiny OpenCLIP architecture registered with open_clip (OpenCLIP's own BPE
    vocabulary, 8 tokens of context)."""
    d = tmp_path_factory.mktemp("ocfg")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 8,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    (d / "captum-vit-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)
    return "captum-vit-tiny-clip"


def test_load_hf_clip_folder_as_zero_shot_classifier(hf_clip_dir):
    spec = PromptSpec(["shirt", "bag"], "a photo of a {}.")
    loaded = load_model(f"hf:{hf_clip_dir}", prompts=spec)
    zs = loaded.model
    assert isinstance(zs, ZeroShotClassifier) and loaded.source == "hf-image-text"
    assert loaded.class_names == ["shirt", "bag"] and loaded.input_size == (32, 32)
    assert loaded.describe()["prompts"] == ["a photo of a shirt.", "a photo of a bag."]
    # the logits are the CLIP model's own, with its own tokenizer
    model = tf.CLIPModel.from_pretrained(hf_clip_dir).eval()
    tok = tf.AutoTokenizer.from_pretrained(hf_clip_dir)
    enc = tok(text=zs.prompts, padding=True, return_tensors="pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(**enc, pixel_values=x).logits_per_image
        assert torch.allclose(zs(x), ref, atol=1e-5)


def test_explain_and_evaluate_on_an_image_folder_use_its_folder_names(
    capsys, tmp_path, hf_clip_dir
):
    data = tmp_path / "data"
    write_scene_folder(data, n=4, classes=("t_shirt", "sandal"))
    rc, out, err = cli(
        capsys,
        "explain",
        "--model",
        f"hf:{hf_clip_dir}",
        "--data",
        data,
        "--method",
        "rollout",
        "genatt",
        "--quiet",
        "--out",
        tmp_path / "ex",
    )
    assert rc == 0, err
    assert len(list((tmp_path / "ex" / "maps").rglob("*.npz"))) == 4
    rc, out, err = cli(
        capsys,
        "evaluate",
        "--model",
        f"hf:{hf_clip_dir}",
        "--data",
        data,
        "--method",
        "rollout",
        "--template",
        "a picture of a {}",
        *FAST_EVALUATE,
        "--out",
        tmp_path / "ev",
    )
    assert rc == 0, err
    records = (tmp_path / "ev" / "records.jsonl").read_text()
    assert "a picture of a t shirt" in records and "a picture of a sandal" in records
    # resume with other prompts: the settings differ
    rc, out, err = cli(
        capsys,
        "evaluate",
        "--model",
        f"hf:{hf_clip_dir}",
        "--data",
        data,
        "--method",
        "rollout",
        *FAST_EVALUATE,
        "--out",
        tmp_path / "ev",
    )
    assert rc != 0 and "holds records" in err and "same settings to resume" in err


def test_openclip_arch_with_random_weights_and_a_prompt_file(
    capsys, tmp_path, tiny_open_clip
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dress\n\na sandal\na bag\n")
    rc, out, err = cli(
        capsys,
        "explain",
        "--model",
        f"openclip:{tiny_open_clip}",
        "--random-weights",
        "--prompts",
        prompts,
        "--method",
        "rollout",
        "--n",
        "2",
        "--out",
        tmp_path / "o",
    )
    assert rc == 0, err
    assert "a sandal" in out and (tmp_path / "o" / "explain_grid.png").is_file()
    loaded = load_model(
        f"openclip:{tiny_open_clip}",
        random_weights=True,
        prompts=PromptSpec(["a dress", "a bag"]),
    )
    model = open_clip.create_model(tiny_open_clip)  # the same seeded weights
    assert loaded.model.tower.conv1.weight.shape == model.visual.conv1.weight.shape
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        m = loaded.model
        img = torch.nn.functional.normalize(m.tower(x), dim=-1)
        assert torch.allclose(m(x), m.logit_scale * img @ m.text_embeddings.t())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "a,b", "--template", "a photo"], "--template: expected exactly"),
        (["--classes", "a,b", "--prompts", "x"], "--prompts: give --classes or"),
        (["--classes", "a,b,a"], "--classes: duplicate class name 'a'"),
        (["--classes", " , "], "--classes: expected comma-separated"),
        (["--template", "a {}"], "--template: applies to --classes"),
    ],
)
def test_bad_prompt_flags_are_one_line_errors(
    capsys, tmp_path, hf_clip_dir, args, message
):
    rc, out, err = cli(
        capsys,
        "explain",
        "--model",
        f"hf:{hf_clip_dir}",
        *args,
        "--n",
        "1",
        "--method",
        "rollout",
        "--out",
        tmp_path / "o",
    )
    assert rc != 0 and message in err, err
    assert len(err.strip().splitlines()) <= 2, err


def test_prompts_need_an_image_text_model_and_vice_versa(capsys, tmp_path, hf_clip_dir):
    rc, _, err = cli(
        capsys,
        "explain",
        "--model",
        "vit_tiny_patch16_224",
        "--random-weights",
        "--classes",
        "a,b",
        "--n",
        "1",
        "--out",
        tmp_path / "a",
    )
    assert rc != 0 and "is a classifier" in err
    rc, _, err = cli(
        capsys,
        "explain",
        "--model",
        f"hf:{hf_clip_dir}",
        "--n",
        "1",
        "--out",
        tmp_path / "b",
    )
    assert rc != 0 and "needs the classes to score" in err


def test_openclip_checkpoint_loads_its_weights(tmp_path, tiny_open_clip):
    torch.manual_seed(5)
    model = open_clip.create_model(tiny_open_clip).eval()
    path = tmp_path / "w.pt"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path
    )
    loaded = load_model(
        f"openclip:{tiny_open_clip}", path, prompts=PromptSpec(["a", "b"], "a {}")
    )
    assert loaded.weights == "checkpoint" and loaded.source == "openclip"
    x = torch.randn(2, 3, 32, 32)
    ids = open_clip.tokenize(["a a", "a b"], context_length=8)
    with torch.no_grad():
        i = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        t = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
        assert torch.allclose(
            loaded.model(x), model.logit_scale.exp() * i @ t.t(), atol=1e-4
        )
    from captum_vit.models import ModelError

    with pytest.raises(ModelError, match="--random-weights"):
        load_model(f"openclip:{tiny_open_clip}", prompts=PromptSpec(["a"]))


def test_hf_siglip_folder_uses_max_length_padding_and_its_bias(tmp_path, hf_clip_dir):
    """A SigLIP folder (here with the CLIP folder's character tokenizer, padded to
    its 16 tokens as SigLIP's processor pads): the logits are SigLIP's own."""
    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64)
    vision.update(num_hidden_layers=1, num_attention_heads=2)
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=64)
    text.update(num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16)
    model = tf.SiglipModel(tf.SiglipConfig(vision_config=vision, text_config=text))
    out = tmp_path / "siglip"
    model.save_pretrained(out)
    tok = tf.AutoTokenizer.from_pretrained(hf_clip_dir)
    tok.model_max_length = 16
    tok.save_pretrained(out)
    with pytest.warns(UserWarning, match="SiglipImageProcessor's defaults"):
        loaded = load_model(f"hf:{out}", prompts=PromptSpec(["shirt", "bag"], "a {}"))
    assert loaded.source == "hf-image-text" and loaded.input_size == (32, 32)
    enc = tok(text=["a shirt", "a bag"], padding="max_length", return_tensors="pt")
    assert enc["input_ids"].shape == (2, 16)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.eval()(input_ids=enc["input_ids"], pixel_values=x).logits_per_image
        assert torch.allclose(loaded.model(x), ref, atol=1e-5)


def test_explain_preview_skips_methods_the_zero_shot_model_cannot_serve(
    capsys, tmp_path
):
    """Every method runs or is skipped with its capability error on one line (the
    LRP methods need a linear head; a zero-shot head is a cosine): no traceback."""
    rc, out, err = cli(
        capsys,
        "explain",
        "--prompts",
        "a dress",
        "a sandal",
        "a bag",
        "a sneaker",
        "--out",
        tmp_path / "zs",
    )
    assert rc == 0, err
    for name, rule in (
        ("transformer-attribution", "LRP rules"),
        ("partial-lrp", "LRP rules"),
        ("attnlrp", "AttnLRP rules"),
        ("cp-lrp", "AttnLRP rules"),
    ):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{name}: "))
        assert line.startswith(f"{name}: skipped (") and f"needs {rule}" in line
    assert "legrad: " in out and (tmp_path / "zs" / "index.html").is_file()


def test_build_all_reports_a_missing_capability_as_unavailable():
    from helpers import make_model

    from captum_vit.methods import build_all, resolve_methods
    from captum_vit.vit import MissingCapability

    zs = make_model("zs_timm")
    built, unavailable = build_all(
        resolve_methods(["rollout", "transformer-attribution"]), zs
    )
    assert list(built) == ["rollout"]
    assert "needs LRP rules" in unavailable["transformer-attribution"]
    assert issubclass(MissingCapability, TypeError)
