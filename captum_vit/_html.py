"""What the HTML pages of ``evaluate`` (``report.html``) and ``explain``
(``index.html``) share: the Jinja2 templates shipped in ``captum_vit/templates``,
overlays drawn as PNG images, colour legends, inline SVG plots and data URIs.

The pages open offline: no script, style sheet, font or image comes from the
network. Pictures are PNG data URIs or files beside the page; plots are matplotlib
SVG inlined in the page (drawn without pyplot, so the caller's backend is
untouched). Signed maps use a diverging colour map centred at zero (``bwr``),
unsigned maps a sequential one (``inferno``), as :mod:`captum_vit.viz` does.
"""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Colour map of signed and of unsigned maps (those of :func:`captum_vit.viz.overlay`).
CMAPS = {True: "bwr", False: "inferno"}
#: Opacity of a map over its (grey) image.
ALPHA = 0.55
#: Longest side of a picture in a page, in pixels (larger images are shrunk).
MAX_SIDE = 224

_TEMPLATES = Path(__file__).resolve().parent / "templates"


def environment() -> Any:
    """The Jinja2 environment of the shipped templates (autoescaped)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = markdown_inline
    return env


def render(template: str, **context: Any) -> str:
    """Render one of the shipped templates."""
    return environment().get_template(template).render(**context)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (never half a page)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def markdown_inline(text: str) -> Any:
    """The inline markdown of the tables' texts (```code```, ``**bold**``) as safe
    HTML; everything else is escaped."""
    import re

    from markupsafe import Markup, escape

    out = str(escape(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return Markup(out)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_uint8(image01: np.ndarray) -> np.ndarray:
    """An image in [0, 1], (3, H, W) or (H, W, 3), as (H, W, 3) uint8."""
    img = np.asarray(image01, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _shrink(rgb: np.ndarray) -> np.ndarray:
    """Shrink an (H, W, 3) uint8 picture so that its longest side is
    :data:`MAX_SIDE` at most."""
    h, w = rgb.shape[:2]
    if max(h, w) <= MAX_SIDE:
        return rgb
    from PIL import Image

    scale = MAX_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def colour_range(att: np.ndarray, signed: bool) -> Tuple[float, float]:
    """The values at both ends of a map's colour scale: ``(-m, m)`` with ``m`` the
    largest absolute value for a signed map, ``(min, max)`` for an unsigned one."""
    a = np.nan_to_num(np.asarray(att, dtype=np.float64))
    if signed:
        lim = float(np.abs(a).max()) if a.size else 0.0
        lim = lim or 1.0
        return -lim, lim
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
    return lo, hi if hi > lo else lo + 1.0


def overlay_rgb(image: np.ndarray, att: np.ndarray, signed: bool) -> np.ndarray:
    """A map over its image as (H, W, 3) uint8, as :func:`captum_vit.viz.overlay`
    draws it: the image in grey, the map's colours on top with opacity
    :data:`ALPHA`.

    Args:
        image: (H, W, 3) uint8 image.
        att: (H, W) map of the same size.
        signed: Diverging colour map centred at zero, else sequential min to max.
    """
    from matplotlib import colormaps

    a = np.nan_to_num(np.asarray(att, dtype=np.float64))
    if a.shape != image.shape[:2]:
        raise ValueError(
            f"attribution: spatial size {a.shape} does not match the image "
            f"{image.shape[:2]}"
        )
    lo, hi = colour_range(a, signed)
    rgba = colormaps[CMAPS[signed]](np.clip((a - lo) / (hi - lo), 0, 1))
    grey = image.astype(np.float64).mean(axis=-1, keepdims=True) / 255.0
    out = (1 - ALPHA) * grey + ALPHA * rgba[..., :3]
    return _shrink((np.clip(out, 0, 1) * 255).round().astype(np.uint8))


def picture(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 image as the pages show it (shrunk if large)."""
    return _shrink(image)


def legend(signed: bool, lo: float, hi: float) -> Dict[str, str]:
    """A colour legend for the template: a CSS gradient of the map's colour map and
    the values at its ends (and at zero for a signed map)."""
    from matplotlib import colormaps

    cmap = colormaps[CMAPS[signed]]
    stops = ", ".join(
        "#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in cmap(t)[:3]))
        for t in np.linspace(0, 1, 9)
    )
    return {
        "gradient": f"linear-gradient(to right, {stops})",
        "low": short(lo),
        "mid": "0" if signed else "",
        "high": short(hi),
        "kind": "signed (diverging, 0 in the middle)" if signed else "unsigned",
    }


def short(x: float) -> str:
    """A number in three significant digits (``n/a`` for NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3g}"


def method_signed(name: str, maps: Sequence[np.ndarray] = ()) -> bool:
    """Whether the method ``name`` gives signed maps (as it declares in
    :data:`captum_vit.methods.METHODS`; a method unknown there is signed when any of
    its ``maps`` has a negative value)."""
    from .methods import METHODS

    method = METHODS.get(name)
    if method is not None:
        return bool(method.signed)
    return any(bool((np.asarray(m) < 0).any()) for m in maps)


def svg(fig: Any) -> str:
    """A matplotlib figure as an inline ``<svg>`` element: no XML header, no date,
    the same text for the same figure (element ids salted with a constant)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "captum-vit", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def palette(names: Sequence[str]) -> Dict[str, Any]:
    """One plot style per method: ``random`` black and dashed (the reference every
    method should beat), the others the dark shades of ``tab20`` first."""
    from matplotlib import colormaps

    colours = colormaps["tab20"].colors
    out: Dict[str, Any] = {}
    for i, name in enumerate(names):
        if name == "random":
            out[name] = dict(color="black", linestyle="--")
        else:
            out[name] = dict(color=colours[(2 * i + i // 10) % 20])
    return out


class Card(dict):
    """One picture of a gallery: ``title``, ``src`` (a data URI or a relative
    path), ``legend`` (:func:`legend`, or None for the image itself) and ``lines``
    (short texts under it)."""


def map_card(
    title: str,
    image: np.ndarray,
    att: np.ndarray,
    signed: bool,
    lines: Sequence[str] = (),
    src: Optional[str] = None,
) -> Card:
    """A card of one map over its image (``src`` given: the picture is that file,
    else it is drawn and embedded)."""
    lo, hi = colour_range(att, signed)
    if src is None:
        src = data_uri(png_bytes(overlay_rgb(image, att, signed)))
    return Card(title=title, src=src, legend=legend(signed, lo, hi), lines=list(lines))


def image_card(title: str, image: np.ndarray, lines: Sequence[str] = ()) -> Card:
    """A card of the image itself, embedded."""
    return Card(
        title=title,
        src=data_uri(png_bytes(picture(image))),
        legend=None,
        lines=list(lines),
    )


def class_label(names: Sequence[str], index: Optional[int]) -> str:
    """A class as the pages name it: its name when known, else ``class <i>``."""
    if index is None or index < 0:
        return "unknown"
    return names[index] if index < len(names) else f"class {index}"


def gallery_pages(
    rows: List[Dict[str, Any]], per_page: int
) -> List[List[Dict[str, Any]]]:
    """``rows`` cut into pages of at most ``per_page`` rows (one page at least)."""
    if not rows:
        return [[]]
    return [rows[i : i + per_page] for i in range(0, len(rows), per_page)]
