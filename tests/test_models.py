"""captum_vit.models: every checkpoint layout people save, the number of classes from
the head, hf: and torchvision: loading, offline pretrained requests, one-line errors."""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from captum_vit import models
from captum_vit.methods import METHODS, MethodUnavailable
from captum_vit.models import ModelError, load_model, read_checkpoint


def _vit(num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_vit", num_classes=num_classes).eval()


@pytest.fixture(scope="module")
def nets():
    return _vit(7, 1), _vit(7, 2)


def _same(loaded, ref: torch.nn.Module) -> bool:
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(loaded.model(x), ref(x))


def test_plain_state_dict_sets_num_classes_from_head(tmp_path: Path, nets):
    net, _ = nets
    torch.save(net.state_dict(), tmp_path / "plain.pth")
    loaded = load_model("test_vit", tmp_path / "plain.pth")
    assert loaded.num_classes == 7 and loaded.model.num_classes == 7
    assert loaded.weights == "checkpoint" and not loaded.model.training
    assert _same(loaded, net)
    assert loaded.input_size == (160, 160)


def test_timm_training_checkpoint_prefixes_args_and_ema(tmp_path: Path, nets):
    net, ema = nets
    payload = {
        "epoch": 3,
        "arch": "test_vit",
        "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
        "state_dict_ema": ema.state_dict(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "args": argparse.Namespace(model="test_vit", lr=0.1, mean=None),
        "metric": 71.5,
    }
    torch.save(payload, tmp_path / "train.pth.tar")
    assert _same(load_model("test_vit", tmp_path / "train.pth.tar"), net)
    with_ema = load_model("test_vit", tmp_path / "train.pth.tar", use_ema=True)
    assert _same(with_ema, ema)


def test_model_key_compiled_prefix_and_safetensors(tmp_path: Path, nets):
    from safetensors.torch import save_file

    net, _ = nets
    compiled = {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}
    torch.save({"model": compiled}, tmp_path / "m.pt")
    assert _same(load_model("test_vit", tmp_path / "m.pt"), net)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        tmp_path / "m.safetensors",
    )
    assert _same(load_model("test_vit", tmp_path / "m.safetensors"), net)


def test_default_model_checkpoints_and_vit_shapley_only_with_shipped_weights(
    tmp_path: Path,
):
    from captum_vit import zoo

    shipped = load_model("default")
    assert shipped.weights == "shipped" and "shapley_explainer" in shipped.extras
    METHODS["vit-shapley"].build(shipped.model, shipped.extras)  # available
    payload = torch.load(zoo.DEFAULT_WEIGHTS, weights_only=True)
    state = {k: v.clone() for k, v in payload["state_dict"].items()}
    state["head.weight"] = state["head.weight"][:4] * 2
    state["head.bias"] = state["head.bias"][:4]
    torch.save(state, tmp_path / "four.pth")
    four = load_model("default", tmp_path / "four.pth")
    assert four.num_classes == 4 and four.class_names[0] == "class 0"
    assert torch.equal(four.model.head.weight, state["head.weight"])
    for loaded in (four, load_model("default", zoo.DEFAULT_WEIGHTS)):
        assert loaded.extras == {}
        with pytest.raises(MethodUnavailable, match="shipped weights"):
            METHODS["vit-shapley"].build(loaded.model, loaded.extras)


def test_default_model_refuses_a_state_dict_of_another_architecture(tmp_path: Path):
    """A bare state_dict of another ViT (here the 4-block, width-128 default of
    earlier versions, or the current one with a block less while that is the shipped
    one) says the architecture differs; the zoo format, which carries its config,
    still loads any architecture."""
    from captum_vit import zoo

    config = dict(torch.load(zoo.DEFAULT_WEIGHTS, weights_only=True)["config"])
    old = dict(config, depth=4, embed_dim=128, num_heads=4)
    if (old["depth"], old["embed_dim"]) == (config["depth"], config["embed_dim"]):
        old.update(depth=config["depth"] - 1)
    torch.save(zoo.build_model(old).state_dict(), tmp_path / "old.pth")
    with pytest.raises(ModelError, match="architecture differs") as info:
        load_model("default", tmp_path / "old.pth")
    msg = str(info.value)
    assert "\n" not in msg and f"{old['depth']} blocks" in msg
    assert f"{config['depth']} blocks" in msg and "old.pth" in msg
    torch.save(
        {"config": old, "state_dict": zoo.build_model(old).state_dict()},
        tmp_path / "zoo.pt",
    )
    assert len(load_model("default", tmp_path / "zoo.pt").model.blocks) == old["depth"]


def _custom_pickle(path: Path) -> None:
    with path.open("wb") as fh:
        pickle.dump({"state_dict": {"w": torch.ones(1)}, "obj": Path("x")}, fh, 2)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("hello"), "not a PyTorch checkpoint"),
        (lambda p: torch.save({"epoch": 1, "note": "x"}, p), "no weights found"),
        (lambda p: _custom_pickle(p), "objects other than tensors"),
        (
            lambda p: torch.save(
                _vit(7, 0).state_dict() | {"extra.w": torch.ones(1)}, p
            ),
            "1 unexpected",
        ),
    ],
)
def test_bad_checkpoints_one_line(tmp_path: Path, make, message):
    p = tmp_path / "ckpt.pth"
    make(p)
    with pytest.raises(ModelError, match=message) as info:
        load_model("test_vit", p)
    assert "\n" not in str(info.value)


def test_mismatching_architecture_names_at_most_five_keys(tmp_path: Path):
    torch.manual_seed(0)
    other = timm.create_model("test_vit2", num_classes=7)  # avg pool, other shapes
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ModelError, match="keys do not fit") as info:
        load_model("test_vit", tmp_path / "other.pth")
    msg = str(info.value)
    assert "\n" not in msg and msg.count(";") <= 5
    named = msg.split("e.g. ", 1)[1]
    assert len(named.split("; ")) == 5


def test_random_weights_are_seeded_and_leave_the_global_rng(nets):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_model("test_vit", random_weights=True)
    after = torch.rand(1)
    b = load_model("test_vit", random_weights=True)
    assert torch.equal(before, after)  # the caller's RNG stream is untouched
    assert all(
        torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters())
    )
    assert a.weights == "random"


def test_offline_pretrained_request_fails_at_once(monkeypatch):
    """No network: the local cache is tried without requests, then one line says
    how to pass --checkpoint; no download is retried (time.sleep would be the
    retry back-off)."""

    def no_sleep(_):
        raise AssertionError("a download was retried")

    monkeypatch.setattr(models, "_reachable", lambda host, port=443, timeout=3.0: False)
    monkeypatch.setattr(time, "sleep", no_sleep)
    for spec in ("test_vit", "torchvision:resnet18", "hf:google/vit-base-patch16-224"):
        with pytest.raises(ModelError) as info:
            load_model(spec)
        msg = str(info.value)
        assert "could not be fetched" in msg and "\n" not in msg
        assert ("--checkpoint" in msg) or ("save_pretrained" in msg)


def test_unknown_models_one_line():
    with pytest.raises(ModelError, match="unknown model 'no_such_net'"):
        load_model("no_such_net")
    with pytest.raises(ModelError, match="unknown model 'torchvision:no_such'"):
        load_model("torchvision:no_such")
    with pytest.raises(ModelError, match="not a Hugging Face model folder"):
        load_model("hf:" + str(Path(__file__).parent))


def test_hf_folder_loads_with_processor_preprocessing(tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    torch.manual_seed(0)
    net = transformers.ViTForImageClassification(cfg).eval()
    net.save_pretrained(tmp_path / "hfvit")
    transformers.ViTImageProcessor(
        size={"height": 32, "width": 32},
        image_mean=[0.1, 0.2, 0.3],
        image_std=[0.5] * 3,
    ).save_pretrained(tmp_path / "hfvit")
    loaded = load_model(f"hf:{tmp_path / 'hfvit'}")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x).logits, net(x).logits)
    assert loaded.source == "hf" and loaded.num_classes == 3
    assert loaded.input_size == (32, 32) and loaded.preprocessing.mean == (
        0.1,
        0.2,
        0.3,
    )
    # a fine-tuned checkpoint with another head, saved with DDP prefixes
    cfg.num_labels = 5
    torch.manual_seed(1)
    five = transformers.ViTForImageClassification(cfg).eval()
    sd = {f"module.{k}": v for k, v in five.state_dict().items()}
    torch.save(sd, tmp_path / "five.pth")
    tuned = load_model(f"hf:{tmp_path / 'hfvit'}", tmp_path / "five.pth")
    with torch.no_grad():
        assert tuned.num_classes == 5
        assert torch.equal(tuned.model(x).logits, five(x).logits)


def test_torchvision_checkpoint_and_weights_transforms(tmp_path: Path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.get_model("resnet18", num_classes=4).eval()
    torch.save(net.state_dict(), tmp_path / "r4.pth")
    loaded = load_model("torchvision:resnet18", tmp_path / "r4.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net(x))
    assert loaded.num_classes == 4
    t = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert loaded.input_size == tuple(t.crop_size) * 2
    assert loaded.preprocessing.mean == tuple(t.mean)


def test_read_checkpoint_returns_meta(tmp_path: Path, nets):
    net, _ = nets
    torch.save({"state_dict": net.state_dict(), "epoch": 9}, tmp_path / "c.pth")
    state, meta = read_checkpoint(tmp_path / "c.pth")
    assert meta == {"epoch": 9} and set(state) == set(net.state_dict())


# ------------------------------------------- issue 26: Hugging Face folders, quiet
def _tiny_hf(kind: str = "vit"):
    transformers = pytest.importorskip("transformers")
    common = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=3,
    )
    torch.manual_seed(0)
    if kind == "vit":
        cfg = transformers.ViTConfig(intermediate_size=64, **common)
        return transformers.ViTForImageClassification(cfg).eval()
    cfg = transformers.Dinov2WithRegistersConfig(mlp_ratio=2, **common)
    return transformers.Dinov2WithRegistersForImageClassification(cfg).eval()


def test_hf_folder_without_processor_config_says_which_preprocessing(tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    _tiny_hf().save_pretrained(tmp_path / "vit")
    # transformers' own default for a ViT: ViTImageProcessor(), mean = std = 0.5
    default = transformers.ViTImageProcessor()
    message = (
        r"hf:.*vit: the folder has no preprocessor_config\.json; using "
        r"ViTImageProcessor's defaults for model type 'vit': mean \(0\.5, 0\.5, "
        r"0\.5\), std \(0\.5, 0\.5, 0\.5\)"
    )
    with pytest.warns(UserWarning, match=message):
        loaded = load_model(f"hf:{tmp_path / 'vit'}")
    assert loaded.preprocessing.mean == tuple(default.image_mean)
    assert loaded.preprocessing.std == tuple(default.image_std)
    assert loaded.input_size == (32, 32)  # the config's image size
    # a model type transformers names no image processor for: ImageNet, said so
    _tiny_hf("dinov2_reg").save_pretrained(tmp_path / "reg")
    with pytest.warns(UserWarning, match="names no image processor .*ImageNet"):
        loaded = load_model(f"hf:{tmp_path / 'reg'}")
    assert loaded.preprocessing.mean == models.IMAGENET_MEAN


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not a valid image processor config"),
        ('{"image_processor_type": "NoSuchProcessor"}', "not a valid image processor"),
        (
            '{"image_processor_type": "ViTImageProcessor", "image_std": [0.5, 0, 1]}',
            "not finite numbers with a positive std",
        ),
    ],
)
def test_malformed_processor_config_is_refused_in_one_line(
    tmp_path: Path, text: str, message: str
):
    _tiny_hf().save_pretrained(tmp_path / "vit")
    path = tmp_path / "vit" / "preprocessor_config.json"
    path.write_text(text)
    with pytest.raises(ModelError) as info:
        load_model(f"hf:{tmp_path / 'vit'}")
    msg = str(info.value)
    assert str(path) in msg and message in msg and "\n" not in msg


def test_hub_processor_config_lookup(monkeypatch):
    """A hub id: the cache is read; a file the hub does not have, or an unreachable
    hub, gives no file and the reason (then the warning's defaults)."""
    import huggingface_hub
    from huggingface_hub import file_download

    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/c/p.json"
    )
    assert models._hf_processor_file("org/m", False) == (Path("/c/p.json"), "")
    no_file = file_download._CACHED_NO_EXIST
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda *a, **k: no_file
    )
    path, why = models._hf_processor_file("org/m", False)
    assert path is None and "org/m has no preprocessor_config.json" in why
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(models, "_reachable", lambda host, port=443, timeout=3.0: False)
    path, why = models._hf_processor_file("org/m", False)
    assert path is None and "not in the local cache" in why


def test_no_except_exception_falls_back_silently():
    """Every ``except Exception`` in models.py reports (re-raises as one line); a
    guess (a default on any error) catches the specific exceptions it expects."""
    import ast

    tree = ast.parse(Path(models.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and (
            isinstance(node.type, ast.Name)
            and node.type.id in ("Exception", None)
            or node.type is None
        ):
            assert any(isinstance(n, ast.Raise) for n in ast.walk(node)), node.lineno


def test_random_weights_are_labelled_with_their_seed(tmp_path: Path):
    from captum_vit.evaluate import EvalConfig, run_evaluation

    loaded = load_model("default", random_weights=True)
    assert models.weights_label(loaded.describe()) == "random weights (seed 0)"
    assert models.weights_label({"weights": "shipped"}) == "shipped weights"
    # a local Hugging Face folder holds whatever was saved (random weights too)
    folder = {"model": f"hf:{tmp_path}", "weights": "pretrained"}
    assert models.weights_label(folder) == f"the weights saved in {tmp_path}"
    cfg = EvalConfig(n=2, chunk=2, curve_steps=2, faith_samples=2)
    cfg.sensitivity_samples, cfg.sensitivity_sizes = 2, 1
    run_evaluation(str(tmp_path), ["random"], cfg, model=loaded)
    report = (tmp_path / "results.md").read_text()
    assert "(random weights (seed 0))" in report and "pretrained" not in report


def _loading_bars(capfd, **kw) -> str:
    capfd.readouterr()
    load_model(**kw)
    return capfd.readouterr().err


def test_quiet_hides_the_transformers_loading_bar_and_restores_it(
    tmp_path: Path, capfd
):
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as tf_logging

    from captum_vit import cli

    _tiny_hf().save_pretrained(tmp_path / "vit")
    spec = f"hf:{tmp_path / 'vit'}"
    with pytest.warns(UserWarning, match="preprocessor_config"):
        assert "Loading weights" in _loading_bars(capfd, spec=spec)
        assert "Loading weights" not in _loading_bars(capfd, spec=spec, quiet=True)
    assert tf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    # a caller's own choice (bars off) survives a quiet load
    tf_logging.disable_progress_bar()
    try:
        with pytest.warns(UserWarning, match="preprocessor_config"):
            load_model(spec, quiet=True)
        assert not tf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    finally:
        tf_logging.enable_progress_bar()
    # the commands pass --quiet through
    args = argparse.Namespace(
        model=spec, checkpoint=None, random_weights=False, use_ema=False, quiet=True
    )
    capfd.readouterr()
    with pytest.warns(UserWarning, match="preprocessor_config"):
        cli._load(args, torch.device("cpu"))
    assert "Loading weights" not in capfd.readouterr().err


def test_quiet_without_transformers_keeps_the_install_hint(monkeypatch):
    from huggingface_hub.utils import are_progress_bars_disabled

    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed
    for quiet in (False, True):
        with pytest.raises(ModelError, match="transformers package is not installed"):
            load_model("hf:some/model", quiet=quiet)
    assert not are_progress_bars_disabled()  # restored after the refusal
