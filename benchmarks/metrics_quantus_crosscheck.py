"""Cross-check captum_vit.metrics against Quantus on the same inputs and settings.

Quantus is needed only for this script; install it beside the project without
touching the project's own environment, e.g.::

    python -m venv --system-site-packages /tmp/qenv
    /tmp/qenv/bin/pip install quantus
    /tmp/qenv/bin/python benchmarks/metrics_quantus_crosscheck.py

Model: a small random-weight CNN on 3x16x16 inputs (Quantus's features are single
input elements, so every element is its own feature here: Captum's default feature
mask). Attributions are continuous random maps, so rankings have no ties (Quantus
sorts with an unstable argsort). Checked:

- deletion (pixel baseline) vs ``PixelFlipping``: the curves point by point and the
  areas (Quantus: trapezoid with dx=1 over the points after each step; recomputed
  here with ``np.trapezoid`` because NumPy 2.4 removed the ``np.trapz`` that Quantus
  0.6.0 calls for its own AUC);
- ``faithfulness_correlation`` vs ``FaithfulnessCorrelation``: exactly, by recording
  Quantus's own subset draws (``subsets=``), and statistically with our own draws;
- ``sensitivity_n`` vs ``FaithfulnessCorrelation(subset_size=n)``, which is Ancona's
  sensitivity-n for one n; Quantus's ``SensitivityN`` implements a different
  estimator (cumulative ordered removal, per-step attribution sums, correlation
  across the batch), reproduced here from our deletion curve to show that the
  underlying perturbations agree;
- ``pointing_game`` vs ``PointingGame`` (masks; random and patch-constant maps);
- ``sparseness(negatives="abs")`` vs ``Sparseness``; ``effective_complexity`` vs
  ``EffectiveComplexity`` (raw maps: Quantus's default normalisation divides by the
  maximum over the whole batch, ours per example).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import torch
import torch.nn as nn

try:
    import quantus
except ImportError:  # pragma: no cover - the script's only extra dependency
    sys.exit(
        "quantus is not installed: see the module docstring for a side environment"
    )

from captum_vit.metrics import (
    deletion,
    effective_complexity,
    faithfulness_correlation,
    insertion_deletion_curves,
    pointing_game,
    sensitivity_n,
    sparseness,
)

warnings.filterwarnings("ignore")
torch.set_num_threads(2)

B, CH, H, W, CLASSES = 6, 3, 16, 16, 5
F = CH * H * W


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CH, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(8 * 16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def row(name: str, ours: np.ndarray, theirs: np.ndarray, note: str = "") -> float:
    diff = float(np.max(np.abs(np.asarray(ours, float) - np.asarray(theirs, float))))
    print(f"  {name:<46s} max |ours - quantus| = {diff:.2e}  {note}")
    return diff


def main() -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, CH, H, W, generator=g)
    a = torch.randn(B, CH, H, W, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    xn, an, yn = x.numpy(), a.numpy(), y.numpy()
    results = {}
    print(f"quantus {quantus.__version__}, torch {torch.__version__}")
    print(f"SmallCNN, {B} inputs of 3x16x16, every element a feature (F = {F})\n")

    # ------------------------------------------------------------ pixel flipping
    print("Deletion vs PixelFlipping (baseline 'black' = per-sample minimum):")
    step = 16
    n_steps = F // step
    black = x.amin(dim=(1, 2, 3), keepdim=True)  # Quantus's 'black' is arr.min()
    for score, softmax in (("probability", True), ("logit", False)):
        curves = insertion_deletion_curves(
            model,
            x,
            a,
            y,
            modes=("deletion",),
            n_steps=n_steps,
            removal=black,
            score=score,
        ).deletion.numpy()
        pf = quantus.PixelFlipping(
            features_in_step=step, perturb_baseline="black", disable_warnings=True
        )
        theirs = np.asarray(
            pf(
                model=model,
                x_batch=xn,
                y_batch=yn,
                a_batch=an,
                device="cpu",
                softmax=softmax,
                channel_first=True,
            )
        )
        results[f"pf_curve_{score}"] = row(
            f"curve points ({score})", curves[:, 1:], theirs
        )
        ours_auc = deletion(model, x, a, y, n_steps=n_steps, removal=black, score=score)
        # ours: trapezoid on [0, 1] over S+1 points; Quantus: trapz(dx=1) over the S
        # points after the first step -> theirs = S * ours - (c0 + c1) / 2
        converted = n_steps * ours_auc.numpy() - (curves[:, 0] + curves[:, 1]) / 2
        results[f"pf_auc_{score}"] = row(
            f"area ({score}, converted)", converted, np.trapezoid(theirs, dx=1, axis=1)
        )

    # --------------------------------------------------- faithfulness correlation
    print("\nFaithfulness correlation vs FaithfulnessCorrelation (logits, 'black'):")
    runs, size = 100, 64
    quantus_fc = quantus.FaithfulnessCorrelation(
        nr_runs=runs,
        subset_size=size,
        perturb_baseline="black",
        disable_warnings=True,
        return_aggregate=False,
    )
    recorded = []  # record Quantus's own draws (per run: one per sample)
    choice = np.random.choice

    def recording_choice(*args, **kwargs):
        out = choice(*args, **kwargs)
        recorded.append(np.asarray(out))
        return out

    np.random.seed(7)
    np.random.choice = recording_choice
    try:
        theirs = np.asarray(
            quantus_fc(
                model=model,
                x_batch=xn,
                y_batch=yn,
                a_batch=an,
                device="cpu",
                channel_first=True,
            )
        )
    finally:
        np.random.choice = choice
    draws = np.stack(recorded).reshape(runs, B, size).transpose(1, 0, 2)
    subsets = torch.zeros(B, runs, F, dtype=torch.bool)
    subsets.scatter_(2, torch.as_tensor(draws), True)
    ours = faithfulness_correlation(
        model, x, a, y, subsets=subsets, removal=black, score="logit"
    ).numpy()
    results["fc_exact"] = row("same subsets (Quantus's recorded draws)", ours, theirs)
    own = faithfulness_correlation(
        model, x, a, y, subset_size=size, n_samples=runs, removal=black, score="logit"
    ).numpy()
    results["fc_stat"] = row(
        "own random subsets (Monte-Carlo)",
        own,
        theirs,
        f"(mean ours {own.mean():+.3f} vs {theirs.mean():+.3f})",
    )

    # -------------------------------------------------------------- sensitivity-n
    print("\nSensitivity-n vs FaithfulnessCorrelation(subset_size=n), 1000 subsets:")
    for n in (16, 128):  # Quantus requires n < H * W
        np.random.seed(11)
        q = quantus.FaithfulnessCorrelation(
            nr_runs=1000,
            subset_size=n,
            perturb_baseline="black",
            disable_warnings=True,
            return_aggregate=False,
        )
        theirs = np.asarray(
            q(
                model=model,
                x_batch=xn,
                y_batch=yn,
                a_batch=an,
                device="cpu",
                channel_first=True,
            )
        )
        ours = sensitivity_n(
            model, x, a, y, n=n, n_samples=1000, removal=black, score="logit"
        ).numpy()
        results[f"sn_{n}"] = row(
            f"n = {n} (Monte-Carlo; sd of a diff ~0.045)",
            ours,
            theirs,
            f"(mean ours {ours.mean():+.3f} vs {theirs.mean():+.3f})",
        )
    print("  Quantus SensitivityN (its own estimator) from our deletion curve:")
    sn_step = 64
    q = quantus.SensitivityN(
        features_in_step=sn_step,
        n_max_percentage=0.8,
        perturb_baseline="black",
        disable_warnings=True,
        return_aggregate=False,
    )
    theirs = np.asarray(
        q(
            model=model,
            x_batch=xn,
            y_batch=yn,
            a_batch=an,
            device="cpu",
            channel_first=True,
            softmax=True,
        )
    )
    curves = insertion_deletion_curves(
        model, x, a, y, modes=("deletion",), n_steps=F // sn_step, removal=black
    ).deletion.numpy()
    order = np.argsort(-an.reshape(B, -1), axis=1)
    flat = an.reshape(B, -1)
    step_sums = np.stack(
        [
            np.take_along_axis(flat, order[:, k * sn_step : (k + 1) * sn_step], 1).sum(
                1
            )
            for k in range(F // sn_step)
        ],
        axis=1,
    )
    deltas = curves[:, :1] - curves[:, 1:]
    keep = int(0.8 * H * W // sn_step)  # Quantus's cut (on H * W, not C * H * W)
    rebuilt = np.array(
        [np.corrcoef(deltas[:, k], step_sums[:, k])[0, 1] for k in range(keep)]
    )
    results["quantus_sn_rebuilt"] = row(
        "rebuilt from our curves", rebuilt, theirs[: len(rebuilt)]
    )

    # -------------------------------------------------------------- pointing game
    print("\nPointing game vs PointingGame (masks):")
    masks = torch.zeros(B, H, W, dtype=torch.bool)
    gm = torch.Generator().manual_seed(3)
    for i in range(B):
        r0, c0 = torch.randint(0, H - 6, (2,), generator=gm).tolist()
        masks[i, r0 : r0 + 6, c0 : c0 + 6] = True
    pg = quantus.PointingGame(disable_warnings=True)
    maps = {
        "random maps": torch.randn(B, 1, H, W, generator=gm),
        "patch-constant maps (ties)": torch.randn(B, 1, 4, 4, generator=gm)
        .repeat_interleave(4, 2)
        .repeat_interleave(4, 3),
    }
    for name, m in maps.items():
        theirs = np.asarray(
            pg(
                model=model,
                x_batch=xn,
                y_batch=yn,
                a_batch=m.numpy(),
                s_batch=masks[:, None].numpy().astype(float),
                device="cpu",
                channel_first=True,
            ),
            dtype=float,
        )
        ours = pointing_game(m, masks=masks).numpy()
        results[f"pg_{name}"] = row(name, ours, theirs, f"(hits {ours.tolist()})")

    # ----------------------------------------------------------------- complexity
    print("\nSparseness vs Sparseness, effective complexity vs EffectiveComplexity:")
    sp = quantus.Sparseness(disable_warnings=True, normalise=False)
    theirs = np.asarray(
        sp(
            model=model,
            x_batch=xn,
            y_batch=yn,
            a_batch=an.copy(),
            device="cpu",
            channel_first=True,
        )
    )
    ours = sparseness(a, negatives="abs").numpy()
    results["sparseness"] = row(
        "Gini of |a| (Quantus adds 1e-7 to every value)", ours, theirs
    )
    # Quantus's default normalise=True divides by the maximum over the whole
    # batch (normalise_by_max without axes); ours normalises per example, so
    # compare on the raw maps.
    ec = quantus.EffectiveComplexity(eps=0.5, normalise=False, disable_warnings=True)
    theirs = np.asarray(
        ec(
            model=model,
            x_batch=xn,
            y_batch=yn,
            a_batch=an.copy(),
            device="cpu",
            channel_first=True,
        )
    )
    ours = effective_complexity(a, eps=0.5).numpy()
    results["effective_complexity"] = row(
        "count |a| > 0.5", ours, theirs, f"(counts {ours[:3].tolist()} ...)"
    )

    exact = [k for k in results if not k.startswith(("fc_stat", "sn_"))]
    worst = max(results[k] for k in exact)
    print(f"\nWorst disagreement on the exact checks: {worst:.2e}")


if __name__ == "__main__":
    main()
