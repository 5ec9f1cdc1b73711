"""Where the pixels of a set of images live, and how they are read: in memory (uint8 stays uint8, float32 stays
float32) or as image files decoded batch by batch in DataLoader worker processes. Every read returns float32
(n, C, H, W) in [0, 1] on the CPU; only a batch at a time exists as float unless a caller asks for everything
(`materialize`, for what must see all images at once, such as fitting a patch on the built-in data).

Splits, subsets and seeded orders work on indices: `subset(index)` never decodes a file."""

from __future__ import annotations

import hashlib
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AuditError, InvariantError

# Per image: classifier inputs are far smaller, and this already takes 200 MB as float32 RGB; a header claiming more is
# refused before any pixel is decoded (a decompression bomb costs nothing to send).
MAX_IMAGE_PIXELS = 4096 * 4096
GRAY_MODES = ("L", "1", "I;16", "I")


def default_workers() -> int:
    """Decoding processes for an image folder: one core is left to the model; at most 8 (past that, a classifier's
    forward pass, not decoding, is the limit). $AUDITNN_WORKERS overrides (0: decode in this process)."""
    given = os.environ.get("AUDITNN_WORKERS")
    if given is not None and given.strip().isdigit():
        return int(given)
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class PixelStore(ABC):
    """The pixels of N images of one shape (C, H, W). Reads return float32 in [0, 1] on the CPU."""

    shape: tuple[int, int, int]
    in_memory: bool = True  # False: reading decodes files

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, index: torch.Tensor) -> torch.Tensor:
        """The images at `index` (int64 (n,)), as float32 (n, C, H, W), decoded here, in this process."""

    @abstractmethod
    def subset(self, index: torch.Tensor) -> PixelStore:
        """The images at `index`, in that order, as a store (nothing is decoded)."""

    @abstractmethod
    def identity(self) -> str:
        """A sha256 that changes when the images do, cheap to compute: the pixel bytes of images in memory, each
        file's path, size and modification time for files (decoding them all would cost a pass over the data)."""

    def batches(
        self, batch_size: int, *, begin: int = 0, end: int | None = None, workers: int | None = None
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, images[start:stop]) for consecutive batches of images[begin:end], in order."""
        end = len(self) if end is None else end
        for start in range(begin, end, batch_size):
            stop = min(end, start + batch_size)
            yield start, stop, self.read(torch.arange(start, stop))

    def materialize(self) -> torch.Tensor:
        """Every image as one float32 tensor (N, C, H, W), made once and kept."""
        cached = getattr(self, "_materialized", None)
        if cached is None:
            parts = [images for _, _, images in self.batches(max(1, min(len(self), 1024)))]
            cached = torch.cat(parts) if parts else torch.zeros(0, *self.shape)
            self._materialized = cached
        return cached

    def conformed(self, shape: list[int | None]) -> PixelStore:
        """The images converted to a model's input (C', H', W') as they are read (see sources.conform_images)."""
        target = _target_shape(self.shape, shape)
        return self if target == self.shape else ConformedStore(self, shape, target)


class TensorStore(PixelStore):
    """Images held in memory as uint8 (0..255, converted per read) or float32 ([0, 1]) (N, C, H, W)."""

    def __init__(self, pixels: torch.Tensor) -> None:
        if pixels.dim() != 4 or pixels.dtype not in (torch.uint8, torch.float32):
            raise AuditError(
                f"images of shape {tuple(pixels.shape)} and dtype {pixels.dtype}; allowed: (N, C, H, W) uint8 or float32"
            )
        self.pixels = pixels
        self.shape = (int(pixels.shape[1]), int(pixels.shape[2]), int(pixels.shape[3]))

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def _float(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().div_(255) if pixels.dtype == torch.uint8 else pixels

    def read(self, index: torch.Tensor) -> torch.Tensor:
        return self._float(self.pixels[index])

    def batches(
        self, batch_size: int, *, begin: int = 0, end: int | None = None, workers: int | None = None
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        end = len(self) if end is None else end
        for start in range(begin, end, batch_size):
            stop = min(end, start + batch_size)
            yield start, stop, self._float(self.pixels[start:stop])

    def subset(self, index: torch.Tensor) -> TensorStore:
        return TensorStore(self.pixels[index])

    def identity(self) -> str:
        digest = hashlib.sha256(f"{self.pixels.dtype} {list(self.pixels.shape)}".encode())
        digest.update(self.pixels.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def materialize(self) -> torch.Tensor:
        if self.pixels.dtype == torch.float32:
            return self.pixels  # already what a reader gets: no copy
        return super().materialize()


class _Decoded(torch.utils.data.Dataset):
    """Files decoded one by one (in DataLoader workers): (uint8 (C, H, W), '') or (empty, the one-line error)."""

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int]) -> None:
        self.files, self.mode, self.size = files, mode, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            return decode_image(self.files[i], self.mode, self.size), ""
        except AuditError as exc:  # raised in the reading process, as one line (a worker's traceback is noise)
            return torch.zeros(0, dtype=torch.uint8), str(exc)


def _collate(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, str]:
    errors = [error for _, error in items if error]
    if errors:
        return torch.zeros(0, dtype=torch.uint8), errors[0]
    return torch.stack([pixels for pixels, _ in items]), ""


class FolderStore(PixelStore):
    """Image files decoded when read: each converted to `mode` ('L' or 'RGB') and resized to `size` (W, H) when it
    has another size (as auditnn has always read an image folder), then scaled to [0, 1]."""

    in_memory = False

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int]) -> None:
        self.files, self.mode, self.size = list(files), mode, size
        self.shape = (1 if mode == "L" else 3, size[1], size[0])

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: torch.Tensor) -> torch.Tensor:
        if len(index) == 0:
            return torch.zeros(0, *self.shape)
        return (
            torch.stack([decode_image(self.files[i], self.mode, self.size) for i in index.tolist()]).float().div_(255)
        )

    def subset(self, index: torch.Tensor) -> FolderStore:
        return FolderStore([self.files[i] for i in index.tolist()], self.mode, self.size)

    def identity(self) -> str:
        digest = hashlib.sha256(f"{self.mode} {self.size}".encode())
        for path in self.files:
            try:
                stat = path.stat()
                digest.update(f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path} missing\n".encode())
        return digest.hexdigest()

    def batches(
        self, batch_size: int, *, begin: int = 0, end: int | None = None, workers: int | None = None
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Decoded in `workers` processes (default_workers()), a few batches ahead of the caller; a file that cannot be
        decoded stops the stream with an AuditError naming it. One batch or less is decoded here (no process start)."""
        end = len(self) if end is None else end
        if end <= begin:
            return
        workers = default_workers() if workers is None else workers
        if end - begin <= batch_size:
            workers = 0
        loader = torch.utils.data.DataLoader(
            _Decoded(self.files[begin:end], self.mode, self.size),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            prefetch_factor=2 if workers else None,
        )
        start = begin
        for pixels, error in loader:
            if error:
                raise AuditError(error)
            stop = start + len(pixels)
            yield start, stop, pixels.float().div_(255)
            del pixels  # the decoded batch goes before the next one arrives
            start = stop


class ConformedStore(PixelStore):
    """Another store's images converted to a model's declared input as they are read: gray <-> RGB, resized."""

    def __init__(self, base: PixelStore, shape: list[int | None], target: tuple[int, int, int]) -> None:
        self.base, self.target_shape, self.shape = base, list(shape), target
        self.in_memory = base.in_memory

    def __len__(self) -> int:
        return len(self.base)

    def read(self, index: torch.Tensor) -> torch.Tensor:
        return conform_images(self.base.read(index), self.target_shape)

    def subset(self, index: torch.Tensor) -> PixelStore:
        return self.base.subset(index).conformed(self.target_shape)

    def identity(self) -> str:
        return hashlib.sha256(f"{self.base.identity()} -> {self.target_shape}".encode()).hexdigest()

    def batches(
        self, batch_size: int, *, begin: int = 0, end: int | None = None, workers: int | None = None
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        for start, stop, images in self.base.batches(batch_size, begin=begin, end=end, workers=workers):
            yield start, stop, conform_images(images, self.target_shape)


def my_batches_of(
    store: PixelStore, batch_size: int, *, workers: int | None = None
) -> Iterator[tuple[int, int, int, torch.Tensor]]:
    """(global batch index, start, stop, images) for this process's batches of the store (runtime.my_batches: under
    torchrun each process reads only its own contiguous run of whole batches), in order."""
    from ..runtime import my_batches

    mine = my_batches(len(store), batch_size)
    if not mine:
        return
    batches = store.batches(batch_size, begin=mine[0][1], end=mine[-1][2], workers=workers)
    for (index, begin, end), (start, stop, images) in zip(mine, batches, strict=True):
        if (start, stop) != (begin, end):
            raise InvariantError(f"the store read images {start}:{stop} for batch {begin}:{end}")
        yield index, begin, end, images
        del images  # before the next batch is read: two batches are never held at once here


def as_store(images: torch.Tensor | PixelStore) -> PixelStore:
    """A store for in-memory images (a tensor), or the store itself."""
    return images if isinstance(images, PixelStore) else TensorStore(images)


def _target_shape(current: tuple[int, int, int], shape: list[int | None]) -> tuple[int, int, int]:
    channels, height, width = shape
    return (channels or current[0], height or current[1], width or current[2])


def conform_images(images: torch.Tensor, shape: list[int | None]) -> torch.Tensor:
    """Convert (N, C, H, W) images in [0, 1] to a model's input (C', H', W'): gray <-> RGB, bilinear resize.
    A None in `shape` keeps that size. Each image is converted on its own, so converting a batch or all at once
    gives the same pixels."""
    channels, height, width = shape
    if channels is not None and channels != images.shape[1]:
        if channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        elif channels == 1 and images.shape[1] == 3:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images * weights).sum(1, keepdim=True)
        else:
            raise AuditError(f"images with {images.shape[1]} channels cannot become {channels}; allowed: 1 <-> 3")
    size = (height or images.shape[2], width or images.shape[3])
    if size != tuple(images.shape[2:]):
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    return images.clamp(0, 1).contiguous()


# ---------------------------------------------------------------- image files


def image_header(path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) from a file's header, without decoding its pixels; an unreadable file or a header
    claiming more than MAX_IMAGE_PIXELS pixels is an AuditError naming the file."""
    with _opened(path) as img:
        return img.mode, img.size


def decode_image(path: Path, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """A file's pixels as uint8 (C, H, W): converted to `mode`, resized to `size` (W, H) when it differs."""
    with _opened(path) as img:
        try:
            img.load()
            converted = img.convert(mode)
            if converted.size != size:
                converted = converted.resize(size)
            array: Any = np.asarray(converted)
        except Exception as exc:  # damaged data behind a valid header: PIL's decoders raise OSError, SyntaxError, ...
            raise AuditError(
                f"image '{path}' cannot be decoded ({type(exc).__name__}: {exc}); remove or replace it"
            ) from None
    pixels = torch.from_numpy(array.copy())
    return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1).contiguous()


class _opened:
    """`with _opened(path) as img`: PIL's lazy open with the pixel cap and one-line errors naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):  # noqa: ANN204 - a PIL image; PIL is imported lazily
        from PIL import Image, UnidentifiedImageError

        path = self.path
        try:
            with warnings.catch_warnings():  # PIL warns on large headers; the cap below refuses them in one line
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self.img = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise AuditError(
                f"image '{path}' is refused as a decompression bomb ({exc}); allowed: at most "
                f"{MAX_IMAGE_PIXELS} pixels per image"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:  # a damaged header
            raise AuditError(f"image '{path}' cannot be decoded ({exc}); remove or replace it") from None
        width, height = self.img.size
        if width * height > MAX_IMAGE_PIXELS:
            self.img.close()
            raise AuditError(
                f"image '{path}' claims {width}x{height} pixels; allowed: at most "
                f"{MAX_IMAGE_PIXELS} pixels per image (4096x4096); resize it"
            )
        return self.img

    def __exit__(self, *exc: object) -> None:
        self.img.close()
