"""Images for dataset-scale jobs: reading files, the model's preprocessing, sources.

Every command that works on many images (``captum-vit evaluate``, ``captum-vit explain
--data``, and training jobs built on them) gets its images from here:

- :func:`read_image` reads any image file PIL opens into 8-bit RGB, handling every mode
  and bit depth (16-bit and 32-bit integer images are rescaled, not clipped; alpha is
  composited over white) or refusing it with a one-line :class:`DataError`;
- :class:`Preprocessing` is the model's own input pipeline (timm's
  ``resolve_data_config`` + ``create_transform`` for timm models, the zoo's preprocess
  for the embedded default, the image processor or weights transforms for Hugging Face
  and torchvision). It maps annotation masks and boxes through the same resize and
  crop as the image, and builds training transforms that extend the eval one;
- :class:`ImageDataset` reads an ImageFolder tree (class index = sorted folder order,
  or a ``{folder: index}`` class map) or a flat folder with a ``file,label`` CSV, with
  optional boxes (CSV ``file,x0,y0,x1,y1``, several rows per file) or masks (a folder of
  PNGs with the images' stems); :class:`SceneDataset` serves the embedded
  Fashion-MNIST scenes the same way;
- :func:`make_loader` (from :mod:`captum_vit._loader`, shared with the ViT Shapley
  trainers) feeds fixed batches of indices (the resumable chunks) through a
  ``torch.utils.data.DataLoader`` with workers and pinned memory.

An unreadable or corrupt image never stops a run: its item comes back with
``ok=False`` and the reason, and the job records it as skipped.

Examples::

    >>> from captum_vit.models import load_model
    >>> from captum_vit.data import ImageDataset, make_loader
    >>> loaded = load_model("default")
    >>> data = ImageDataset.from_folder("my_images/", loaded.preprocessing)
    >>> loader = make_loader(data, [[0, 1], [2, 3]], workers=2)
    >>> batch = next(iter(loader))
    >>> batch["image"].shape, batch["label"]
    (torch.Size([2, 3, 64, 64]), tensor([0, 0]))
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ._loader import make_loader  # noqa: F401  (re-exported: the documented path)

#: File suffixes read as images (case-insensitive).
IMAGE_EXTENSIONS = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pbm",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)

PathLike = Union[str, Path]
Box = Tuple[float, float, float, float]


class DataError(ValueError):
    """A problem with the user's images or annotations, stated in one line."""


# --------------------------------------------------------------------------- files
_MULTI_CHANNEL = ("RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "1", "L", "P")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _white_composite(im):
    """Alpha-composite an image with transparency over white, return 8-bit RGB."""
    from PIL import Image

    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _array_to_l(values: np.ndarray, scale: float):
    """An 8-bit grey PIL image from ``values / scale`` in [0, 1] (rounded)."""
    from PIL import Image

    v = np.clip(np.round(values.astype(np.float64) * (255.0 / scale)), 0, 255)
    return Image.fromarray(v.astype(np.uint8), mode="L")


def to_rgb(im, name: str = "image"):
    """Convert a PIL image of any mode and bit depth to 8-bit RGB, or refuse it.

    - ``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's own
      conversion (palette images with a transparent index are treated as below);
    - ``LA``, ``RGBA``, ``PA`` and any image with a ``transparency`` entry: composited
      over a white background (fully opaque pixels keep their colour);
    - ``I;16`` (and ``I;16B``/``I;16L``/``I;16N``, 16-bit greyscale): rescaled from
      [0, 65535] to [0, 255] (``v / 257``, rounded), not clipped;
    - ``I`` (32-bit integer): read as 16-bit greyscale when every value lies in
      [0, 65535]; otherwise refused, since its range is unknown;
    - ``F`` (32-bit float): values must lie in [0, 1] (scaled by 255); otherwise
      refused.

    Args:
        im: A PIL image (the first frame is used for multi-frame files).
        name: How the image is named in error messages.

    Returns:
        An 8-bit ``RGB`` PIL image of the same size.

    Raises:
        DataError: a mode that cannot be read faithfully (the message says why).

    Examples::

        >>> from PIL import Image
        >>> import numpy as np
        >>> im = Image.fromarray(np.array([[65535]], dtype=np.uint16))  # I;16
        >>> to_rgb(im).getpixel((0, 0))
        (255, 255, 255)
    """
    mode = im.mode
    if mode.startswith("I;16"):
        return _array_to_l(np.asarray(im), 65535.0).convert("RGB")
    if mode == "I":
        v = np.asarray(im)
        if v.size and (int(v.min()) < 0 or int(v.max()) > 65535):
            raise DataError(
                f"{name}: 32-bit integer image with values in [{int(v.min())}, "
                f"{int(v.max())}], outside the 16-bit range; save it as 8- or 16-bit"
            )
        return _array_to_l(v, 65535.0).convert("RGB")
    if mode == "F":
        v = np.asarray(im)
        if v.size and (
            not np.isfinite(v).all() or float(v.min()) < 0 or float(v.max()) > 1
        ):
            raise DataError(
                f"{name}: float image with values outside [0, 1] (min "
                f"{float(np.nanmin(v)):.4g}, max {float(np.nanmax(v)):.4g}); scale it "
                "to [0, 1] or save it as 8- or 16-bit"
            )
        return _array_to_l(v, 1.0).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        return _white_composite(im)
    if mode in _MULTI_CHANNEL:
        return im.convert("RGB")
    raise DataError(
        f"{name}: PIL image mode {mode!r} is not supported (supported: 1, L, LA, P, "
        "RGB, RGBA, CMYK, YCbCr, LAB, HSV, I;16, I, F)"
    )


def read_image(path: PathLike):
    """Read an image file as an 8-bit RGB PIL image (see :func:`to_rgb` for modes).

    Args:
        path: The image file.

    Returns:
        A loaded ``RGB`` PIL image (the first frame of multi-frame files).

    Raises:
        DataError: the file is missing, unreadable, corrupt or of an unsupported mode;
            the message names the file.

    Examples::

        >>> read_image("photo.png").mode
        'RGB'
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            return to_rgb(im, name=str(p))
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read image {str(p)!r}: {reason}") from exc


# --------------------------------------------------------------------- preprocessing
def _is_to_tensor(op: Any) -> bool:
    return type(op).__name__ in ("ToTensor", "MaybeToTensor", "PILToTensor")


def _mask_op(op: Any) -> Any:
    """A copy of a geometric transform that resizes masks by nearest neighbour."""
    from torchvision.transforms import InterpolationMode

    known = ("Resize", "CenterCrop", "ResizeKeepRatio", "CenterCropOrPad", "TrimBorder")
    if type(op).__name__ not in known:
        raise DataError(
            f"cannot map boxes or masks through the model's transform step "
            f"{type(op).__name__} (supported: {', '.join(known)})"
        )
    out = copy.copy(op)
    if hasattr(out, "interpolation"):
        out.interpolation = InterpolationMode.NEAREST_EXACT
    if hasattr(out, "fill"):
        out.fill = 0
    return out


class _ZooNormalise:
    """The embedded default model's own preprocess, as a transform step."""

    def __call__(self, image: Tensor) -> Tensor:
        from .zoo import preprocess

        return preprocess(image)

    def __repr__(self) -> str:
        return "captum_vit.zoo.preprocess()"


class Preprocessing:
    """A model's input pipeline: image file → normalised model input.

    Build it with :meth:`for_timm`, :meth:`for_default` or :meth:`resize_crop`
    (:func:`captum_vit.models.load_model` picks the right one). The transform takes a
    PIL image (or a float (3, H, W) tensor in [0, 1]) and returns the normalised
    (3, H, W) float tensor the model expects.

    Args:
        transform: A ``torchvision.transforms.Compose``: geometric steps (resize,
            crop), then a to-tensor step, then normalisation.
        input_size: (H, W) of the model input.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        interpolation: Interpolation name of the resize (for training transforms).
        timm_config: The timm data config the transform was made from, if any.

    Examples::

        >>> pre = Preprocessing.for_timm(timm.create_model("test_vit"))
        >>> pre.input_size
        (160, 160)
        >>> x = pre(read_image("photo.jpg"))            # (3, 160, 160)
    """

    def __init__(
        self,
        transform: Any,
        input_size: Tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bilinear",
        timm_config: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.transform = transform
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation
        self.timm_config = dict(timm_config) if timm_config else None
        steps = list(getattr(transform, "transforms", [transform]))
        cut = next((i for i, op in enumerate(steps) if _is_to_tensor(op)), None)
        if cut is None:
            raise ValueError(
                "transform: expected a Compose with a ToTensor/MaybeToTensor step"
            )
        self._geometry = steps[:cut]

    # ------------------------------------------------------------------ builders
    @classmethod
    def for_timm(cls, model: torch.nn.Module) -> "Preprocessing":
        """timm's eval transform for ``model`` (``resolve_data_config`` +
        ``create_transform``)."""
        from timm.data import create_transform, resolve_data_config

        cfg = resolve_data_config(model=model)
        transform = create_transform(**cfg, is_training=False)
        _, h, w = cfg["input_size"]
        return cls(
            transform, (h, w), cfg["mean"], cfg["std"], cfg["interpolation"], cfg
        )

    @classmethod
    def for_default(cls, size: Tuple[int, int] = (64, 64)) -> "Preprocessing":
        """The embedded default model: resize to ``size`` (bilinear), then the zoo's
        :func:`captum_vit.zoo.preprocess` (mean = std = 0.5)."""
        from timm.data.transforms import MaybeToTensor
        from torchvision import transforms as T

        from .zoo import MEAN, STD

        transform = T.Compose(
            [
                T.Resize(size, interpolation=T.InterpolationMode.BILINEAR),
                T.CenterCrop(size),
                MaybeToTensor(),
                _ZooNormalise(),
            ]
        )
        return cls(transform, size, MEAN, STD, "bilinear")

    @classmethod
    def resize_crop(
        cls,
        resize: Union[int, Tuple[int, int]],
        crop: Tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bilinear",
    ) -> "Preprocessing":
        """Resize (an int: the shorter side; a pair: both sides), centre-crop to
        ``crop`` and normalise, as torchvision's weights transforms and Hugging Face
        image processors do."""
        from timm.data.transforms import MaybeToTensor, str_to_interp_mode
        from torchvision import transforms as T

        size = resize if isinstance(resize, int) else tuple(int(s) for s in resize)
        transform = T.Compose(
            [
                T.Resize(size, interpolation=str_to_interp_mode(interpolation)),
                T.CenterCrop(tuple(crop)),
                MaybeToTensor(),
                T.Normalize(mean, std),
            ]
        )
        return cls(transform, tuple(crop), mean, std, interpolation)

    # ------------------------------------------------------------------ use
    def __call__(self, image: Any) -> Tensor:
        """Preprocess a PIL image or a float (3, H, W) tensor in [0, 1]."""
        return self.transform(image)

    def describe(self) -> str:
        """A one-line description (stored with the records of a run)."""
        return " ".join(repr(self.transform).split())

    def __repr__(self) -> str:
        return f"Preprocessing({self.describe()})"

    def train_transform(self, **augment: Any) -> Callable:
        """A training transform at this model's size, mean, std and interpolation.

        Args:
            **augment: Keyword arguments of ``timm.data.create_transform`` with
                ``is_training=True`` (``scale``, ``hflip``, ``vflip``,
                ``color_jitter``, ``auto_augment``, ...).

        Returns:
            A ``torchvision.transforms.Compose`` producing normalised tensors.

        Examples::

            >>> t = pre.train_transform(hflip=0.5, vflip=0.5, color_jitter=0.4)
        """
        from timm.data import create_transform

        kw = dict(
            input_size=(3,) + self.input_size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )
        kw.update(augment)
        return create_transform(is_training=True, **kw)

    def normalise(self, images01: Tensor) -> Tensor:
        """``(images - mean) / std`` for (B, 3, H, W) images in [0, 1]."""
        m = torch.tensor(self.mean, dtype=images01.dtype, device=images01.device)
        s = torch.tensor(self.std, dtype=images01.dtype, device=images01.device)
        return (images01 - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)

    def denormalise(self, inputs: Tensor) -> Tensor:
        """Model inputs back to [0, 1] images (for pictures)."""
        m = torch.tensor(self.mean, dtype=inputs.dtype, device=inputs.device)
        s = torch.tensor(self.std, dtype=inputs.dtype, device=inputs.device)
        return (inputs * s.view(1, -1, 1, 1) + m.view(1, -1, 1, 1)).clamp(0, 1)

    def map_mask(self, mask: Tensor) -> Tensor:
        """Send an (H0, W0) mask of the original image through the same geometric
        steps as the image (nearest-neighbour resizing, zero padding).

        Args:
            mask: (H0, W0) bool or integer tensor at the original image's size.

        Returns:
            (H, W) bool tensor at the model's input size.

        Raises:
            DataError: the transform has a step that cannot be applied to masks.
        """
        m = mask.to(torch.uint8)[None]
        for op in self._geometry:
            m = _mask_op(op)(m)
        if tuple(m.shape[-2:]) != self.input_size:
            raise DataError(
                f"mask: the transform made a {tuple(m.shape[-2:])} mask for a "
                f"{self.input_size} input"
            )
        return m[0] > 0

    def check_annotations(self) -> None:
        """Raise :class:`DataError` if boxes or masks cannot follow this transform."""
        for op in self._geometry:
            _mask_op(op)


def boxes_to_mask(boxes: Sequence[Box], size: Tuple[int, int]) -> Tensor:
    """Union of boxes as an (H, W) bool mask: a pixel is inside when its centre is
    (``x0 <= x + 0.5 <= x1``, so integer boxes with exclusive ``x1, y1`` cover the
    pixels ``x0 .. x1 - 1``, as :func:`captum_vit.metrics.pointing_game` counts).

    Args:
        boxes: ``(x0, y0, x1, y1)`` boxes in pixels of the image.
        size: (H, W) of the image.

    Returns:
        (H, W) bool tensor (all False without boxes).
    """
    h, w = size
    rc = torch.arange(h, dtype=torch.float64) + 0.5
    cc = torch.arange(w, dtype=torch.float64) + 0.5
    out = torch.zeros(h, w, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        out |= ((rc >= y0) & (rc <= y1))[:, None] & ((cc >= x0) & (cc <= x1))[None]
    return out


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class ImageEntry:
    """One image of a dataset.

    Attributes:
        key: Path relative to the data root, with ``/`` separators (stable across
            machines; records and outputs are keyed by it).
        path: The file.
        label: Class index, or -1 when the source has no labels.
    """

    key: str
    path: Path
    label: int = -1


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name[0] == "."


def _images_under(root: Path) -> List[Path]:
    return sorted(
        (p for p in root.rglob("*") if _is_image(p)),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def _key(root: Path, p: Path) -> str:
    return p.relative_to(root).as_posix()


def _csv_rows(path: Path, what: str, columns: Sequence[str]) -> List[List[str]]:
    """Rows of a CSV file, without its header line (detected by its first column
    name), each with at least ``len(columns)`` cells."""
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r}: no such file")
    try:
        with path.open(newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{what} {str(path)!r}: cannot read it ({exc})") from exc
    if rows and rows[0][0].strip().lower() in (columns[0], "filename", "path"):
        rows = rows[1:]
    for i, r in enumerate(rows):
        if len(r) < len(columns):
            raise DataError(
                f"{what} {str(path)!r}: row {i + 1} has {len(r)} columns, expected "
                f"{','.join(columns)}"
            )
    return [[c.strip() for c in r] for r in rows]


def _resolve_names(
    names: Sequence[str], entries: Sequence[ImageEntry], what: str, path: Path
) -> List[str]:
    """Map file names of an annotation file to dataset keys (a relative path, or a
    bare file name when it is unique); one-line error naming the unknown ones."""
    by_key = {e.key: e.key for e in entries}
    by_name: Dict[str, List[str]] = {}
    for e in entries:
        by_name.setdefault(Path(e.key).name, []).append(e.key)
    out, unknown = [], []
    for n in names:
        k = Path(n).as_posix()
        if k in by_key:
            out.append(k)
        elif len(by_name.get(k, [])) == 1:
            out.append(by_name[k][0])
        else:
            unknown.append(n)
            out.append("")
    if unknown:
        uniq = sorted(set(unknown))
        raise DataError(
            f"{what} {str(path)!r}: {len(uniq)} file name(s) match no image of the "
            f"data (or several): {', '.join(uniq[:5])}"
            + (" ..." if len(uniq) > 5 else "")
        )
    return out


def read_class_map(path: PathLike) -> Dict[str, int]:
    """Read a ``{folder: class index}`` JSON file.

    Raises:
        DataError: missing file, invalid JSON, or values that are not integers >= 0.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--class-map {str(p)!r}: no such file")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"--class-map {str(p)!r}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in data.values()
    ):
        raise DataError(
            f"--class-map {str(p)!r}: expected a JSON object {{folder: class index "
            "(int >= 0)}}"
        )
    return {str(k): int(v) for k, v in data.items()}


def image_folder_classes(
    root: PathLike, class_map: Optional[PathLike] = None
) -> List[str]:
    """Class names of an ImageFolder tree, by class index: its folder names (in the
    ``--class-map`` order when given), ``_`` read as a space, e.g. the classes of a
    zero-shot model on the tree.

    Raises:
        DataError: as :func:`image_folder_entries`; a class index of the map that no
            folder of the tree has.
    """
    cmap = read_class_map(class_map) if class_map is not None else None
    entries = image_folder_entries(root, cmap)
    names: Dict[int, str] = {}
    for e in entries:
        names.setdefault(e.label, Path(e.key).parts[0])
    missing = [i for i in range(max(names) + 1) if i not in names]
    if missing:
        raise DataError(
            f"--class-map: class index {missing[0]} has no folder in --data, so it "
            "has no name to make a prompt of"
        )
    return [names[i].replace("_", " ") for i in range(len(names))]


def image_folder_entries(
    root: PathLike, class_map: Optional[Dict[str, int]] = None
) -> List[ImageEntry]:
    """An ImageFolder tree: one sub-folder per class.

    Args:
        root: The folder; images in nested folders below a class folder count for
            that class; files directly in ``root`` are ignored.
        class_map: ``{folder: class index}``; default: sorted folder order.

    Returns:
        Entries sorted by key.

    Raises:
        DataError: no class folder with images, or folders missing from the map.
    """
    root = Path(root)
    classes = sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    classes = [c for c in classes if _images_under(root / c)]
    if not classes:
        raise DataError(f"--data {str(root)!r}: no class folder with images")
    if class_map is None:
        index = {c: i for i, c in enumerate(classes)}
    else:
        missing = [c for c in classes if c not in class_map]
        if missing:
            raise DataError(
                f"--class-map: {len(missing)} folder(s) of --data are not in the map: "
                f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
            )
        index = class_map
    return [
        ImageEntry(_key(root, p), p, index[c])
        for c in classes
        for p in _images_under(root / c)
    ]


def flat_entries(root: PathLike, labels: Optional[PathLike] = None) -> List[ImageEntry]:
    """Every image under ``root``, with labels from a ``file,label`` CSV if given.

    Raises:
        DataError: no images; a label that is not an integer >= 0; a CSV row naming
            no image; an image without a label row.
    """
    root = Path(root)
    files = _images_under(root)
    if not files:
        raise DataError(
            f"--data {str(root)!r}: no images found (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    entries = [ImageEntry(_key(root, p), p) for p in files]
    if labels is None:
        return entries
    lp = Path(labels)
    rows = _csv_rows(lp, "--labels", ("file", "label"))
    keys = _resolve_names([r[0] for r in rows], entries, "--labels", lp)
    by_key: Dict[str, int] = {}
    for k, r in zip(keys, rows):
        try:
            lab = int(r[1])
        except ValueError:
            raise DataError(
                f"--labels {str(lp)!r}: label {r[1]!r} of {r[0]!r} is not a class "
                "index"
            ) from None
        if lab < 0:
            raise DataError(f"--labels {str(lp)!r}: negative label {lab} for {r[0]!r}")
        by_key[k] = lab
    unlabelled = [e.key for e in entries if e.key not in by_key]
    if unlabelled:
        raise DataError(
            f"--labels {str(lp)!r}: {len(unlabelled)} image(s) of --data have no "
            f"label: {', '.join(unlabelled[:5])}"
            + (" ..." if len(unlabelled) > 5 else "")
        )
    return [ImageEntry(e.key, e.path, by_key[e.key]) for e in entries]


def read_boxes(path: PathLike, entries: Sequence[ImageEntry]) -> Dict[str, List[Box]]:
    """Read a boxes CSV (``file,x0,y0,x1,y1``, pixels of the original image, several
    rows per file allowed).

    Raises:
        DataError: a row naming no image of ``entries``, non-numeric or empty boxes.
    """
    p = Path(path)
    rows = _csv_rows(p, "--boxes", ("file", "x0", "y0", "x1", "y1"))
    keys = _resolve_names([r[0] for r in rows], entries, "--boxes", p)
    out: Dict[str, List[Box]] = {}
    for i, (k, r) in enumerate(zip(keys, rows)):
        try:
            x0, y0, x1, y1 = (float(v) for v in r[1:5])
        except ValueError:
            raise DataError(
                f"--boxes {str(p)!r}: row {i + 1} has non-numeric coordinates {r[1:5]}"
            ) from None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise DataError(f"--boxes {str(p)!r}: row {i + 1} is not finite")
        if x1 <= x0 or y1 <= y0:
            raise DataError(
                f"--boxes {str(p)!r}: row {i + 1} ({r[0]}) is empty: expected x1 > x0 "
                "and y1 > y0"
            )
        out.setdefault(k, []).append((x0, y0, x1, y1))
    return out


# --------------------------------------------------------------------------- datasets
class ItemDataset(torch.utils.data.Dataset):
    """Base of the data sources: items are dicts (see :class:`ImageDataset`)."""

    #: Whether items carry a ground-truth mask (boxes or masks) for localisation.
    has_ground_truth: bool = False
    #: Whether items carry a distractor class and its ground truth (embedded scenes).
    has_distractor: bool = False
    #: Whether items carry class labels.
    has_labels: bool = False

    def keys(self) -> List[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def labels(self) -> List[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_labels(self, num_classes: int) -> None:
        """Raise :class:`DataError` if a label lies outside the model's classes."""
        bad = sorted({lab for lab in self.labels() if lab >= num_classes})
        if bad:
            raise DataError(
                f"labels outside the model's {num_classes} classes: {bad[:5]}"
                + (" ..." if len(bad) > 5 else "")
                + " (use --class-map, or a --checkpoint with that many classes)"
            )


class ImageDataset(ItemDataset):
    """Images from files, preprocessed for a model, with optional annotations.

    Each item is a dict: ``index`` (position in the dataset), ``key`` (relative path),
    ``image`` (normalised (3, H, W) float tensor), ``label`` (class index or -1),
    ``ok`` and ``error`` (False and the reason for an unreadable image, whose image is
    zeros), and with annotations ``gt`` ((H, W) bool mask after the model's resize and
    crop) and ``has_gt``.

    Args:
        entries: The images (see :func:`image_folder_entries`, :func:`flat_entries`).
        preprocessing: The model's :class:`Preprocessing`.
        boxes: ``{key: [boxes]}`` in pixels of the original images.
        masks_dir: A folder of PNG masks named like the images (same relative path
            or same stem, ``.png``); nonzero pixels are the object.
        root: The data folder (for descriptions).
        transform: Another image transform than ``preprocessing``'s eval one (e.g.
            ``preprocessing.train_transform(hflip=0.5)`` for training); it cannot be
            combined with boxes or masks.
    """

    def __init__(
        self,
        entries: Sequence[ImageEntry],
        preprocessing: Preprocessing,
        boxes: Optional[Dict[str, List[Box]]] = None,
        masks_dir: Optional[PathLike] = None,
        root: Optional[PathLike] = None,
        transform: Optional[Callable] = None,
    ) -> None:
        if not entries:
            raise DataError("no images")
        if transform is not None and (boxes is not None or masks_dir is not None):
            raise ValueError(
                "transform: boxes and masks follow the model's eval preprocessing only"
            )
        self.entries = list(entries)
        self.preprocessing = preprocessing
        self.transform = transform if transform is not None else preprocessing
        self.boxes = boxes
        self.masks_dir = Path(masks_dir) if masks_dir is not None else None
        self.root = Path(root) if root is not None else None
        self.has_ground_truth = boxes is not None or masks_dir is not None
        self.has_labels = all(e.label >= 0 for e in self.entries)
        if self.has_ground_truth:
            preprocessing.check_annotations()

    @classmethod
    def from_folder(
        cls,
        root: PathLike,
        preprocessing: Preprocessing,
        labels: Optional[PathLike] = None,
        class_map: Optional[PathLike] = None,
        boxes: Optional[PathLike] = None,
        masks: Optional[PathLike] = None,
        transform: Optional[Callable] = None,
    ) -> "ImageDataset":
        """Build a dataset from a folder (the ``--data`` family of options).

        With ``labels`` (a ``file,label`` CSV) every image under ``root`` is read
        with its label; otherwise sub-folders holding images make an ImageFolder
        tree (``class_map`` overriding the sorted order), and a folder with images
        only at its top level is read without labels.

        Raises:
            DataError: a missing or empty folder, or bad annotation files (one line).
        """
        r = Path(root)
        if not r.is_dir():
            raise DataError(f"--data {str(r)!r}: no such folder")
        if labels is not None:
            if class_map is not None:
                raise DataError(
                    "--class-map applies to ImageFolder trees, not --labels"
                )
            entries = flat_entries(r, labels)
        else:
            subdirs = [
                d
                for d in r.iterdir()
                if d.is_dir() and not d.name.startswith(".") and _images_under(d)
            ]
            if subdirs:
                cmap = read_class_map(class_map) if class_map is not None else None
                entries = image_folder_entries(r, cmap)
            else:
                if class_map is not None:
                    raise DataError(
                        f"--class-map: --data {str(r)!r} has no class sub-folders"
                    )
                entries = flat_entries(r)
        box_map = read_boxes(boxes, entries) if boxes is not None else None
        if masks is not None and not Path(masks).is_dir():
            raise DataError(f"--masks {str(masks)!r}: no such folder")
        return cls(entries, preprocessing, box_map, masks, root=r, transform=transform)

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> List[str]:
        return [e.key for e in self.entries]

    def labels(self) -> List[int]:
        return [e.label for e in self.entries]

    def subset(self, n: int, seed: int) -> "ImageDataset":
        """``n`` images drawn with ``seed`` (the same ones every run), kept in key
        order.

        Raises:
            DataError: ``n`` exceeds the number of images.
        """
        if n > len(self.entries):
            raise DataError(f"--n {n}: the data has only {len(self.entries)} image(s)")
        if n == len(self.entries):
            return self
        chosen = sorted(random.Random(seed).sample(range(len(self.entries)), n))
        out = copy.copy(self)
        out.entries = [self.entries[i] for i in chosen]
        return out

    def holdout(self, n: int, seed: int) -> Tuple["ImageDataset", "ImageDataset"]:
        """Split off ``n`` images drawn with ``seed`` (e.g. for validation).

        Returns:
            ``(rest, held)``: two datasets over disjoint images, each in key order;
            ``held`` uses the model's eval preprocessing (no training transform).

        Raises:
            DataError: ``n`` leaves no image for ``rest``.
        """
        if not 0 <= n < len(self.entries):
            raise DataError(
                f"cannot hold out {n} of {len(self.entries)} image(s): at least one "
                "must remain"
            )
        chosen = set(random.Random(seed).sample(range(len(self.entries)), n))
        rest, held = copy.copy(self), copy.copy(self)
        rest.entries = [e for i, e in enumerate(self.entries) if i not in chosen]
        held.entries = [e for i, e in enumerate(self.entries) if i in chosen]
        held.transform = self.preprocessing
        return rest, held

    def with_transform(self, transform: Optional[Callable]) -> "ImageDataset":
        """The same images through another transform (None: the eval one).

        Raises:
            ValueError: the dataset has boxes or masks (they follow the eval
                preprocessing only).
        """
        if transform is not None and self.has_ground_truth:
            raise ValueError(
                "transform: boxes and masks follow the model's eval preprocessing only"
            )
        out = copy.copy(self)
        out.transform = transform if transform is not None else self.preprocessing
        return out

    def describe(self) -> Dict[str, Any]:
        return {
            "source": "files",
            "name": self.root.name if self.root is not None else None,
            "images": len(self.entries),
            "keys_digest": _digest("\n".join(self.keys())),
            "labels_digest": _digest(",".join(map(str, self.labels()))),
            "boxes_digest": (
                _digest(json.dumps(self.boxes, sort_keys=True))
                if self.boxes is not None
                else None
            ),
            "masks": self.masks_dir is not None,
            "preprocessing": (
                self.preprocessing.describe()
                if self.transform is self.preprocessing
                else " ".join(repr(self.transform).split())
            ),
        }

    def _mask_for(self, entry: ImageEntry, size: Tuple[int, int]) -> Optional[Tensor]:
        """Ground truth at the original size (H0, W0), or None if there is none."""
        if self.boxes is not None:
            boxes = self.boxes.get(entry.key)
            return boxes_to_mask(boxes, size) if boxes else None
        assert self.masks_dir is not None
        rel = Path(entry.key).with_suffix(".png")
        path = self.masks_dir / rel
        if not path.is_file():
            path = self.masks_dir / (Path(entry.key).stem + ".png")
        if not path.is_file():
            return None
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im.convert("L") if im.mode not in ("L", "1") else im)
        except OSError as exc:
            raise DataError(f"cannot read mask {str(path)!r}: {exc}") from exc
        if arr.ndim != 2 or arr.shape != size:
            raise DataError(
                f"mask {str(path)!r} is {arr.shape[::-1]} but its image is "
                f"{size[::-1]} (width x height)"
            )
        return torch.from_numpy(arr.astype(bool))

    def __getitem__(self, index: int) -> Dict[str, Any]:
        e = self.entries[index]
        item: Dict[str, Any] = {
            "index": index,
            "key": e.key,
            "label": e.label,
            "ok": True,
            "error": "",
        }
        h, w = self.preprocessing.input_size
        try:
            im = read_image(e.path)
            item["image"] = self.transform(im).float()
            if self.has_ground_truth:
                gt = self._mask_for(e, (im.height, im.width))
                item["gt"] = (
                    self.preprocessing.map_mask(gt)
                    if gt is not None
                    else torch.zeros(h, w, dtype=torch.bool)
                )
                item["has_gt"] = bool(item["gt"].any())
        except Exception as exc:  # one bad file must not end a 50 000-image run
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            item.update(ok=False, error=msg, image=torch.zeros(3, h, w))
            if self.has_ground_truth:
                item.update(gt=torch.zeros(h, w, dtype=torch.bool), has_gt=False)
        return item


class SceneDataset(ItemDataset):
    """The embedded Fashion-MNIST scenes as a data source (the default one).

    Items are like :class:`ImageDataset`'s, with the main item's box as ``gt``, plus
    ``distractor`` (the distractor's class) and ``gt_distractor`` (its box). Scenes
    are generated once (``make_scenes(n, split=split, seed=seed,
    image_size=image_size)``); for models of another input size they go through the
    model's preprocessing as float images.

    Args:
        n: Number of scenes.
        preprocessing: The model's :class:`Preprocessing`.
        seed: Scene seed.
        default_model: True for the embedded default model (or a model in its
            format): the zoo's preprocess is applied directly (no resize), as
            everywhere else in the package.
        split: ``"test"`` (held-out items: evaluation, the default) or ``"train"``
            (training jobs; the shipped training sample unless
            ``CAPTUM_VIT_FASHION_MNIST`` names other data).
        image_size: Side of the generated scenes (default 64).
        transform: Another transform of the float (3, S, S) scenes in [0, 1] than
            the model's eval one (e.g. ``preprocessing.train_transform(...)``); items
            then carry no ground truth.
    """

    has_ground_truth = True
    has_distractor = True
    has_labels = True

    def __init__(
        self,
        n: int,
        preprocessing: Preprocessing,
        seed: int = 1234,
        default_model: bool = False,
        split: str = "test",
        image_size: int = 64,
        transform: Optional[Callable] = None,
    ) -> None:
        from . import zoo

        if n <= 0:
            raise DataError(f"n: expected a positive number of scenes, got {n}")
        self.n, self.seed = int(n), int(seed)
        self.preprocessing = preprocessing
        self.default_model = default_model
        self.split, self.image_size = split, int(image_size)
        self.transform = transform
        if transform is not None:
            self.has_ground_truth = self.has_distractor = False
        self.scenes = zoo.make_scenes(
            self.n, split=split, seed=self.seed, image_size=self.image_size
        )

    def __len__(self) -> int:
        return self.n

    def keys(self) -> List[str]:
        return [f"scene-{i:05d}" for i in range(self.n)]

    def labels(self) -> List[int]:
        return [int(v) for v in self.scenes.labels]

    def describe(self) -> Dict[str, Any]:
        from . import zoo

        out = {
            "source": "embedded scenes",
            # scenes are drawn per index (generator 2) from these Fashion-MNIST
            # items; folders made with other scenes are refused on resume
            "generator": zoo.SCENES_VERSION,
            "items": zoo.data_source(),
            "images": self.n,
            "seed": self.seed,
            "preprocessing": (
                "zoo.preprocess"
                if self.default_model
                else self.preprocessing.describe()
            ),
        }
        if (self.split, self.image_size) != ("test", 64):  # older records lack them
            out.update(split=self.split, image_size=self.image_size)
        if self.transform is not None:
            out["preprocessing"] = " ".join(repr(self.transform).split())
        return out

    def __getitem__(self, index: int) -> Dict[str, Any]:
        s = self.scenes
        image = torch.as_tensor(s.images[index])
        item = {
            "index": index,
            "key": f"scene-{index:05d}",
            "label": int(s.labels[index]),
            "ok": True,
            "error": "",
        }
        if self.transform is not None:
            return dict(item, image=self.transform(image).float())
        size = tuple(image.shape[-2:])
        gts = [
            boxes_to_mask([tuple(float(v) for v in s.boxes[index, j])], size)
            for j in range(2)
        ]
        if self.default_model:
            from .zoo import preprocess

            x = preprocess(image)
        else:
            x = self.preprocessing(image).float()
            gts = [self.preprocessing.map_mask(g) for g in gts]
        return dict(
            item,
            image=x,
            gt=gts[0],
            has_gt=bool(gts[0].any()),
            distractor=int(s.distractor_labels[index]),
            gt_distractor=gts[1],
        )


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------- grid pointing
def check_grid_source(dataset: ItemDataset, grid: int) -> None:
    """Refuse a data source the grid pointing game cannot use: one line naming
    ``--grid-pointing``.

    Raises:
        DataError: ``grid`` below 2, a source without labels, or fewer distinct
            classes than the ``grid * grid`` cells of a grid.
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise DataError(f"--grid-pointing: expected a grid side >= 2, got {grid!r}")
    if not dataset.has_labels:
        raise DataError(
            "--grid-pointing: the data has no labels; grids need images of distinct "
            "classes (use an ImageFolder tree, --labels, or the embedded scenes)"
        )
    classes = {lab for lab in dataset.labels() if lab >= 0}
    if len(classes) < grid * grid:
        raise DataError(
            f"--grid-pointing: a {grid} x {grid} grid needs {grid * grid} distinct "
            f"classes, the data has {len(classes)}; use a smaller grid or more classes"
        )


class GridDataset(ItemDataset):
    """n x n grids of images of distinct classes from a labelled data source, at the
    model's input size: the grid pointing game's data (Böhle et al. 2021; Rao et al.
    2022).

    Item ``i`` is the grid explained for source image ``i``: that image sits in a
    cell drawn with a seed made from ``seed`` and the image's key, and the other
    cells hold images of ``n * n - 1`` other classes, distinct, each class and its
    image drawn with the same seed (unreadable images are passed over), so the grid
    of an image is the same in any batch, chunk, process or run. The cells are the
    source's preprocessed images shrunk by area averaging
    (:func:`captum_vit.metrics.make_grid`).

    Items are like :class:`ImageDataset`'s: ``image`` (the grid), ``label`` (the
    explained image's class), ``gt`` (its cell as an (H, W) mask) and ``has_gt``,
    plus ``cell`` (its row-major index) and ``members`` (the source positions of the
    cells, row-major).

    Args:
        source: A labelled :class:`ItemDataset` (the embedded scenes, an ImageFolder
            tree, a folder with ``--labels``) with at least ``grid * grid`` classes.
        grid: n, the cells per side (default 2).
        seed: Seed of the draws.

    Raises:
        DataError: see :func:`check_grid_source`.
    """

    has_ground_truth = True
    has_distractor = False
    has_labels = True

    def __init__(self, source: ItemDataset, grid: int = 2, seed: int = 1234) -> None:
        check_grid_source(source, grid)
        self.source, self.grid, self.seed = source, int(grid), int(seed)
        self._keys = source.keys()
        self._labels = source.labels()
        self.by_class: Dict[int, List[int]] = {}
        for i, lab in enumerate(self._labels):
            if lab >= 0:
                self.by_class.setdefault(int(lab), []).append(i)

    def __len__(self) -> int:
        return len(self.source)

    def keys(self) -> List[str]:
        return list(self._keys)

    def labels(self) -> List[int]:
        return list(self._labels)

    def describe(self) -> Dict[str, Any]:
        return {
            "source": "grids",
            "grid": self.grid,
            "seed": self.seed,
            "of": self.source.describe(),
        }

    def _rng(self, index: int) -> random.Random:
        digest = _digest(f"{self.seed}:{self._keys[index]}#grid")
        return random.Random(int(digest, 16))

    def __getitem__(self, index: int) -> Dict[str, Any]:
        from .metrics import grid_cell_masks, make_grid

        n = self.grid
        main = self.source[index]
        label = int(self._labels[index])
        item: Dict[str, Any] = {
            "index": index,
            "key": main["key"],
            "label": label,
            "ok": bool(main["ok"]),
            "error": main.get("error", ""),
        }
        c, h, w = main["image"].shape
        rng = self._rng(index)
        cell = rng.randrange(n * n)
        others = sorted(k for k in self.by_class if k != label)
        rng.shuffle(others)
        members: List[Any] = []
        images: List[Tensor] = []
        if item["ok"]:
            for cls in others:
                if len(members) == n * n - 1:
                    break
                candidates = list(self.by_class[cls])
                rng.shuffle(candidates)
                for j in candidates:
                    other = self.source[j]
                    if other["ok"]:
                        members.append(j)
                        images.append(other["image"].float())
                        break
            if len(members) < n * n - 1:
                item.update(
                    ok=False,
                    error=f"grid: fewer than {n * n - 1} readable images of other "
                    "classes",
                )
        if item["ok"]:
            members.insert(cell, index)
            images.insert(cell, main["image"].float())
            item["image"] = make_grid(torch.stack(images), n, (h, w))[0]
        else:
            members = [-1] * (n * n)
            item["image"] = torch.zeros(c, h, w)
        item.update(
            gt=grid_cell_masks(cell, n, (h, w))[0],
            has_gt=bool(item["ok"]),
            cell=cell,
            members=torch.tensor(members),
        )
        return item
