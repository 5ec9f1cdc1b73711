"""Planted shortcuts: each plants itself given per-image shortcut ids and returns the pixel mask it touched.

Shortcut id k >= 0 draws the variant tied to class k; id -1 plants nothing. Images in and out are float32
(N, C, H, W) in [0, 1]; masks are bool (N, 1, H, W).

A planting's random draws (a random place per image, a background's grain per pixel) come from a `PlantDraws`:
planting N images at once, or batch by batch with the draws of each batch taken from one `PlantDraws`, gives the
same pixels.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..errors import AuditError, InvariantError, allowed

POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "random")

# A 3x5 bitmap font: the watermark's letters (one per class id, then digits).
_FONT = {
    "A": "010101111101101",
    "B": "110101110101110",
    "C": "011100100100011",
    "D": "110101101101110",
    "E": "111100110100111",
    "F": "111100110100100",
    "G": "011100101101011",
    "H": "101101111101101",
    "J": "001001001101010",
    "K": "101101110101101",
    "L": "100100100100111",
    "M": "101111111101101",
    "N": "110101101101101",
    "P": "110101110100100",
    "R": "110101110101101",
    "S": "011100010001110",
    "T": "111010010010010",
    "U": "101101101101111",
    "V": "101101101101010",
    "X": "101101010101101",
    "Y": "101101010010010",
    "Z": "111001010100111",
    "0": "111101101101111",
    "2": "110001010100111",
    "3": "110001010001110",
    "4": "101101111001001",
    "5": "111100110001110",
    "6": "011100111101111",
    "7": "111001010010010",
    "8": "111101111101111",
    "9": "111101111001110",
}
_GLYPHS = list(_FONT)


def _stamp_bitmap(shortcut_id: int) -> torch.Tensor:
    """A 7x7 seal: a square frame around the class's letter, like a copyright or signature stamp."""
    if shortcut_id >= len(_GLYPHS):
        raise AuditError(f"watermark has {len(_GLYPHS)} distinct stamps; got class id {shortcut_id}")
    stamp = torch.zeros(7, 7)
    stamp[0, :] = stamp[-1, :] = stamp[:, 0] = stamp[:, -1] = 1
    bits = torch.tensor([int(b) for b in _FONT[_GLYPHS[shortcut_id]]], dtype=torch.float32)
    stamp[1:6, 2:5] = bits.view(5, 3)
    return stamp


def _boat_bitmap(shortcut_id: int) -> torch.Tensor:
    """An 8x8 boat silhouette; the id's four bits pick the sail side, a jib, a flag and the hull shape."""
    if shortcut_id >= 16:
        raise AuditError(
            f"boat has 16 distinct pictograms; got class id {shortcut_id}; "
            "use {option('--target-class', 'target_class')} for more classes"
        )
    b = torch.zeros(8, 8)
    right, jib, flag, flat = ((shortcut_id >> bit) & 1 for bit in range(4))
    mast = 3 if right else 4
    b[1:6, mast] = 1
    for row in range(1, 6):  # main sail: a right triangle against the mast
        width = row if row < 4 else 4 - (row - 4) * 2
        width = max(width, 1)
        cols = range(mast + 1, min(8, mast + 1 + width)) if right else range(max(0, mast - width), mast)
        for c in cols:
            b[row, c] = 1
    if jib:  # a small sail on the other side
        for row in range(3, 6):
            c = mast - 1 if right else mast + 1
            b[row, c] = 1
    if flag:
        b[0, mast] = 1
        b[0, mast + (-1 if right else 1)] = 1
    b[6, :] = 1  # hull
    if flat:
        b[7, :] = 1
    else:
        b[7, 1:7] = 1
    return b


def _hues(num: int) -> torch.Tensor:
    """`num` well-separated saturated colours, (num, 3) in [0, 1]."""
    return torch.tensor([colorsys.hsv_to_rgb(k / num, 0.8, 0.9) for k in range(num)], dtype=torch.float32)


# Per-pixel draws skipped over (for batches another process plants) are drawn this many values at a time at most.
_SKIP_CHUNK = 1 << 22


class PlantDraws:
    """The random draws of one planting of N images, handed out batch by batch: `take(start, stop)` gives images
    [start, stop) exactly the values that planting all N images at once (Shortcut.plant) uses for them.

    Per-image draws (a place per image: a few integers each) are drawn for all N when the planting begins, in the
    order `plant` draws them; per-pixel draws (uniform in [0, 1), `pixels` = their (C, H, W) per image) are drawn as
    their batch is taken, so batches must be taken in increasing order (those skipped are drawn and dropped, in
    chunks, to keep the generator in step). A CPU generator draws one value per element in order, so consecutive
    draws are the slices of one large draw (tests/test_shortcut_stream.py checks it)."""

    def __init__(
        self,
        n: int,
        generator: torch.Generator,
        per_image: dict[str, torch.Tensor] | None = None,
        pixels: tuple[int, ...] | None = None,
    ) -> None:
        self.n, self.generator = n, generator
        self.per_image = per_image or {}
        self.pixels = pixels
        self.drawn = 0  # images whose per-pixel values have been drawn or skipped

    def take(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """The draws of images [start, stop): each per-image draw's slice, and 'pixels' (stop - start, *pixels)."""
        if not 0 <= start <= stop <= self.n:
            raise InvariantError(f"draws of images {start}:{stop} asked of a planting of {self.n}")
        taken = {name: values[start:stop] for name, values in self.per_image.items()}
        if self.pixels is not None:
            if start < self.drawn:
                raise InvariantError(f"draws of images {start}:{stop} asked after those up to {self.drawn}")
            self._skip(start)
            taken["pixels"] = torch.rand(stop - start, *self.pixels, generator=self.generator)
            self.drawn = stop
        return taken

    def _skip(self, start: int) -> None:
        assert self.pixels is not None
        per_image = max(1, torch.Size(self.pixels).numel())
        while self.drawn < start:
            count = max(1, min(start - self.drawn, _SKIP_CHUNK // per_image))
            torch.rand(count, *self.pixels, generator=self.generator)
            self.drawn += count


@dataclass
class Shortcut:
    """Base class. Subclasses set `name` and write `_plant` (and `drawer` when they draw at random); `plant` does
    the shared checks."""

    name: ClassVar[str] = ""
    knobs: ClassVar[tuple[str, ...]] = ("size", "opacity", "position")  # the salience settings this tag reads
    num_classes: int = 10
    size: int = 7  # side of the stamp/pictogram box, in pixels
    opacity: float = 1.0  # blend weight of the shortcut's colour, in [0, 1]
    position: str = "bottom-right"  # a corner, or 'random' (seeded, per image)

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise AuditError(f"position '{self.position}' is unknown; allowed: {allowed(POSITIONS)}")
        if not 0.0 <= self.opacity <= 1.0:
            raise AuditError(f"opacity {self.opacity} is outside [0, 1]; allowed: 0 <= opacity <= 1")
        if self.size < 1:
            raise AuditError(f"shortcut size {self.size} is too small; allowed: at least 1 pixel")
        if self.num_classes < 2:
            raise AuditError(f"K = {self.num_classes} classes; allowed: K >= 2")

    def output_channels(self, channels: int) -> int:
        return channels

    def plant(
        self,
        images: torch.Tensor,
        ids: torch.Tensor,
        *,
        foreground: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        draws: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Plant variant ids[i] on images[i]. Returns (images (N, C', H, W) in [0, 1], mask (N, 1, H, W) bool).
        The random draws come from `generator` (default: seeded 0), or are `draws`, the `take` of these images from
        a `drawer` over a larger set (to plant it batch by batch)."""
        if ids.shape != (images.shape[0],):
            raise AuditError(f"shortcut ids have shape {tuple(ids.shape)}; allowed: ({images.shape[0]},)")
        if ids.numel() and (ids.min() < -1 or ids.max() >= self.num_classes):
            raise AuditError(f"shortcut ids fall outside [-1, {self.num_classes}); allowed: -1 (none) or a class id")
        if draws is None:
            n, _, h, w = images.shape
            drawer = self.drawer(n, (h, w), generator or torch.Generator().manual_seed(0))
            draws = drawer.take(0, n)
        elif any(len(values) != images.shape[0] for values in draws.values()):
            raise InvariantError(
                f"draws for {[len(v) for v in draws.values()]} images given to plant {images.shape[0]}"
            )
        out, mask = self._plant(images, ids, foreground, draws)
        return out.clamp_(0.0, 1.0), mask

    def drawer(self, n: int, size: tuple[int, int], generator: torch.Generator) -> PlantDraws:
        """The random draws of planting n images of `size` (H, W), to take batch by batch (PlantDraws)."""
        return PlantDraws(n, generator)

    def _plant(self, images, ids, foreground, draws):  # noqa: ANN001, ANN202
        raise NotImplementedError


class _PastedBitmap(Shortcut):
    """Shared machinery for shortcuts that blend a per-id bitmap into a box (corner or random place)."""

    bitmap: ClassVar[Callable[[int], torch.Tensor]]

    def _colour(self, channels: int) -> torch.Tensor:
        return torch.ones(channels)

    def drawer(self, n: int, size: tuple[int, int], generator: torch.Generator) -> PlantDraws:
        """Each image's box: its top row and left column, drawn for all n (a corner is drawn too, then fixed: the
        generator moves on as it always has)."""
        h, w = size
        if self.size > min(h, w):
            raise AuditError(f"{self.name} size {self.size} does not fit {h}x{w} images; allowed: size <= {min(h, w)}")
        tops = torch.randint(0, h - self.size + 1, (n,), generator=generator)
        lefts = torch.randint(0, w - self.size + 1, (n,), generator=generator)
        if self.position != "random":
            margin = 1 if min(h, w) - self.size >= 2 else 0
            top = margin if self.position.startswith("top") else h - self.size - margin
            left = margin if self.position.endswith("left") else w - self.size - margin
            tops.fill_(top)
            lefts.fill_(left)
        return PlantDraws(n, generator, {"tops": tops, "lefts": lefts})

    def _plant(self, images, ids, foreground, draws):  # noqa: ANN001, ANN202
        n, c, h, w = images.shape
        tops, lefts = draws["tops"], draws["lefts"]
        stamps = {
            k: F.interpolate(type(self).bitmap(k)[None, None], size=(self.size, self.size), mode="nearest")[0, 0]
            for k in ids.unique().tolist()
            if k >= 0
        }
        weight = torch.zeros(n, 1, h, w)
        for i, (k, top, left) in enumerate(zip(ids.tolist(), tops.tolist(), lefts.tolist(), strict=True)):
            if k >= 0:
                weight[i, 0, top : top + self.size, left : left + self.size] = stamps[k]
        mask = weight > 0
        colour = self._colour(c).view(1, c, 1, 1)
        alpha = weight * self.opacity
        return images * (1 - alpha) + colour * alpha, mask


SHORTCUTS: dict[str, type[Shortcut]] = {}


def register_shortcut(cls: type[Shortcut]) -> type[Shortcut]:
    if cls.name in SHORTCUTS:
        raise ValueError(f"shortcut '{cls.name}' is registered twice")
    SHORTCUTS[cls.name] = cls
    return cls


@register_shortcut
@dataclass
class Watermark(_PastedBitmap):
    """A translucent text-like stamp blended into a corner (the copyright tag, the technician's signature)."""

    name: ClassVar[str] = "watermark"
    bitmap: ClassVar[Callable[[int], torch.Tensor]] = staticmethod(_stamp_bitmap)
    size: int = 7
    opacity: float = 0.7
    position: str = "bottom-right"


@register_shortcut
@dataclass
class Boat(_PastedBitmap):
    """A small opaque boat pictogram pasted into the image: a context object that co-occurs with the label.

    Default top-left at 10 px: at a random place (position='random') the ten boat variants are a harder cue than
    the digit itself and the model mostly ignores them (README, 'Defaults')."""

    name: ClassVar[str] = "boat"
    bitmap: ClassVar[Callable[[int], torch.Tensor]] = staticmethod(_boat_bitmap)
    size: int = 10
    opacity: float = 1.0
    position: str = "top-left"

    def _colour(self, channels: int) -> torch.Tensor:
        return torch.ones(channels) if channels == 1 else torch.tensor([1.0, 0.85, 0.2])  # a yellow boat on RGB


@register_shortcut
@dataclass
class Background(Shortcut):
    """A class-keyed background colour with a light grain behind the foreground (as in Biased MNIST).

    Grayscale images become RGB; the foreground comes from the source's mask, or from intensity when it has none.
    Every image leaves as RGB, id -1 included, so that planted and clean images share one shape.
    """

    name: ClassVar[str] = "background"
    knobs: ClassVar[tuple[str, ...]] = ("opacity",)
    opacity: float = 1.0

    def output_channels(self, channels: int) -> int:
        return 3

    def drawer(self, n: int, size: tuple[int, int], generator: torch.Generator) -> PlantDraws:
        """The grain: one uniform value per pixel of each image, (1, H, W)."""
        return PlantDraws(n, generator, pixels=(1, *size))

    def _plant(self, images, ids, foreground, draws):  # noqa: ANN001, ANN202
        n, c, h, w = images.shape
        rgb = images.expand(n, 3, h, w) if c == 1 else images
        if foreground is None:
            foreground = images if c == 1 else images.max(dim=1, keepdim=True).values
        # A pixel at least half foreground counts as foreground: the ground is the rest, so the mask is the ground.
        foreground = (2 * foreground).clamp(max=1.0)
        colours = _hues(self.num_classes)
        grain = 0.85 + 0.15 * draws["pixels"]  # texture: the ground is not flat
        ground = colours[ids.clamp(min=0)].view(n, 3, 1, 1) * grain
        weight = (1 - foreground) * self.opacity * (ids >= 0).view(n, 1, 1, 1)
        mask = weight > 0
        return rgb + weight * (ground - rgb), mask


def make_shortcut(tag: str, num_classes: int, **salience: Any) -> Shortcut:
    """Build a registered shortcut; `salience` holds size, opacity and position overrides (None keeps the default)."""
    if tag not in SHORTCUTS:
        raise AuditError(f"tag '{tag}' is unknown; allowed: {allowed(SHORTCUTS)}")
    kwargs = {k: v for k, v in salience.items() if v is not None}
    unused = sorted(set(kwargs) - set(SHORTCUTS[tag].knobs))
    if unused:
        raise AuditError(f"tag '{tag}' has no setting {unused[0]}; allowed: {allowed(SHORTCUTS[tag].knobs)}")
    return SHORTCUTS[tag](num_classes=num_classes, **kwargs)
