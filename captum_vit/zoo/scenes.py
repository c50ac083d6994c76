"""Deterministic "Fashion-MNIST scenes": a clothing item on a textured background.

Each scene is an RGB image holding one *main* Fashion-MNIST item (the label) and one
smaller *distractor* item of a different class, drawn beneath the main item with little
overlap, on a smooth colour gradient with faint stripes and noise. Ground-truth boxes
and visible-pixel masks of both items are returned, so explanation methods can be scored
against where the evidence really is.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT licence) items come from the arrays
shipped with this package, the same on every machine:

* the whole test split (:data:`TEST_PATH`, 10 000 items) for ``split="test"``;
* 1000 items of each class of the training split (:data:`TRAIN_SAMPLE_PATH`) for
  ``split="train"``.

Other data are used only when asked for: the ``root`` argument, or the environment
variable ``CAPTUM_VIT_FASHION_MNIST`` (:data:`DATA_ENV`) naming a directory with the
four ``*-idx?-ubyte.gz`` files, or ``debian`` for the Debian
``dataset-fashion-mnist`` package's copy in ``/usr/share/datasets/fashion-mnist/``.

Train scenes use only the training split and test scenes only the test split, so a model
trained on train scenes is evaluated on items it has never seen. Scene ``i`` of
:func:`make_scenes` depends only on the data, the split, the seed and ``i``: the first
100 of 200 scenes are the 100 scenes of ``n=100``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "DATA_ENV",
    "SCENES_VERSION",
    "data_source",
    "DEBIAN_ROOT",
    "SAMPLE_PATH",
    "TEST_PATH",
    "TRAIN_SAMPLE_PATH",
    "Scenes",
    "generate_scenes",
    "load_fashion_mnist",
    "make_scenes",
]

#: Fashion-MNIST class names, indexed by label.
CLASS_NAMES: Tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Where Debian's ``dataset-fashion-mnist`` package installs the idx files (used only
#: when asked for: ``root="debian"`` or ``CAPTUM_VIT_FASHION_MNIST=debian``).
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: Version of the scene generator: 2 draws scene ``i`` from its own generator.
SCENES_VERSION = 2

#: Environment variable naming the Fashion-MNIST data to use instead of the shipped
#: arrays: a directory with the idx files, or ``debian``. Unset, empty or
#: ``shipped``: the shipped arrays.
DATA_ENV = "CAPTUM_VIT_FASHION_MNIST"

_DATA_DIR = Path(__file__).resolve().parent / "data"
#: The whole Fashion-MNIST test split, shipped with the package.
TEST_PATH = _DATA_DIR / "fashion_mnist_test.npz"
#: 1000 training-split items of each class, shipped with the package.
TRAIN_SAMPLE_PATH = _DATA_DIR / "fashion_mnist_train_sample.npz"
#: The shipped test-split data (an older name of :data:`TEST_PATH`).
SAMPLE_PATH = TEST_PATH
_SHIPPED = {"test": TEST_PATH, "train": TRAIN_SAMPLE_PATH}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Size ranges as fractions of the image side: 28-44 px and 14-22 px at 64 px.
_MAIN_SCALE = (28 / 64, 44 / 64)
_DISTRACTOR_SCALE = (14 / 64, 22 / 64)
# A pixel belongs to an item when the item's alpha exceeds this value.
_ALPHA_THRESHOLD = 0.1
# Candidate distractor positions tried per scene, and the largest accepted overlap
# (intersection of the tight boxes over the distractor box area).
_PLACEMENT_CANDIDATES = 24
_MAX_OVERLAP = 0.15
_CHUNK = 512
# alpha = clip(gain * intensity, 0, 1); colour = tint * (shade0 + (1 - shade0) * I).
_ALPHA_GAIN = 1.6
_SHADE0 = 0.35


@dataclass
class Scenes:
    """A batch of generated scenes.

    Attributes:
        images: float32 array (n, 3, S, S) with values in [0, 1].
        labels: int64 array (n,), the main item's class.
        distractor_labels: int64 array (n,), the distractor's class (never the label).
        boxes: int64 array (n, 2, 4), ``[main, distractor]`` boxes as ``x1, y1, x2, y2``
            pixel coordinates (``x1, y1`` inclusive, ``x2, y2`` exclusive), tight around
            the item's visible pixels.
        masks: bool array (n, 2, S, S), the visible pixels of ``[main, distractor]``.
    """

    images: np.ndarray
    labels: np.ndarray
    distractor_labels: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: Union[int, slice, np.ndarray]) -> "Scenes":
        """Select scenes; an int keeps a batch dimension of one."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if index != -1 else None)
        return Scenes(
            images=self.images[index],
            labels=self.labels[index],
            distractor_labels=self.distractor_labels[index],
            boxes=self.boxes[index],
            masks=self.masks[index],
        )


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped idx file into a uint8 array of its stated shape."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims} values, found {arr.size}")
    return arr.reshape(dims)


@lru_cache(maxsize=8)
def _load_cached(source: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    path = Path(source)
    if path.suffix == ".npz":
        with np.load(path) as npz:
            images, labels = npz["images"], npz["labels"]
    else:
        img_name, lbl_name = _IDX_FILES[split]
        images = _read_idx(path / img_name)
        labels = _read_idx(path / lbl_name)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{source}: images must be (N, 28, 28), got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{source}: labels must be ({images.shape[0]},)")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _has_idx(directory: Path, split: str) -> bool:
    return all((directory / name).is_file() for name in _IDX_FILES[split])


def _npz_split(path: Path) -> str:
    """The split an ``.npz`` file holds: its ``split`` entry, else ``"test"``."""
    with np.load(path) as npz:
        return str(npz["split"]) if "split" in npz.files else "test"


def data_source(root: Optional[Union[str, os.PathLike]] = None) -> str:
    """Where :func:`load_fashion_mnist` reads its items from, as a printable string.

    ``"shipped"`` for the package's own arrays, else the path that ``root`` or the
    ``CAPTUM_VIT_FASHION_MNIST`` variable names (``debian`` resolved).
    """
    chosen = _chosen_root(root)
    return "shipped" if chosen is None else str(chosen)


def _chosen_root(root: Optional[Union[str, os.PathLike]]) -> Optional[Path]:
    """``root`` if given, else the environment's choice; None = the shipped arrays."""
    where = "root"
    if root is None:
        root, where = os.environ.get(DATA_ENV, "").strip(), DATA_ENV
        if root in ("", "shipped"):
            return None
    if isinstance(root, str) and root == "debian":
        return DEBIAN_ROOT
    if isinstance(root, str) and root == "shipped":
        return None
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{where} must be a path, 'debian' or 'shipped', got {root!r}")
    return Path(root)


def load_fashion_mnist(
    split: str = "test", root: Optional[Union[str, os.PathLike]] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Load one split of Fashion-MNIST.

    Args:
        split: ``"train"`` or ``"test"``.
        root: a directory holding the idx ``.gz`` files, an ``.npz`` file with
            ``images``/``labels`` (and optionally ``split``; without it the file is
            taken as test-split data), ``"debian"`` for :data:`DEBIAN_ROOT`, or
            ``"shipped"``. When None, the ``CAPTUM_VIT_FASHION_MNIST`` environment
            variable decides in the same way, and unset it means the shipped arrays:
            the whole test split, or 1000 training items of each class.

    Returns:
        ``(images, labels)``: read-only uint8 (N, 28, 28) and int64 (N,) arrays.

    Raises:
        ValueError: ``split`` is not ``"train"``/``"test"``.
        FileNotFoundError: the requested split is not available from the chosen root.

    Examples::

        >>> images, labels = load_fashion_mnist("test")
        >>> images.dtype, images.shape
        (dtype('uint8'), (10000, 28, 28))
    """
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = _chosen_root(root)
    if path is None:
        return _load_cached(str(_SHIPPED[split]), split)
    via = f"root={str(path)!r}" if root is not None else f"{DATA_ENV}={str(path)!r}"
    if path.suffix == ".npz" and path.is_file():
        held = _npz_split(path)
        if held != split:
            raise FileNotFoundError(
                f"{path} holds {held}-split items only; split={split!r} needs a "
                "directory with the Fashion-MNIST idx files (or the shipped data)"
            )
        return _load_cached(str(path), split)
    if path.is_dir() and _has_idx(path, split):
        return _load_cached(str(path), split)
    hint = (
        "; install Debian's 'dataset-fashion-mnist' package"
        if path == DEBIAN_ROOT
        else ""
    )
    raise FileNotFoundError(
        f"no Fashion-MNIST {split} split at {via}: expected a directory with "
        f"{', '.join(_IDX_FILES[split])} or an .npz file{hint}"
    )


def _item_extents(images: np.ndarray) -> np.ndarray:
    """Tight (x1, y1, x2, y2) box of each 28x28 item's pixels above the threshold."""
    on = images > _ALPHA_THRESHOLD * 255 / _ALPHA_GAIN
    cols, rows = on.any(axis=1), on.any(axis=2)
    ext = np.empty((images.shape[0], 4), dtype=np.float64)
    ext[:, 0] = cols.argmax(axis=1)
    ext[:, 1] = rows.argmax(axis=1)
    ext[:, 2] = 28 - cols[:, ::-1].argmax(axis=1)
    ext[:, 3] = 28 - rows[:, ::-1].argmax(axis=1)
    return ext


def _resample_matrix(pos: np.ndarray, size: np.ndarray, side: int) -> np.ndarray:
    """Per-scene (n, side, 28) matrices mapping a 28-px axis onto the canvas.

    An item of ``size`` px starting at canvas pixel ``pos`` is resampled with a
    triangle (tent) filter that widens when shrinking, i.e. antialiased bilinear.
    """
    scale = 28.0 / size.astype(np.float64)  # source px per canvas px
    centres = np.arange(side, dtype=np.float64)[None, :] + 0.5 - pos[:, None]
    u = centres * scale[:, None] - 0.5  # (n, side) in source pixel indices
    radius = np.maximum(scale, 1.0)[:, None, None]
    src = np.arange(28, dtype=np.float64)[None, None, :]
    w = np.clip(1.0 - np.abs(u[:, :, None] - src) / radius, 0.0, None) / radius
    inside = (centres >= 0) & (centres < size[:, None])
    return w * inside[:, :, None]


def _render_items(
    items: np.ndarray, x0: np.ndarray, y0: np.ndarray, size: np.ndarray, side: int
) -> np.ndarray:
    """Place (n, 28, 28) uint8 items on (n, S, S) canvases; intensity in [0, 1]."""
    wy = _resample_matrix(y0, size, side)
    wx = _resample_matrix(x0, size, side)
    src = items.astype(np.float64) / 255.0
    out = wy @ src @ wx.transpose(0, 2, 1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


class _Draws:
    """Random draws made scene by scene, each from that scene's own generator.

    Every method draws one value (or one array of ``shape``) per selected scene and
    stacks them, so what scene ``i`` gets depends only on its own generator, never on
    how many scenes are generated together.
    """

    def __init__(self, rngs: Sequence[np.random.Generator]) -> None:
        self.rngs = list(rngs)

    def _rows(self, rows: Optional[np.ndarray]) -> List[np.random.Generator]:
        return self.rngs if rows is None else [self.rngs[int(r)] for r in rows]

    def random(self, shape: Tuple[int, ...] = (), rows=None) -> np.ndarray:
        gens = self._rows(rows)
        return np.array([g.random(shape) for g in gens]).reshape(len(gens), *shape)

    def uniform(self, low: float, high: float) -> np.ndarray:
        return np.array([g.uniform(low, high) for g in self.rngs])

    def integers(self, low, high, rows=None) -> np.ndarray:
        gens = self._rows(rows)
        n = len(gens)
        low = np.broadcast_to(np.asarray(low, dtype=np.int64), (n,))
        high = np.broadcast_to(np.asarray(high, dtype=np.int64), (n,))
        out = [g.integers(lo, hi) for g, lo, hi in zip(gens, low, high)]
        return np.array(out, dtype=np.int64).reshape(n)

    def standard_normal(self, shape: Tuple[int, ...], dtype=np.float32) -> np.ndarray:
        out = np.empty((len(self.rngs), *shape), dtype=dtype)
        for i, g in enumerate(self.rngs):
            out[i] = g.standard_normal(shape, dtype=dtype)
        return out


def _backgrounds(rng: _Draws, n: int, side: int) -> Tuple[np.ndarray, np.ndarray]:
    """Smooth two-colour gradients with faint stripes and pixel noise.

    Returns (n, 3, S, S) backgrounds and an (n,) bool array, True for light ones.
    """
    light = rng.random() < 0.5
    lo = np.where(light, 0.55, 0.0)[:, None]
    f32 = np.float32
    c0 = (lo + 0.45 * rng.random((3,))).astype(f32)
    c1 = (lo + 0.45 * rng.random((3,))).astype(f32)
    grid = (np.arange(side, dtype=f32) + f32(0.5)) / f32(side)
    gy, gx = grid[:, None], grid[None, :]
    theta = rng.uniform(0, 2 * np.pi).astype(f32)[:, None, None]
    t = f32(0.5) + (gx - f32(0.5)) * np.cos(theta) + (gy - f32(0.5)) * np.sin(theta)
    t = np.clip(t, f32(0.0), f32(1.0))[:, None]
    bg = c0[:, :, None, None] + (c1 - c0)[:, :, None, None] * t
    amp = rng.uniform(0.0, 0.06).astype(f32)[:, None, None]
    freq = rng.uniform(2.0, 8.0).astype(f32)[:, None, None]
    phi = rng.uniform(0, 2 * np.pi).astype(f32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi).astype(f32)[:, None, None]
    wave = f32(2 * np.pi) * freq * (gx * np.cos(phi) + gy * np.sin(phi)) + phase
    bg += (amp * np.sin(wave))[:, None]
    sigma = rng.uniform(0.0, 0.04).astype(f32)[:, None, None, None]
    bg += sigma * rng.standard_normal((3, side, side), dtype=f32)
    return bg, light


def _tints(rng: _Draws, light_bg: np.ndarray) -> np.ndarray:
    """Item colours contrasting with the background: bright on dark, dark on light."""
    bright = 0.35 + 0.65 * rng.random((3,))
    gain = rng.uniform(0.85, 1.0)[:, None]
    bright = bright / bright.max(axis=1, keepdims=True) * gain
    dark = 0.4 * rng.random((3,))
    return np.where(light_bg[:, None], dark, bright).astype(np.float32)


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    """xyxy boxes (x2, y2 exclusive) of (..., S, S) bool masks; empty masks → zeros."""
    side = masks.shape[-1]
    cols, rows = masks.any(axis=-2), masks.any(axis=-1)
    boxes = np.stack(
        [
            cols.argmax(axis=-1),
            rows.argmax(axis=-1),
            side - cols[..., ::-1].argmax(axis=-1),
            side - rows[..., ::-1].argmax(axis=-1),
        ],
        axis=-1,
    ).astype(np.int64)
    boxes[~cols.any(axis=-1)] = 0
    return boxes


def _place_distractors(
    rng: _Draws,
    main_box: np.ndarray,
    ext: np.ndarray,
    size: np.ndarray,
    side: int,
) -> Tuple[np.ndarray, np.ndarray]:
    """Choose distractor positions whose tight box overlaps the main box least."""
    n = size.shape[0]
    k = _PLACEMENT_CANDIDATES
    hi = (side - size + 1)[:, None]
    cx = np.floor(rng.random((k,)) * hi).astype(np.int64)
    cy = np.floor(rng.random((k,)) * hi).astype(np.int64)
    f = (size / 28.0)[:, None]
    bx1, by1 = cx + ext[:, 0:1] * f, cy + ext[:, 1:2] * f
    bx2, by2 = cx + ext[:, 2:3] * f, cy + ext[:, 3:4] * f
    iw = np.minimum(bx2, main_box[:, 2:3]) - np.maximum(bx1, main_box[:, 0:1])
    ih = np.minimum(by2, main_box[:, 3:4]) - np.maximum(by1, main_box[:, 1:2])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = np.maximum((bx2 - bx1) * (by2 - by1), 1e-6)
    overlap = inter / area
    ok = overlap <= _MAX_OVERLAP
    # First acceptable candidate, else the least overlapping one.
    pick = np.where(ok.any(axis=1), ok.argmax(axis=1), overlap.argmin(axis=1))
    rows = np.arange(n)
    return cx[rows, pick], cy[rows, pick]


def _generate_chunk(
    rngs: Sequence[np.random.Generator],
    images: np.ndarray,
    labels: np.ndarray,
    by_class: Tuple[np.ndarray, ...],
    side: int,
) -> Scenes:
    """One scene per generator; scene ``i`` draws only from ``rngs[i]``."""
    rng = _Draws(rngs)
    n = len(rngs)
    idx = rng.integers(0, images.shape[0])
    main_lbl = labels[idx]
    dis_lbl = (main_lbl + rng.integers(1, 10)) % 10
    sizes = np.array([m.size for m in by_class], dtype=np.int64)
    pick = rng.integers(0, sizes[dis_lbl])
    dis_idx = np.array(
        [by_class[c][j] for c, j in zip(dis_lbl, pick)], dtype=np.int64
    ).reshape(n)

    bg, light = _backgrounds(rng, n, side)
    main_tint, dis_tint = _tints(rng, light), _tints(rng, light)

    lo, hi = (int(round(s * side)) for s in _MAIN_SCALE)
    main_size = rng.integers(lo, hi + 1)
    mx = np.floor(rng.random() * (side - main_size + 1)).astype(np.int64)
    my = np.floor(rng.random() * (side - main_size + 1)).astype(np.int64)
    main_int = _render_items(images[idx], mx, my, main_size, side)
    main_alpha = np.clip(np.float32(_ALPHA_GAIN) * main_int, 0.0, 1.0)
    main_mask = main_alpha > _ALPHA_THRESHOLD
    main_box = _tight_boxes(main_mask).astype(np.float64)

    lo, hi = (int(round(s * side)) for s in _DISTRACTOR_SCALE)
    dis_size = rng.integers(lo, hi + 1)
    dis_items = images[dis_idx]
    dx, dy = _place_distractors(rng, main_box, _item_extents(dis_items), dis_size, side)
    dis_int = _render_items(dis_items, dx, dy, dis_size, side)
    dis_alpha = np.clip(np.float32(_ALPHA_GAIN) * dis_int, 0.0, 1.0)
    # Guarantee a visible distractor: re-place the rare fully hidden ones.
    for _ in range(20):
        hidden = ~((dis_alpha > _ALPHA_THRESHOLD) & ~main_mask).any(axis=(1, 2))
        if not hidden.any():
            break
        h = np.flatnonzero(hidden)
        hx = np.floor(rng.random(rows=h) * (side - dis_size[h] + 1)).astype(np.int64)
        hy = np.floor(rng.random(rows=h) * (side - dis_size[h] + 1)).astype(np.int64)
        dx[h], dy[h] = hx, hy
        dis_int[h] = _render_items(dis_items[h], hx, hy, dis_size[h], side)
        dis_alpha[h] = np.clip(np.float32(_ALPHA_GAIN) * dis_int[h], 0.0, 1.0)
    dis_mask = (dis_alpha > _ALPHA_THRESHOLD) & ~main_mask

    img = bg
    for inten, alpha, tint in (
        (dis_int, dis_alpha, dis_tint),
        (main_int, main_alpha, main_tint),
    ):
        shade = np.float32(_SHADE0) + np.float32(1 - _SHADE0) * inten[:, None]
        a = alpha[:, None]
        img = img * (np.float32(1.0) - a) + tint[:, :, None, None] * shade * a
    masks = np.stack([main_mask, dis_mask], axis=1)
    return Scenes(
        images=np.clip(img, 0.0, 1.0).astype(np.float32),
        labels=main_lbl.astype(np.int64),
        distractor_labels=dis_lbl.astype(np.int64),
        boxes=_tight_boxes(masks),
        masks=masks,
    )


def generate_scenes(
    rng: np.random.Generator,
    n: int,
    split: str = "test",
    image_size: int = 64,
    root: Optional[Union[str, os.PathLike]] = None,
) -> Scenes:
    """Generate ``n`` scenes drawing all randomness from ``rng``.

    The streaming form of :func:`make_scenes`: successive calls on one generator give
    fresh scenes (used for on-the-fly training batches).

    Args:
        rng: the numpy random generator to draw from (advanced in place).
        n: number of scenes (>= 0).
        split: Fashion-MNIST split the items come from, ``"train"`` or ``"test"``.
        image_size: side S of the square images (>= 16; 64 and 32 are the usual sizes).
        root: where Fashion-MNIST lives; see :func:`load_fashion_mnist`.

    Returns:
        A :class:`Scenes` batch of length ``n``.

    Examples::

        >>> rng = np.random.default_rng(0)
        >>> batch = generate_scenes(rng, 4, image_size=32)
        >>> batch.images.shape
        (4, 3, 32, 32)
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng)!r}")
    _check_counts(n, image_size)
    seeds = rng.integers(0, 2**63, n, dtype=np.int64)
    return _generate(
        [np.random.default_rng(int(s)) for s in seeds], split, image_size, root
    )


def _generate(
    rngs: List[np.random.Generator],
    split: str,
    image_size: int,
    root: Optional[Union[str, os.PathLike]],
) -> Scenes:
    """One scene per generator, rendered in chunks."""
    images, labels = load_fashion_mnist(split, root)
    by_class = _classes_index(images, labels)
    chunks = [
        _generate_chunk(rngs[i : i + _CHUNK], images, labels, by_class, image_size)
        for i in range(0, max(len(rngs), 1), _CHUNK)
    ]
    if len(chunks) == 1:
        return chunks[0]
    return Scenes(*(np.concatenate([getattr(c, f) for c in chunks]) for f in _FIELDS))


_FIELDS = ("images", "labels", "distractor_labels", "boxes", "masks")


def _classes_index(images: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, ...]:
    by_class = tuple(np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES)))
    missing = [CLASS_NAMES[c] for c, ix in enumerate(by_class) if ix.size == 0]
    if missing:
        raise ValueError(f"Fashion-MNIST data has no items of class(es) {missing}")
    return by_class


def make_scenes(
    n: int,
    split: str = "test",
    seed: int = 0,
    image_size: int = 64,
    root: Optional[Union[str, os.PathLike]] = None,
) -> Scenes:
    """Generate ``n`` reproducible Fashion-MNIST scenes.

    Each scene has a textured background (two-colour gradient, faint stripes, pixel
    noise), one main item scaled to about 0.44-0.69 of the image side at a random
    position fully inside the image, and one smaller distractor (about 0.22-0.34 of the
    side) of a different class, drawn beneath the main item where its tight box overlaps
    the main item's box by at most ~15 % when such a spot exists. Items are tinted to
    contrast with the background (bright on dark or dark on light); alpha follows the
    Fashion-MNIST intensity.

    Args:
        n: number of scenes.
        split: ``"train"`` or ``"test"`` items.
        seed: a non-negative int. Scene ``i`` draws from its own generator,
            ``numpy.random.default_rng([seed, split code, i])``, so it depends only on
            the data, ``split``, ``seed`` and ``i`` (not on ``n``).
        image_size: side S of the square images (64 by default; 32 also works).
        root: where Fashion-MNIST lives; see :func:`load_fashion_mnist` (default: the
            shipped arrays, the same on every machine).

    Returns:
        A :class:`Scenes` with images (n, 3, S, S) float32 in [0, 1], labels,
        distractor labels, boxes (n, 2, 4) and masks (n, 2, S, S).

    Raises:
        FileNotFoundError: the chosen data root lacks ``split``.
        ValueError: a bad ``n``, ``split``, ``seed`` or ``image_size``.

    Examples::

        >>> scenes = make_scenes(8, seed=0)
        >>> scenes.images.shape, scenes.boxes.shape
        ((8, 3, 64, 64), (8, 2, 4))
        >>> bool((scenes.labels != scenes.distractor_labels).all())
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    _check_counts(n, image_size)
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    code = _SPLIT_CODES[split]
    rngs = [np.random.default_rng([int(seed), code, i]) for i in range(n)]
    return _generate(rngs, split, image_size, root)


# Mixed into each scene's seed, so train and test scenes of one seed differ.
_SPLIT_CODES = {"test": 0, "train": 1}


def _check_counts(n: int, image_size: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size < 16
    ):
        raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
