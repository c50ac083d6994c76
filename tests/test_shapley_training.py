"""Surrogate and explainer training: losses, efficiency, checkpoints, model safety."""

import pytest
import torch
from helpers import make_model, model_state
from scipy.special import rel_entr

from captum_vit.shapley import (
    ShapleyExplainer,
    SurrogateGame,
    efficient_normalization,
    exact_shapley,
    explainer_loss,
    load_explainer,
    load_surrogate,
    save_explainer,
    save_surrogate,
    surrogate_loss,
    train_explainer,
    train_surrogate,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n, seed=0, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_explainer_loss_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    b, k, n, c = 3, 4, 6, 5
    phi = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    s = torch.rand(b, k, n, generator=g) < 0.5
    v = torch.rand(b, k, c, generator=g, dtype=torch.float64)
    v0 = torch.rand(c, generator=g, dtype=torch.float64)
    total = 0.0
    for i in range(b):
        for j in range(k):
            for y in range(c):
                pred = float(v0[y]) + sum(
                    float(phi[i, p, y]) for p in range(n) if bool(s[i, j, p])
                )
                total += (pred - float(v[i, j, y])) ** 2
    brute = n * total / (b * k * c)
    assert abs(float(explainer_loss(phi, s, v, v0)) - brute) < 1e-10


def test_surrogate_loss_is_kl():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(4, 5, generator=g), 1)
    p[0] = torch.tensor([1.0, 0, 0, 0, 0])  # zeros in the teacher: 0 log 0 = 0
    logits = torch.randn(4, 5, generator=g)
    q = torch.softmax(logits, 1)
    kl = rel_entr(p.double().numpy(), q.double().numpy()).sum(1).mean()
    assert abs(float(surrogate_loss(p, logits)) - kl) < 1e-5


def test_efficient_normalization_every_class():
    g = torch.Generator().manual_seed(2)
    phi = torch.rand(4, 16, 7, generator=g) * 2 - 1
    v1, v0 = torch.softmax(torch.randn(4, 7, generator=g), 1), torch.rand(
        7, generator=g
    )
    out = efficient_normalization(phi, v1, v0)
    assert (out.sum(1) - (v1 - v0)).abs().max() < 1e-5
    # the shift is the same for every patch
    shift = out - phi
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-6)


@pytest.mark.parametrize("family", ["cls", "distilled", "reg_gap"])
def test_game_modes_agree_and_v0_is_image_independent(family):
    model = make_model(family)
    x = _images(3)
    keep = torch.rand(40, 16, generator=torch.Generator().manual_seed(3)) < 0.4
    keep[:3] = False  # empty coalitions, also a whole chunk of them
    va = SurrogateGame(model, mode="attention")(x[:1], keep)
    vd = SurrogateGame(model, mode="drop", batch_size=7)(x[:1], keep)
    assert torch.allclose(va, vd, atol=1e-5) and bool(torch.isfinite(vd).all())
    game = SurrogateGame(model)
    empty = torch.zeros(3, 16, dtype=torch.bool)
    per_image = game(x, empty)
    assert torch.allclose(per_image, game.empty_value(x).expand(3, -1), atol=1e-6)
    assert torch.allclose(game.full_value(x), model(x).softmax(-1), atol=1e-6)


def test_game_needs_prefix_tokens():
    with pytest.raises(ValueError, match="prefix"):
        SurrogateGame(make_model("reg_gap", reg_tokens=0, class_token=False))


def test_train_surrogate_copy_leaves_classifier_alone():
    model = make_model("cls")
    model.blocks[0].train()  # mixed modes must come back as they were
    before = model_state(model)
    rng = torch.get_rng_state()
    x = _images(12)
    result = train_surrogate(
        model, x[:8], x[8:], epochs=2, batch_size=4, subsets_per_image=2, lr=1e-3
    )
    assert model_state(model) == before
    assert torch.equal(torch.get_rng_state(), rng)
    sur = result.model
    assert sur is not model and not sur.training
    assert all(p.grad is None for p in sur.parameters())
    assert len(result.history["val_loss"]) == 2 and result.history["best_val"] > 0
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(sur.state_dict().values(), model.state_dict().values())
    )
    assert changed


def test_trainers_leave_models_alone_on_error():
    model = make_model("cls")
    x = _images(8)
    bad = x.clone()
    bad[3] = float("nan")
    before = model_state(model)
    # a NaN image ends training with an error (the surrogate's first loss is
    # non-finite) and leaves the models as they were
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_surrogate(model, bad, epochs=1, batch_size=8)
    assert model_state(model) == before
    explainer = ShapleyExplainer.from_surrogate(model)
    exp_before = model_state(explainer)
    # the explainer's masked games go through TokenMask, whose input guard names them
    with pytest.raises(ValueError, match="images: contains NaN"):
        train_explainer(explainer, model, bad, epochs=1, batch_size=8, num_subsets=4)
    assert model_state(model) == before
    assert model_state(explainer) == exp_before
    with pytest.raises(ValueError, match="lr"):
        train_surrogate(model, x, lr=-1.0)
    with pytest.raises(ValueError, match="num_subsets"):
        train_explainer(explainer, model, x, num_subsets=3)
    with pytest.raises(ValueError, match="data"):
        train_surrogate(model, torch.zeros(0, 3, 32, 32))


def test_an_error_in_training_closes_its_progress_bar():
    # the bar is closed on any way out of the loop, not only on Ctrl-C and success
    from tqdm.auto import tqdm

    x = _images(8)
    x[3] = float("nan")
    before = len(tqdm._instances)
    with pytest.raises(FloatingPointError) as info:  # keeps the loop's frame alive
        train_surrogate(
            make_model("cls"), x, epochs=1, batch_size=8, show_progress=True
        )
    assert info.value is not None and len(tqdm._instances) == before


def test_keep_checkpoints_is_checked_as_every_count():
    # one validator for the trainers' counts: keep_checkpoints through check_int
    model = make_model("cls")
    x = _images(8)
    with pytest.raises(ValueError, match="keep_checkpoints: expected an integer >= 0"):
        train_surrogate(model, x, keep_checkpoints=-1)
    with pytest.raises(ValueError, match="keep_checkpoints: expected an integer"):
        train_surrogate(model, x, keep_checkpoints=True)
    with pytest.raises(TypeError, match="keep_checkpoints: expected an integer"):
        train_surrogate(model, x, keep_checkpoints="1")


def test_train_explainer_reduces_loss_and_keeps_efficiency():
    model = make_model("cls")
    x = _images(20, seed=5)
    explainer = ShapleyExplainer.from_surrogate(model)
    before, sur_before = model_state(explainer), model_state(model)
    result = train_explainer(
        explainer,
        model,
        x[:16],
        x[16:],
        epochs=3,
        batch_size=8,
        num_subsets=8,
        lr=1e-3,
        warmup=0.2,
    )
    assert model_state(explainer) == before and model_state(model) == sur_before
    hist = result.history
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    trained = result.model
    assert trained.surrogate is model and not trained.training
    game = SurrogateGame(model)
    phi = trained.shapley_values(x)
    gap = phi.sum(1) - (game.full_value(x) - game.empty_value(x))
    assert gap.abs().max() < 1e-5


class _Interrupt(torch.utils.data.Dataset):
    """Images that raise once ``fail_after`` items have been read (a crash)."""

    def __init__(self, x, fail_after):
        self.x, self.fail_after, self.reads = x, fail_after, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        return self.x[i], 0


def test_checkpoints_resume_exactly(tmp_path):
    model = make_model("cls")
    x = _images(8, seed=6)
    kw = dict(epochs=2, batch_size=4, num_subsets=4, lr=1e-3, seed=1)
    explainer = ShapleyExplainer.from_surrogate(model)
    straight = train_explainer(explainer, model, x, **kw).model
    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 2, after the checkpoint
        train_explainer(explainer, model, _Interrupt(x, 12), checkpoint=ckpt, **kw)
    assert ckpt.is_file()
    resumed = train_explainer(explainer, model, x, checkpoint=ckpt, **kw).model
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="checkpoint"):
        train_explainer(explainer, model, x, checkpoint=ckpt, **{**kw, "lr": 5e-4})
    with pytest.raises(ValueError, match="checkpoint"):
        train_surrogate(model, x, checkpoint=ckpt, epochs=1)


def test_explainer_checkpoint_roundtrip_and_wrong_architecture(tmp_path):
    model = make_model("cls")
    x = _images(2)
    explainer = ShapleyExplainer.from_surrogate(model)
    path = save_explainer(explainer, tmp_path / "e.pt", half=True, metadata={"a": 1})
    payload = torch.load(path, weights_only=True)
    assert payload["state_dict"]["mlp.0.weight"].dtype == torch.float16
    loaded = load_explainer(path, model)
    assert loaded.metadata == {"a": 1} and loaded.surrogate is model
    with torch.no_grad():
        assert torch.allclose(loaded(x), explainer.eval()(x), atol=5e-3)
    save_explainer(explainer, tmp_path / "f.pt")
    assert torch.equal(load_explainer(tmp_path / "f.pt", model)(x), explainer(x))
    with pytest.raises(ValueError, match="checkpoint"):
        load_explainer(path, make_model("cls", embed_dim=64))
    with pytest.raises(ValueError, match="checkpoint"):
        load_explainer(path, make_model("cls", num_classes=3))
    with pytest.raises(ValueError, match="checkpoint"):
        load_surrogate(path, model)  # an explainer file is not a surrogate file
    sp = save_surrogate(model, tmp_path / "s.pt")
    sur = load_surrogate(sp, model)
    assert sur is not model and torch.equal(sur(x), model(x))
    with pytest.raises(ValueError, match="checkpoint"):
        load_surrogate(sp, make_model("cls", depth=3))
    with pytest.raises(ValueError, match="checkpoint"):
        load_explainer(sp, model)
    with pytest.raises(FileNotFoundError):
        load_explainer(tmp_path / "missing.pt", model)


def test_trained_tiny_explainer_tracks_exact_values():
    """A few hundred steps on d=4 patches already give the exact values' ordering."""
    model = make_model("cls", img_size=16)
    x = _images(24, seed=8, size=16)
    explainer = ShapleyExplainer.from_surrogate(model)
    result = train_explainer(
        explainer, model, x, epochs=25, batch_size=8, num_subsets=8, lr=2e-3
    )
    game = SurrogateGame(model)
    phi = result.model.shapley_values(x[:6])
    truth = torch.stack(
        [exact_shapley(game.for_image(x[i]), 4) for i in range(6)]
    ).float()
    err = (phi - truth).pow(2).sum((1, 2)).mean()
    base = (truth - truth.mean(1, keepdim=True)).pow(2).sum((1, 2)).mean()
    assert err < 0.5 * base


def test_shared_trunk_stays_frozen_through_training_and_checkpoints(tmp_path):
    from captum_vit.attr import ViTShapley
    from captum_vit.shapley import shared_state_names

    model = make_model("cls")
    x = _images(12, seed=8)
    explainer = ShapleyExplainer.from_surrogate(model, shared_blocks=1)
    trained = train_explainer(
        explainer, model, x[:8], x[8:], epochs=2, batch_size=4, num_subsets=4, lr=1e-3
    ).model
    own, sur = trained.backbone.state_dict(), model.state_dict()
    frozen = shared_state_names(trained.backbone, 1)
    assert frozen and all(torch.equal(own[n], sur[n]) for n in frozen)
    assert not torch.equal(
        own["blocks.1.attn.qkv.weight"], sur["blocks.1.attn.qkv.weight"]
    )
    path = save_explainer(trained, tmp_path / "e.pt")
    loaded = load_explainer(path, model)
    assert loaded.shared_blocks == 1 and ViTShapley(loaded).shares_trunk()
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
    # a different shared_blocks is a different run: its checkpoint is not reused
    ckpt = tmp_path / "run.pt"
    kw = dict(epochs=1, batch_size=4, num_subsets=4, checkpoint=ckpt)
    train_explainer(explainer, model, x[:8], **kw)
    with pytest.raises(ValueError, match="checkpoint"):
        train_explainer(ShapleyExplainer.from_surrogate(model), model, x[:8], **kw)


class _Augmented(torch.utils.data.Dataset):
    """Images with random noise and a random flip drawn from torch's and Python's
    global generators, as data augmentation does."""

    def __init__(self, x):
        self.x, self.draws = x, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        import random

        x = self.x[i] + 0.1 * torch.randn_like(self.x[i])
        self.draws.append(random.random())  # (in-process reads only)
        return {"image": x.flip(-1) if self.draws[-1] < 0.5 else x, "ok": True}


def test_augmentation_is_seeded_per_example_whatever_the_workers():
    """Every example is read under a seed of its position in the run: the same
    weights with or without DataLoader workers, and the caller's generators are
    left alone."""
    import random

    model = make_model("cls")
    data = _Augmented(_images(6, seed=9))
    kw = dict(epochs=2, batch_size=4, subsets_per_image=2, lr=1e-3, seed=2)
    rng, py = torch.get_rng_state(), random.getstate()
    a = train_surrogate(model, data, **kw).model.state_dict()
    assert torch.equal(torch.get_rng_state(), rng) and random.getstate() == py
    draws, data.draws = data.draws, []
    assert len(set(draws[1:])) == len(draws) - 1  # one seed per example (and probe)
    train_surrogate(model, data, **kw)
    assert data.draws == draws
    b = train_surrogate(model, data, workers=1, **kw).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train_surrogate(model, data, **{**kw, "seed": 3}).model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_run_files_refuse_other_classifiers_and_surrogates(tmp_path):
    model, other = make_model("cls"), make_model("cls", seed=1)
    sur_path = save_surrogate(model, tmp_path / "s.pt", classifier=model)
    with pytest.raises(ValueError, match="fine-tuned from another classifier"):
        load_surrogate(sur_path, other)
    assert load_surrogate(sur_path, other, check_classifier=False) is not other
    explainer = ShapleyExplainer.from_surrogate(model)
    exp_path = save_explainer(explainer, tmp_path / "e.pt", surrogate=model)
    with pytest.raises(ValueError, match="trained on another surrogate"):
        load_explainer(exp_path, other)
    small = make_model("cls", img_size=16)
    with pytest.raises(ValueError, match="2x2 patch grid, the surrogate's is 4x4"):
        load_explainer(
            save_explainer(ShapleyExplainer.from_surrogate(small), tmp_path / "g.pt"),
            model,
        )


def test_checkpoint_fingerprints_are_the_ones_run_folders_hold(tmp_path):
    """Each trainer's fingerprint is the dict its checkpoints have always stored
    (written out here the way the trainers built it before their settings became
    one dataclass), so run folders made before resume: a checkpoint holding it
    returns its weights at once."""
    from pathlib import Path

    model = make_model("cls")
    x = _images(6, seed=4)
    extra = {"model": "tiny", "augment": True, "where": Path("/data")}
    common = dict(epochs=1, batch_size=4, lr=1e-3, seed=2, max_steps=1, save_every=1)
    old = dict(
        epochs=1,
        batch_size=4,
        lr=1e-3,
        weight_decay=0.01,
        warmup=0.05,
        grad_clip=None,
        seed=2,
        max_steps=1,
        save_every=1,
        amp=None,
        num_patches=16,
        model="tiny",
        augment=True,
        where="/data",
    )
    runs = {
        "surrogate": (
            lambda ckpt: train_surrogate(
                model,
                x[:4],
                x[4:],
                subsets_per_image=2,
                mode="drop",
                grad_clip=None,
                checkpoint=ckpt,
                settings=extra,
                workers=0,
                **common,
            ),
            dict(
                old,
                n=4,
                n_val=2,
                subsets_per_image=2,
                mode="drop",
                sampler="UniformSizeSampler(num_players=16)",
            ),
        ),
        "explainer": (
            lambda ckpt: train_explainer(
                ShapleyExplainer.from_surrogate(model),
                model,
                x,
                num_subsets=4,
                grad_clip=None,
                checkpoint=ckpt,
                settings=extra,
                keep_checkpoints=2,
                **common,
            ),
            dict(
                old,
                n=6,
                n_val=0,
                num_subsets=4,
                paired=True,
                num_classes=5,
                shared_blocks=0,
            ),
        ),
    }
    for kind, (train, fingerprint) in runs.items():
        ckpt = tmp_path / f"{kind}.pt"
        trained = train(ckpt).model
        payload = torch.load(ckpt, weights_only=True)
        assert payload["kind"] == kind and payload["fingerprint"] == fingerprint
        payload["fingerprint"] = fingerprint  # as a run before the change wrote it
        torch.save(payload, ckpt)
        again = train(ckpt)
        assert again.history == payload["history"], kind
        a, b = trained.state_dict(), again.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), kind


def test_a_checkpoint_of_other_settings_names_five_of_them(tmp_path):
    """One settings-diff helper writes the checkpoint's and the job records'
    refusals: sorted names, both values (cut to 40 characters), five at most."""
    from captum_vit._jobs import SettingsMismatch, check_settings
    from captum_vit.shapley import _checkpoints

    ckpt = tmp_path / "run.pt"
    then = {"a": 1, "b": None, "c": "x" * 50, "d": 1, "e": 1, "f": 1, "same": 0}
    now = {"a": 2, "b": True, "c": "y", "d": 2, "e": 2, "f": 2, "same": 0}
    _checkpoints.StepCheckpoints(ckpt, "surrogate", then, 1).finish(
        1, 0.0, torch.nn.Linear(1, 1), {}
    )
    with pytest.raises(ValueError) as info:
        _checkpoints.StepCheckpoints(ckpt, "surrogate", now, 1).read()
    assert str(info.value) == (
        f"checkpoint: {ckpt} was written by a run with other settings (a: 1 then, "
        f"2 now; b: None then, True now; c: {'x' * 37}... then, y now; d: 1 then, "
        "2 now; e: 1 then, 2 now; ...); resume with the same settings, or delete "
        "the file to start again"
    )
    with pytest.raises(SettingsMismatch) as info:
        check_settings([{"settings": then}], now, tmp_path)
    assert str(info.value) == (
        f"--out {str(tmp_path)!r} holds records made with other settings (a: 1 "
        f"then, 2 now; b: null then, true now; c: {'x' * 37}... then, y now; d: 1 "
        "then, 2 now; e: 1 then, 2 now; ...); use another --out, or the same "
        "settings to resume"
    )
