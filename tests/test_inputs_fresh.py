"""Inputs a new user passes first (issue 26): uint8 images to ``TokenMask``, float64
images to a float32 model, channels-last (B, H, W, C) batches. Every method of the
registry, every public attribution class and ``TokenMask`` answer with the package's
one-line message naming the argument and the fix, not torch's raw error."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import make_model
from test_hardening_methods import CLASSES, TARGET, extras_for, images, run_class

from captum_vit import AttentionRollout, GenAtt, TokenMask
from captum_vit._guard import check_dtype, check_layout
from captum_vit.methods import METHODS


def keep_all(b: int = 2, n: int = 16) -> torch.Tensor:
    return torch.ones(b, n, dtype=torch.bool)


def every_call(model: torch.nn.Module):
    """(name, call(x)) for every registry method, public class and TokenMask."""
    extras = extras_for(model)
    target = torch.tensor(TARGET)
    for name in METHODS:
        yield name, lambda x, n=name: METHODS[n].build(model, extras)(x, target)
    for name in sorted(CLASSES):
        yield name, lambda x, n=name: run_class(n, model, x, TARGET)
    yield "TokenMask", lambda x: TokenMask(model)(x, keep_all(x.shape[0]))


# ------------------------------------------------------------ 6. uint8 TokenMask
@pytest.mark.parametrize("mode", ["attention", "drop"])
def test_token_mask_refuses_uint8_images_like_every_method(mode):
    model = make_model("cls")
    x = (images().clamp(-1, 1) * 127 + 128).to(torch.uint8)
    with pytest.raises(TypeError, match="^images: expected floating-point images"):
        TokenMask(model, mode)(x, keep_all())
    # the same guard as the methods: NaN and empty batches too
    bad = images()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="^images: contains NaN"):
        TokenMask(model, mode)(bad, keep_all())
    with pytest.raises(ValueError, match="^images: expected a batch of at least one"):
        TokenMask(model, mode)(images()[:0], keep_all(0))


# --------------------------------------------------- 17. float64 for a float32 model
def test_float64_images_for_a_float32_model_say_how_to_convert():
    model = make_model("cls")
    x = images().double()
    for name, call in every_call(model):
        arg = "images" if name == "TokenMask" else "inputs"
        message = f"^{arg}: float64 images for a float32 model; call \\.float\\(\\)"
        with pytest.raises(TypeError, match=message):
            call(x)


def test_float32_images_for_a_float64_model_say_double():
    model = make_model("cls").double()
    with pytest.raises(TypeError, match=r"^inputs: float32 .* float64 model; .*double"):
        AttentionRollout(model).attribute(images(), target=TARGET)
    # matching dtypes run, in the images' dtype
    out = AttentionRollout(model).attribute(images().double(), target=TARGET)
    assert out.dtype == torch.float64


def test_models_that_cast_their_inputs_and_autocast_are_not_refused():
    # Hugging Face models cast pixel_values to their patch embedding's dtype
    hf = make_model("hf_vit")
    x = images()
    ref = GenAtt(hf).attribute(x, target=TARGET)
    out = GenAtt(hf).attribute(x.double(), target=TARGET)
    torch.testing.assert_close(out.float(), ref, atol=1e-5, rtol=1e-4)
    # autocast reconciles the dtypes per operation
    model = make_model("cls").bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_dtype(x, model)
    with pytest.raises(TypeError, match="float32 images for a bfloat16 model"):
        check_dtype(x, model)
    # mixed-precision models are not guessed at
    mixed = make_model("cls")
    mixed.head.bfloat16()
    check_dtype(x, mixed)
    # ... but the adapter checks the patch embedding, which the images enter first
    with pytest.raises(TypeError, match="^inputs: float64 images for a float32 model"):
        AttentionRollout(mixed).attribute(x.double(), target=TARGET)


# ------------------------------------------------------ 17. channels-last batches
def test_channels_last_batch_gets_the_permute_hint():
    model = make_model("cls")
    x = images().permute(0, 2, 3, 1)  # (2, 32, 32, 3)
    for name, call in every_call(model):
        arg = "images" if name == "TokenMask" else "inputs"
        message = re.escape(
            f"{arg}: expected (B, 3, H, W); got (2, 32, 32, 3), which looks "
            "channels-last: use x.permute(0, 3, 1, 2)"
        )
        with pytest.raises(ValueError, match=f"^{message}$"):
            call(x)
        # the hint's fix works
        call(x.permute(0, 3, 1, 2))


def test_single_images_and_other_channel_counts():
    x = torch.zeros(3, 32, 32)
    with pytest.raises(
        ValueError, match=r"without its batch dimension\? use x\[None\]"
    ):
        check_layout(x, 3)
    with pytest.raises(ValueError, match=r"channels-last image\? use x\.permute\(2"):
        check_layout(x.permute(1, 2, 0), 3)
    with pytest.raises(
        ValueError, match="^inputs: the model expects 3 channels, got 1$"
    ):
        check_layout(torch.zeros(2, 1, 32, 32), 3)
    with pytest.raises(
        ValueError, match="^inputs: the model expects 3 channels, got 1$"
    ):
        AttentionRollout(make_model("cls")).attribute(torch.zeros(2, 1, 32, 32))
    check_layout(torch.zeros(2, 5, 32, 32), None)  # unknown channels: not checked
