"""Build the Fashion-MNIST arrays shipped in ``captum_vit/zoo/data/``.

Run once, on a machine with the full data set (Debian's ``dataset-fashion-mnist``
package installs it in ``/usr/share/datasets/fashion-mnist``)::

    python scripts/make_fashion_mnist_data.py [--root DIR]

It writes

* ``fashion_mnist_test.npz``: the whole test split (10 000 items, t10k order);
* ``fashion_mnist_train_sample.npz``: the first 1000 items of each class of the
  training split, in train order (10 000 items);

each with ``images`` (N, 28, 28) uint8, ``labels`` (N,) uint8, ``indices`` (N,)
int32 (the items' positions in the idx file) and ``split``. The package reads only
these files unless the user asks for another data root, so every machine draws the
same scenes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from captum_vit.zoo import scenes

PER_CLASS_TRAIN = 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(scenes.DEBIAN_ROOT))
    ap.add_argument("--out", default=str(scenes.TEST_PATH.parent))
    args = ap.parse_args()
    root, out = Path(args.root), Path(args.out)
    images, labels = scenes.load_fashion_mnist("test", root=root)
    idx = np.arange(len(labels), dtype=np.int32)
    _save(out / scenes.TEST_PATH.name, images, labels, idx, "test")
    images, labels = scenes.load_fashion_mnist("train", root=root)
    idx = np.sort(
        np.concatenate(
            [np.flatnonzero(labels == c)[:PER_CLASS_TRAIN] for c in range(10)]
        )
    ).astype(np.int32)
    _save(out / scenes.TRAIN_SAMPLE_PATH.name, images[idx], labels[idx], idx, "train")


def _save(path: Path, images, labels, indices, split: str) -> None:
    np.savez_compressed(
        path,
        images=np.asarray(images, dtype=np.uint8),
        labels=np.asarray(labels, dtype=np.uint8),
        indices=indices,
        split=np.array(split),
    )
    print(f"wrote {path} ({len(labels)} items, {path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
