"""`zoo.load_default_model()` returns the model itself; its extras live in the zoo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from captum_vit import zoo

TINY = dict(
    image_size=16,
    patch_size=8,
    embed_dim=16,
    depth=1,
    num_heads=2,
    mlp_ratio=2.0,
    num_classes=3,
    class_names=["a", "b", "c"],
)


def test_load_default_model_is_callable_and_gives_logits() -> None:
    model = zoo.load_default_model()
    assert type(model) is VisionTransformer
    assert not model.training
    x = zoo.preprocess(
        torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    )
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 10)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert next(model.parameters()).device == torch.device("cpu")


def test_extras_are_reachable_from_the_zoo() -> None:
    config = zoo.load_default_config()
    assert tuple(config["class_names"]) == zoo.CLASS_NAMES
    assert len(zoo.CLASS_NAMES) == 10
    assert config["image_size"] == 64
    assert "training" in config  # the training record travels with the weights
    config["image_size"] = 0  # a fresh dict each call: no shared state
    assert zoo.load_default_config()["image_size"] == 64
    model = zoo.load_default_model()
    assert tuple(model.pretrained_cfg["mean"]) == zoo.MEAN
    assert model.patch_embed.img_size == (64, 64)
    assert not hasattr(zoo, "DefaultModel")


def test_own_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save({"config": TINY, "state_dict": zoo.build_model(TINY).state_dict()}, path)
    model = zoo.load_default_model(weights=path)
    assert model(torch.zeros(4, 3, 16, 16)).shape == (4, 3)
    assert zoo.load_default_config(weights=path)["class_names"] == ["a", "b", "c"]


def test_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        zoo.load_default_model(weights=missing)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        zoo.load_default_config(weights=missing)
