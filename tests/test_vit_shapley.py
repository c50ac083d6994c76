"""ViTShapley: the Captum attributor built on a ShapleyExplainer."""

import pytest
import torch
from captum.attr import Attribution, NoiseTunnel
from helpers import image_size, make_model, model_state

from captum_vit import patch_scores
from captum_vit.attr._vit_shapley import ViTShapley
from captum_vit.shapley import (
    ShapleyExplainer,
    SurrogateGame,
    efficient_normalization,
    shared_state_names,
)
from captum_vit.zoo import DEFAULT_EXPLAINER, DEFAULT_SURROGATE, load_default_explainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(family="cls"):
    surrogate = make_model(family)
    torch.manual_seed(1)
    explainer = ShapleyExplainer.from_surrogate(surrogate).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return surrogate, explainer, x


@pytest.mark.parametrize("family", ["cls", "distilled", "reg_gap"])
def test_attribute_shapes_targets_and_efficiency(family):
    surrogate, explainer, x = _setup(family)
    vs = ViTShapley(explainer)
    assert isinstance(vs, Attribution) and vs.forward_func is surrogate
    phi = vs.shapley_values(x)
    assert phi.shape == (3, 16, 5)
    game = SurrogateGame(surrogate)
    gap = phi.sum(1) - (game.full_value(x) - game.empty_value(x))
    assert gap.abs().max() < 1e-5  # efficiency, every class
    attr = vs.attribute(x, target=[0, 3, 4])
    assert attr.shape == x.shape
    grid = patch_scores(attr, surrogate).reshape(3, 16)
    assert torch.allclose(grid, phi[torch.arange(3), :, torch.tensor([0, 3, 4])])
    pred = surrogate(x).argmax(1)
    default = vs.attribute(x)
    assert torch.allclose(default, vs.attribute(x, target=pred))
    maps = vs.attribute_all_classes(x)
    assert maps.shape == (3, 5, 4, 4)
    assert torch.allclose(maps.reshape(3, 5, 16), phi.transpose(1, 2))
    tup = vs.attribute((x,), target=1)
    assert isinstance(tup, tuple) and torch.allclose(tup[0], vs.attribute(x, target=1))


def test_works_inside_noise_tunnel():
    surrogate, explainer, x = _setup()
    nt = NoiseTunnel(ViTShapley(explainer))
    attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=2, target=1)
    assert attr.shape == x.shape and bool(torch.isfinite(attr).all())


def test_batch_equals_per_sample():
    surrogate, explainer, x = _setup()
    vs = ViTShapley(explainer, surrogate)
    batch = vs.attribute(x, target=2)
    single = torch.cat([vs.attribute(x[i : i + 1], target=2) for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-6)


@pytest.mark.parametrize("shared", [0, 1])
def test_models_unchanged_also_after_errors(shared, monkeypatch):
    surrogate, explainer, x = _setup()
    if shared:
        explainer = ShapleyExplainer.from_surrogate(surrogate, shared_blocks=shared)
    explainer.train()
    surrogate.blocks[1].train()
    s_before, e_before = model_state(surrogate), model_state(explainer)
    vs = ViTShapley(explainer, surrogate)
    vs.attribute(x, target=1)
    vs.attribute_all_classes(x)
    assert model_state(surrogate) == s_before and model_state(explainer) == e_before
    with pytest.raises(ValueError, match="target"):
        vs.attribute(x, target=5)
    with pytest.raises(ValueError, match="target"):
        vs.attribute(x, target=[0, 1])
    with pytest.raises(ValueError, match="inputs"):
        vs.attribute(torch.randn(2, 3, 40, 40))
    assert model_state(surrogate) == s_before and model_state(explainer) == e_before
    # a failure inside the forward passes (eval mode switched on) restores the flags
    assert vs.shares_trunk() == bool(shared)

    def boom(*args, **kwargs):
        raise RuntimeError("forced")

    name = "forward_from_trunk" if shared else "forward"
    monkeypatch.setattr(explainer, name, boom)
    with pytest.raises(RuntimeError, match="forced"):
        vs.attribute(x, target=1)
    monkeypatch.undo()
    assert model_state(surrogate) == s_before and model_state(explainer) == e_before


def test_mismatched_explainer_and_surrogate():
    surrogate, explainer, _ = _setup()
    with pytest.raises(ValueError, match="patches"):
        ViTShapley(explainer, make_model("cls", img_size=24))
    with pytest.raises(ValueError, match="classes"):
        ViTShapley(explainer, make_model("cls", num_classes=3))
    with pytest.raises(TypeError, match="explainer"):
        ViTShapley(surrogate)
    bare = ShapleyExplainer.from_surrogate(surrogate)
    bare.surrogate = None
    with pytest.raises(ValueError, match="surrogate"):
        ViTShapley(bare)
    with pytest.raises(ValueError, match="patches"):
        bare.surrogate = make_model("cls", img_size=24)


def test_explainer_architecture():
    surrogate, explainer, x = _setup()
    # backbone copied from the surrogate (same weights, head removed), not shared
    sd = surrogate.state_dict()
    for k, v in explainer.backbone.state_dict().items():
        assert torch.equal(v, sd[k])
    assert not any(
        p is q for p in explainer.parameters() for q in surrogate.parameters()
    )
    assert isinstance(explainer.attn_block.norm1, torch.nn.Identity)
    dims = [m.out_features for m in explainer.mlp if isinstance(m, torch.nn.Linear)]
    assert dims == [128, 128, 5]  # D -> 4D -> 4D -> C with D = 32
    raw = explainer(x)
    assert raw.shape == (3, 16, 5) and raw.abs().max() < 1
    assert "surrogate" not in dict(explainer.named_modules())


@pytest.mark.skipif(
    not (DEFAULT_EXPLAINER.is_file() and DEFAULT_SURROGATE.is_file()),
    reason="shipped ViT Shapley weights not present",
)
def test_default_explainer_loads_and_is_efficient():
    from captum_vit.zoo import load_default_scenes

    explainer, surrogate = load_default_explainer()
    assert not explainer.training and not surrogate.training
    inputs, _ = load_default_scenes(n=2)
    vs = ViTShapley(explainer)
    assert vs.surrogate is surrogate
    phi = vs.shapley_values(inputs)
    game = SurrogateGame(surrogate)
    gap = phi.sum(1) - (game.full_value(inputs) - game.empty_value(inputs))
    assert gap.abs().max() < 1e-5
    maps = vs.attribute_all_classes(inputs)
    assert maps.shape == (2, explainer.num_classes) + tuple(
        explainer.config["grid_size"]
    )


def _oracle(explainer, surrogate, x):
    """Efficient values from the explainer's own full forward (no sharing)."""
    game = SurrogateGame(surrogate)
    with torch.no_grad():
        raw = explainer(x)
    return efficient_normalization(raw, game.full_value(x), game.empty_value(x))


@pytest.mark.parametrize("family", ["cls", "distilled", "reg_gap", "eva"])
@pytest.mark.parametrize("k", [1, 2])
def test_shared_trunk_equals_separate_forwards(family, k):
    surrogate = make_model(family)
    torch.manual_seed(1)
    explainer = ShapleyExplainer.from_surrogate(surrogate, shared_blocks=k).eval()
    size = image_size(family)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    frozen = set(shared_state_names(explainer.backbone, k))
    assert any(n.startswith(f"blocks.{k - 1}.") for n in frozen)
    assert not any(n.startswith(f"blocks.{k}.") for n in frozen)
    for name, p in explainer.backbone.named_parameters():
        assert p.requires_grad == (name not in frozen)
    vs = ViTShapley(explainer)
    assert vs.shares_trunk()
    phi = vs.shapley_values(x)
    assert torch.allclose(phi, _oracle(explainer, surrogate, x), atol=1e-6)
    # an in-place change of a trunk weight is noticed: each model runs its own trunk
    with torch.no_grad():
        explainer.backbone.blocks[0].mlp.fc2.weight.mul_(20.0)
    assert not vs.shares_trunk()
    changed = vs.shapley_values(x)
    assert torch.allclose(changed, _oracle(explainer, surrogate, x), atol=1e-6)
    assert (changed - phi).abs().max() > 1e-3
    game = SurrogateGame(surrogate)
    gap = changed.sum(1) - (game.full_value(x) - game.empty_value(x))
    assert gap.abs().max() < 1e-5
    # restoring the surrogate's weights (load_state_dict copies in place) is noticed
    sur = surrogate.state_dict()
    explainer.backbone.load_state_dict({n: sur[n] for n in frozen}, strict=False)
    assert vs.shares_trunk()
    assert torch.allclose(vs.shapley_values(x), phi, atol=1e-6)
    # a dtype change (new storage) is noticed too; the round trip is exact
    explainer.double()
    assert not vs.shares_trunk()
    explainer.float()
    assert vs.shares_trunk()


def test_shared_blocks_validated_and_unshared_by_default():
    surrogate, explainer, _ = _setup()
    assert explainer.shared_blocks == 0 and not ViTShapley(explainer).shares_trunk()
    assert all(p.requires_grad for p in explainer.parameters())
    for bad in (-1, 3, 1.5, True):  # the tiny model has 2 blocks
        with pytest.raises(ValueError, match="shared_blocks"):
            ShapleyExplainer.from_surrogate(surrogate, shared_blocks=bad)
    # all blocks shared is allowed: only the final norm and the head part train
    full = ShapleyExplainer.from_surrogate(surrogate, shared_blocks=2)
    assert ViTShapley(full).shares_trunk()


def test_default_explainer_warns_when_the_installed_classifier_is_another(
    tmp_path, monkeypatch
):
    """The shipped surrogate records the digest of the classifier it was fine-tuned
    from: the shipped pair loads silently, a retrained default classifier warns."""
    import warnings

    from captum_vit import zoo

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_default_explainer()
    payload = torch.load(zoo.DEFAULT_WEIGHTS, weights_only=True)
    payload["state_dict"] = dict(payload["state_dict"])
    payload["state_dict"]["head.bias"] = payload["state_dict"]["head.bias"] + 0.01
    torch.save(payload, tmp_path / "retrained.pt")
    monkeypatch.setattr(zoo, "DEFAULT_WEIGHTS", tmp_path / "retrained.pt")
    with pytest.warns(UserWarning, match="other default-model weights"):
        load_default_explainer()


@pytest.mark.skipif(
    not (DEFAULT_EXPLAINER.is_file() and DEFAULT_SURROGATE.is_file()),
    reason="shipped ViT Shapley weights not present",
)
def test_a_retrained_default_of_another_architecture_still_loads(tmp_path, monkeypatch):
    """After the default classifier is retrained with another architecture, the
    shipped pair no longer fits: the model must still load (train-shapley needs it
    to make the new pair), with a warning, and vit-shapley says it is unavailable;
    the direct loader refuses with a line that says to retrain."""
    from captum_vit import zoo
    from captum_vit.methods import METHODS, MethodUnavailable
    from captum_vit.models import load_model

    payload = torch.load(zoo.DEFAULT_WEIGHTS, weights_only=True)
    config = dict(payload["config"], depth=payload["config"]["depth"] - 1)
    torch.save(
        {"config": config, "state_dict": zoo.build_model(config).state_dict()},
        tmp_path / "shallower.pt",
    )
    monkeypatch.setattr(zoo, "DEFAULT_WEIGHTS", tmp_path / "shallower.pt")
    with pytest.raises(ValueError, match="does not fit .* retrain it") as info:
        load_default_explainer()
    assert "\n" not in str(info.value)
    with pytest.warns(UserWarning, match="does not fit"):
        loaded = load_model("default")
    assert len(loaded.model.blocks) == config["depth"] and loaded.extras == {}
    with pytest.raises(MethodUnavailable, match="train-shapley"):
        METHODS["vit-shapley"].build(loaded.model, loaded.extras)
