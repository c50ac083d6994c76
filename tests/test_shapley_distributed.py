"""ViT Shapley training under ``torchrun``: one DDP step equals one single-process step,
and a run killed after a step checkpoint resumes exactly with another number of
processes.

One ``torchrun --standalone --nproc_per_node=2`` launch (gloo, one thread each,
bounded) runs, on tiny random-weight timm ViTs:

- one surrogate step (tensor images, two forward chunks per rank) and one explainer
  step (a dataset read through the DataLoader, two micro-batches per rank, on a
  register/avg-pool ViT whose unused ``fc_norm`` DDP must be told about);
- a 4-step explainer run that dies right after its step-2 checkpoint.

The test process computes the single-process references and resumes the killed run
in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_model

from captum_vit.shapley import ShapleyExplainer, train_explainer, train_surrogate

ROOT = Path(__file__).resolve().parents[1]
BATCH = 5  # uneven shares: 3 and 2 images

SURROGATE = dict(
    epochs=1,
    batch_size=BATCH,
    subsets_per_image=2,
    lr=1e-3,
    max_steps=1,
    forward_batch_size=3,
    seed=3,
)
EXPLAINER = dict(
    epochs=1, batch_size=BATCH, num_subsets=4, lr=1e-3, max_steps=1, seed=4
)
RESUMED = dict(
    epochs=3, batch_size=BATCH, num_subsets=4, lr=1e-3, save_every=2, max_steps=4
)

WORKER = """
import os, sys
import torch
from captum_vit.distributed import init_distributed
from captum_vit.shapley import train_explainer, train_surrogate
from captum_vit.shapley import _checkpoints

d = sys.argv[1]
kw = torch.load(os.path.join(d, "kwargs.pt"))
m = torch.load(os.path.join(d, "models.pt"), weights_only=False)
ctx = init_distributed("cpu")
sur = train_surrogate(m["cls"], m["x"], ctx=ctx, **kw["surrogate"])
exp = train_explainer(
    m["explainer"], m["gap"], m["items"], ctx=ctx, micro_batch_size=1,
    **kw["explainer"]
)
if ctx.is_main:
    torch.save(
        {
            "surrogate": sur.model.state_dict(),
            "explainer": exp.model.state_dict(),
            "surrogate_loss": sur.history["train_loss"][0],
            "explainer_loss": exp.history["train_loss"][0],
        },
        os.path.join(d, "ddp.pt"),
    )
save = _checkpoints.save


def save_then_die(path, payload):
    save(path, payload)
    os._exit(17)  # killed right after the step-2 checkpoint


_checkpoints.save = save_then_die
train_explainer(m["explainer"], m["gap"], m["items"], ctx=ctx,
                checkpoint=os.path.join(d, "run.pt"), **kw["resumed"])
"""


def _models():
    cls = make_model("cls")
    gap = make_model("reg_gap")
    torch.manual_seed(5)
    explainer = ShapleyExplainer.from_surrogate(gap)
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    return {
        "cls": cls,
        "gap": gap,
        "explainer": explainer,
        "x": x,
        "items": [(x[i], 0) for i in range(len(x))],
    }


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    d = tmp_path_factory.mktemp("shapley_ddp")
    models = _models()
    torch.save(models, d / "models.pt")
    torch.save(
        {"surrogate": SURROGATE, "explainer": EXPLAINER, "resumed": RESUMED},
        d / "kwargs.pt",
    )
    (d / "worker.py").write_text(WORKER)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CAPTUM_VIT_DIST_TIMEOUT="60",
        MASTER_ADDR="127.0.0.1",
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(d / "worker.py"),
            str(d),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    return d, models, res


def _assert_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), k


def test_one_ddp_step_equals_one_single_process_step(launched):
    d, m, res = launched
    assert (d / "ddp.pt").is_file(), res.stderr[-3000:]
    ddp = torch.load(d / "ddp.pt")
    sur = train_surrogate(m["cls"], m["x"], **SURROGATE)
    _assert_close(ddp["surrogate"], sur.model.state_dict())
    exp = train_explainer(m["explainer"], m["gap"], m["items"], **EXPLAINER)
    _assert_close(ddp["explainer"], exp.model.state_dict())
    # the global batch's mean loss, whatever the split
    for stage, result in (("surrogate", sur), ("explainer", exp)):
        assert abs(ddp[stage + "_loss"] - result.history["train_loss"][0]) < 1e-6
    exp = exp.model
    # the step moved the weights (the comparison is not between two copies)
    moved = (
        exp.state_dict()["mlp.0.weight"] - m["explainer"].state_dict()["mlp.0.weight"]
    )
    assert moved.abs().max() > 1e-4
    # the same step with micro-batches of one image in one process
    micro = train_explainer(
        m["explainer"], m["gap"], m["items"], micro_batch_size=1, **EXPLAINER
    ).model
    _assert_close(micro.state_dict(), exp.state_dict())


def test_killed_two_process_run_resumes_in_one_process(launched):
    d, m, res = launched
    assert res.returncode != 0  # the killed rank ends the launch
    payload = torch.load(d / "run.pt")
    assert payload["step"] == 2 and payload["history"]["world_sizes"] == [2]
    resumed = train_explainer(
        m["explainer"], m["gap"], m["items"], checkpoint=d / "run.pt", **RESUMED
    )
    straight = train_explainer(m["explainer"], m["gap"], m["items"], **RESUMED)
    _assert_close(resumed.model.state_dict(), straight.model.state_dict())
    assert resumed.history["world_sizes"] == [2, 1]
    assert resumed.history["step"] == straight.history["step"] == [2, 4]
    for a, b in zip(resumed.history["train_loss"], straight.history["train_loss"]):
        assert abs(a - b) < 1e-6
