"""Load the base image sources a spec (spec.DataSpec) names: 'digits' (the packaged UCI digits, checksummed), 'shapes'
(generated), 'torchvision:NAME' (MNIST, Fashion-MNIST, CIFAR-10 or SVHN, read from the files torchvision downloads
without unpickling code), 'imagefolder:DIR' (one sub-folder per class) and 'tensors:FILE' (.pt read weights_only, .npz
without pickles, or .safetensors).

Every source returns an ImageSet: labels as int64 (N,) and the pixels in a store (data.stream) that reads them as
float32 (N, C, H, W) in [0, 1]: uint8 sources (MNIST, CIFAR-10, SVHN, uint8 tensors files) stay uint8 in memory, an
image folder is decoded batch by batch. validate_images holds that contract; conform_images (data.stream) fits images
to a model's input shape (gray <-> RGB, resize).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import os
import pickle
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AuditError, option
from ..spec import DataSpec
from .stream import (
    GRAY_MODES,
    ConformedStore,
    FolderStore,
    PixelStore,
    TensorStore,
    as_store,
    image_header,
)

DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageSet:
    """N images of one shape and their labels: labels (N,) int64 in [0, K); the pixels in `store` (in memory or
    read from files per batch, see data.stream); `images` is every image as float32 (N, C, H, W) in [0, 1], made on
    first use (free for float32 images held in memory).

    foreground: optional, how much each pixel belongs to the object, (N, 1, H, W) in [0, 1] (the background
    shortcut paints the rest); names: per image, its file (relative to the folder) or its index, for --groups."""

    def __init__(
        self,
        images: torch.Tensor | PixelStore,
        labels: torch.Tensor,
        classes: list[str],
        foreground: torch.Tensor | PixelStore | None = None,
        names: list[str] | None = None,
    ) -> None:
        self.store = as_store(images)
        self.labels = labels
        self.classes = classes
        self._foreground = None if foreground is None else as_store(foreground)
        self.names = names

    @property
    def images(self) -> torch.Tensor:
        return self.store.materialize()

    @property
    def foreground(self) -> torch.Tensor | None:
        return None if self._foreground is None else self._foreground.materialize()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: torch.Tensor) -> ImageSet:
        fg = None if self._foreground is None else self._foreground.subset(index)
        names = None if self.names is None else [self.names[i] for i in index.tolist()]
        return ImageSet(self.store.subset(index), self.labels[index], self.classes, fg, names)


@dataclass
class BaseData:
    """A source's images. `test` holds the source's official test split when it has one."""

    spec: str
    train: ImageSet
    test: ImageSet | None = None
    notes: dict[str, object] = field(default_factory=dict)


def validate_images(images: torch.Tensor | PixelStore, labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Reject anything that breaks the pixel-space contract, naming where it came from. A store is checked without
    decoding: uint8 pixels and decoded files are in [0, 1] by construction; float32 pixels in memory are checked."""
    store = as_store(images)
    while isinstance(store, ConformedStore):
        store = store.base
    pixels = store.pixels if isinstance(store, TensorStore) else None
    n = len(store)
    if store.shape[0] not in (1, 3):
        raise AuditError(f"images from {where} have shape {(n, *store.shape)}; allowed: (N, C, H, W) with C = 1 or 3")
    if pixels is not None and pixels.dtype == torch.float32 and pixels.numel():
        if not torch.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise AuditError(f"images from {where} have values outside [0, 1] or NaN; allowed: float32 in [0, 1]")
    if labels.shape != (n,):
        raise AuditError(f"labels from {where} have shape {tuple(labels.shape)}; allowed: ({n},), one per image")
    if num_classes < 2:
        raise AuditError(f"{where} has K = {num_classes} class(es); allowed: K >= 2")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise AuditError(f"labels from {where} fall outside [0, {num_classes}); allowed: 0 .. K-1")


def load_source(
    spec: str | DataSpec,
    *,
    data_root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    size: int | None = None,
    strict: bool = False,
) -> BaseData:
    """Load a source (a spec string is parsed by spec.DataSpec.source). `size` is the number of images for generated
    sources; `strict` makes non-image files in an image folder an error instead of skipped and counted."""
    parsed = spec if isinstance(spec, DataSpec) else DataSpec.source(spec)
    kind, arg, spec = parsed.kind, parsed.arg, parsed.text
    if kind == "digits":
        return BaseData(spec, load_digits(seed=seed))
    if kind == "shapes":
        return BaseData(spec, make_shapes(size or 3000, seed=seed))
    if kind == "torchvision":
        return load_torchvision(arg, data_root=data_root, download=download)
    if kind == "tensors":
        return BaseData(spec, load_tensors(arg))
    images, skipped = load_imagefolder(arg, strict=strict)
    return BaseData(spec, images, notes={"skipped_files": skipped})


# ---------------------------------------------------------------- digits


@functools.cache
def _digits_bytes() -> bytes:
    """The packaged digits asset, checked against DIGITS_SHA256 (57 KB: read and hashed once per process)."""
    asset = resources.files("auditnn.data").joinpath("assets/digits.csv.gz")
    data = asset.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != DIGITS_SHA256:
        raise AuditError(
            f"digits asset '{asset}' has sha256 {digest}, expected {DIGITS_SHA256}; "
            "the installed file is damaged or replaced: reinstall auditnn"
        )
    return data


def load_digits(*, seed: int = 0, frame: int = 28, digit_size: int = 20) -> ImageSet:
    """The UCI 8x8 hand-written digits (1,797 images), upsampled to digit_size x digit_size and placed at a
    random position (seeded) inside a black frame x frame canvas.

    The random position is what makes the digit a harder feature than a fixed-place shortcut: with the digit
    filling the frame, even a perfectly predictive 6x6 corner watermark was ignored (README, 'Defaults').
    """
    rows = np.loadtxt(gzip.open(io.BytesIO(_digits_bytes())), delimiter=",", dtype=np.float32)
    pixels = torch.from_numpy(rows[:, :64].copy()).reshape(-1, 1, 8, 8) / 16.0
    labels = torch.from_numpy(rows[:, 64].astype(np.int64))
    digits = F.interpolate(pixels, size=(digit_size, digit_size), mode="bilinear", align_corners=False).clamp(0, 1)
    gen = torch.Generator().manual_seed(seed)
    slack = frame - digit_size
    offsets = torch.randint(0, slack + 1, (len(labels), 2), generator=gen)
    canvas = torch.zeros(len(labels), 1, frame, frame)
    for i, (top, left) in enumerate(offsets.tolist()):
        canvas[i, :, top : top + digit_size, left : left + digit_size] = digits[i]
    return ImageSet(canvas, labels, [str(d) for d in range(10)], foreground=canvas.clone())


# ---------------------------------------------------------------- shapes

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")


def _shape_masks(x: torch.Tensor, y: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """Inside-tests for every class at once over local coordinates (N, H, W); pick each image's own class."""
    r = torch.sqrt(x * x + y * y)
    phi = torch.atan2(y, x)
    tri = torch.ones_like(x, dtype=torch.bool)
    for k in range(3):  # an equilateral triangle as three half-planes
        angle = math.pi / 2 + 2 * math.pi * k / 3
        tri &= x * math.cos(angle) + y * math.sin(angle) <= 0.5
    inside = torch.stack(
        [
            r <= 0.9,
            torch.maximum(x.abs(), y.abs()) <= 0.75,
            tri,
            ((x.abs() <= 0.28) & (y.abs() <= 0.95)) | ((y.abs() <= 0.28) & (x.abs() <= 0.95)),
            (r <= 0.95) & (r >= 0.55),
            r <= 0.5 + 0.45 * torch.cos(5 * phi),
        ]
    )  # (6, N, H, W)
    return inside.gather(0, kind.view(1, -1, 1, 1).expand(1, *x.shape)).squeeze(0)


def make_shapes(n: int, *, seed: int = 0, size: int = 32, device: str | torch.device = "cpu") -> ImageSet:
    """Procedural RGB shapes: 6 classes, random position, scale, rotation and colour, on a textured background.

    Fully vectorized (runs on the GPU when `device` is one); the same seed gives the same images.
    """
    if n < len(SHAPE_CLASSES):
        raise AuditError(f"shapes size {n} is too small; allowed: at least {len(SHAPE_CLASSES)} images")
    gen = torch.Generator().manual_seed(seed)

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return (low + (high - low) * torch.rand(*shape, generator=gen)).to(device)

    labels = torch.arange(n) % len(SHAPE_CLASSES)
    labels = labels[torch.randperm(n, generator=gen)].to(device)
    scale = uniform(n, low=0.3, high=0.55)  # half-width as a fraction of the half-frame
    cx = (uniform(n) * 2 - 1) * (1 - scale)
    cy = (uniform(n) * 2 - 1) * (1 - scale)
    theta = uniform(n, high=2 * math.pi)
    # Supersample 2x and average: soft, anti-aliased edges for the foreground mask.
    fine = size * 2
    axis = (torch.arange(fine, device=device, dtype=torch.float32) + 0.5) / fine * 2 - 1
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    dx = gx.unsqueeze(0) - cx.view(-1, 1, 1)
    dy = gy.unsqueeze(0) - cy.view(-1, 1, 1)
    cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    local_x = (cos * dx + sin * dy) / scale.view(-1, 1, 1)
    local_y = (-sin * dx + cos * dy) / scale.view(-1, 1, 1)
    inside = _shape_masks(local_x, local_y, labels).float().unsqueeze(1)
    foreground = F.avg_pool2d(inside, 2)  # (N, 1, size, size) in [0, 1]

    # Background: two dark colours mixed by a random oriented stripe pattern, plus fine noise.
    pix = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    py, px = torch.meshgrid(pix, pix, indexing="ij")
    freq = uniform(n, low=2.0, high=6.0).view(-1, 1, 1)
    orient = uniform(n, high=math.pi).view(-1, 1, 1)
    phase = uniform(n, high=2 * math.pi).view(-1, 1, 1)
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * (px * torch.cos(orient) + py * torch.sin(orient)) + phase)
    colour_a = uniform(n, 3, low=0.0, high=0.45).view(-1, 3, 1, 1)
    colour_b = uniform(n, 3, low=0.0, high=0.45).view(-1, 3, 1, 1)
    noise = uniform(n, 1, size, size, low=-0.05, high=0.05)
    background = (colour_a + (colour_b - colour_a) * stripes.unsqueeze(1) + noise).clamp(0, 1)
    colour_fg = uniform(n, 3, low=0.55, high=1.0).view(-1, 3, 1, 1)
    images = (background * (1 - foreground) + colour_fg * foreground).clamp(0, 1).float()
    return ImageSet(images.cpu(), labels.cpu().long(), list(SHAPE_CLASSES), foreground.cpu())


# ---------------------------------------------------------------- torchvision datasets (their own on-disk formats)


def _need_root(name: str, data_root: str | Path | None) -> Path:
    if data_root is None:
        raise AuditError(
            f"data source 'torchvision:{name}' needs {option('--data-root', 'data.data_root')} DIR (add "
            f"{option('--download', 'data.download')} to fetch it)"
        )
    return Path(data_root)


def _download(name: str, root: Path) -> None:
    """Fetch with torchvision's own downloader (checksummed); loading below reads the files it leaves."""
    import torchvision.datasets as tvd

    classes = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}
    try:
        if name == "svhn":
            for split in ("train", "test"):
                tvd.SVHN(str(root), split=split, download=True)
        else:
            for train in (True, False):
                classes[name](str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise AuditError(f"downloading torchvision:{name} into '{root}' failed ({exc}); check the network") from None


def _read_idx(path: Path) -> np.ndarray:
    """The IDX format of MNIST and Fashion-MNIST: magic (2 zero bytes, type, ndim), big-endian dims, data."""
    candidates = [path, path.with_name(path.name + ".gz")]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise AuditError(
            f"file '{path}' is missing; the MNIST layout is ROOT/<Name>/raw/<file>, or use {option('--download', 'data.download')}"
        )
    raw = gzip.open(found).read() if found.suffix == ".gz" else found.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise AuditError(f"file '{found}' is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise AuditError(f"file '{found}' is truncated: header says {dims}, found {body.size} values")
    return body.reshape(dims)


def _load_mnist_like(name: str, root: Path) -> BaseData:
    folder = root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
    classes = (
        [str(d) for d in range(10)]
        if name == "mnist"
        else ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    )
    splits = []
    for prefix in ("train", "t10k"):
        images = _read_idx(folder / f"{prefix}-images-idx3-ubyte")
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte")
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise AuditError(f"files in '{folder}' have mismatched shapes {images.shape} and {labels.shape}")
        x = TensorStore(torch.from_numpy(images.copy()).unsqueeze(1))  # uint8: float per batch
        splits.append(ImageSet(x, torch.from_numpy(labels.astype(np.int64)), classes, foreground=x))
    return BaseData(f"torchvision:{name}", splits[0], splits[1])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles; allow only what rebuilds numpy arrays, so a hostile file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _load_cifar10(root: Path) -> BaseData:
    folder = root / "cifar-10-batches-py"
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def read(names: list[str]) -> ImageSet:
        xs, ys = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise AuditError(
                    f"file '{path}' is missing; the CIFAR-10 layout is ROOT/cifar-10-batches-py/, "
                    f"or use {option('--download', 'data.download')}"
                )
            try:
                with open(path, "rb") as handle:
                    batch = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels = np.asarray(batch["labels"], dtype=np.int64)
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
                raise AuditError(f"file '{path}' is not a CIFAR-10 batch ({exc})") from None
            xs.append(torch.from_numpy(data.copy()))
            ys.append(torch.from_numpy(labels))
        return ImageSet(TensorStore(torch.cat(xs)), torch.cat(ys), classes)  # uint8: float per batch

    return BaseData("torchvision:cifar10", read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"]))


def _load_svhn(root: Path) -> BaseData:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise AuditError(
            "data source 'torchvision:svhn' needs scipy to read its .mat files; pip install 'auditnn[svhn]'"
        ) from None
    splits = []
    for split in ("train", "test"):
        path = root / f"{split}_32x32.mat"
        if not path.is_file():
            raise AuditError(
                f"file '{path}' is missing; the SVHN layout is ROOT/{{train,test}}_32x32.mat, "
                f"or use {option('--download', 'data.download')}"
            )
        try:
            mat = loadmat(str(path))
            x = np.transpose(mat["X"], (3, 2, 0, 1))  # stored (H, W, C, N)
            y = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
        except (KeyError, ValueError, OSError) as exc:
            raise AuditError(f"file '{path}' is not an SVHN .mat file ({exc})") from None
        images = TensorStore(torch.from_numpy(x.copy()))  # uint8: float per batch
        splits.append(ImageSet(images, torch.from_numpy(y), [str(d) for d in range(10)]))
    return BaseData("torchvision:svhn", splits[0], splits[1])


def load_torchvision(name: str, *, data_root: str | Path | None, download: bool) -> BaseData:
    root = _need_root(name, data_root)
    if download:
        _download(name, root)
    if name in ("mnist", "fashionmnist"):
        return _load_mnist_like(name, root)
    if name == "cifar10":
        return _load_cifar10(root)
    return _load_svhn(root)


# ---------------------------------------------------------------- imagefolder


def _files_in(folder: Path) -> list[Path]:
    """Every file under a class folder, sorted; a sub-folder that cannot be listed is an error, not an empty class."""

    def refuse(exc: OSError) -> None:
        raise AuditError(
            f"class folder '{exc.filename or folder}' cannot be read ({exc.strerror or exc}); "
            "allowed: folders you can list and read"
        )

    found = []
    for top, _, names in os.walk(folder, onerror=refuse):
        found += [Path(top) / name for name in names if (Path(top) / name).is_file()]
    return sorted(found)


def load_imagefolder(directory: str | Path, *, strict: bool = False) -> tuple[ImageSet, int]:
    """One sub-folder per class (sorted names are the classes), each holding at least one image. Returns (images,
    number of non-image files skipped); with strict, a non-image file is an error. Images of other sizes are
    resized to the first image's size. Grayscale when every image is single-channel, else RGB.

    Only the headers are read here (a file that is not an image, or claims too many pixels, is refused now); the
    pixels are decoded batch by batch when read (data.stream.FolderStore)."""
    root = Path(directory)
    if not root.is_dir():
        raise AuditError(f"imagefolder '{root}' is not a folder; give a folder with one sub-folder per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    everything = [(label, f) for label, d in enumerate(class_dirs) for f in _files_in(d)]
    files = [(label, f) for label, f in everything if f.suffix.lower() in IMAGE_SUFFIXES]
    others = [f for _, f in everything if f.suffix.lower() not in IMAGE_SUFFIXES]
    if strict and others:
        raise AuditError(
            f"imagefolder '{root}' holds {len(others)} non-image file(s), e.g. '{others[0].relative_to(root)}'; "
            f"allowed under {option('--strict', 'data.strict')}: only {', '.join(IMAGE_SUFFIXES)}"
        )
    if len(class_dirs) < 2 or not files:
        raise AuditError(
            f"imagefolder '{root}' has {len(class_dirs)} class folder(s) and {len(files)} image(s); "
            "allowed: at least 2 class sub-folders holding images"
        )
    present = {label for label, _ in files}
    empty = [folder for label, folder in enumerate(class_dirs) if label not in present]
    if empty:
        raise AuditError(
            f"class folder '{empty[0]}' holds no images; allowed: every class folder holds at least one "
            f"image ({', '.join(IMAGE_SUFFIXES)}); remove the folder or add its images"
        )
    headers = [image_header(path) for _, path in files]  # every file's mode and size, no pixel decoded
    gray = all(mode in GRAY_MODES for mode, _ in headers)
    images = FolderStore([path for _, path in files], "L" if gray else "RGB", headers[0][1])
    labels = torch.tensor([label for label, _ in files], dtype=torch.int64)
    names = [f.relative_to(root).as_posix() for _, f in files]
    return ImageSet(images, labels, [d.name for d in class_dirs], names=names), len(others)


# ---------------------------------------------------------------- tensors files


def _as_pixels(images: torch.Tensor, where: str) -> torch.Tensor:
    """uint8 (0..255) or float ([0, 1]) images in (N, H, W), (N, C, H, W) or (N, H, W, C) -> NCHW, uint8 kept as
    uint8 (read as float per batch), float as float32 in [0, 1]."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.dim() == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        images = images.permute(0, 3, 1, 2)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise AuditError(
            f"images in {where} have shape {tuple(images.shape)}; "
            "allowed: (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3"
        )
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        raise AuditError(f"images in {where} have dtype {images.dtype}; allowed: uint8 (0..255) or float (0..1)")
    images = images.float().contiguous()
    if images.numel() and (not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1):
        raise AuditError(f"float images in {where} fall outside [0, 1]; allowed: uint8 0..255 or float 0..1")
    return images


def _kind(value: object) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"a {type(value).__name__} of {value.dtype}"
    return f"a {type(value).__name__}"


def _numbers(value: object, key: str, where: str) -> torch.Tensor:
    """A tensor, a numeric array or a (nested) list of numbers as a tensor; anything else names what it is."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(value)
    if isinstance(value, torch.Tensor) and not value.is_complex():
        return value
    if isinstance(value, (list, tuple)):
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            pass  # strings or ragged lists: refused below
    raise AuditError(
        f"'{key}' in {where} is {_kind(value)}; allowed: a tensor or array of numbers"
        + (" (class names go in 'classes')" if key == "labels" else "")
    )


def _labels(value: object, where: str) -> torch.Tensor:
    labels = _numbers(value, "labels", where).reshape(-1)
    if labels.is_floating_point():
        bad = ~torch.isfinite(labels) | (labels != labels.round())
        if bad.any():
            raise AuditError(
                f"labels in {where} include {labels[bad][0].item():g}; allowed: whole class indices "
                "0..K-1 (a fraction would be truncated to another class)"
            )
    return labels.long()


def _class_names(value: object, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        raise AuditError(
            f"'classes' in {where} is {_kind(value)}; allowed: a list of class names (strings), one per label value"
        )
    return list(value)


def load_tensors(path: str | Path) -> ImageSet:
    """A file with 'images' and 'labels' (and optionally 'classes', a list of names): .pt/.pth read with
    torch.load(weights_only=True), .npz read without pickles, or .safetensors."""
    from ..formats import read_npz, read_safetensors, regular_file
    from ..io import safe_torch_load

    where = f"tensors file '{path}'"
    path = regular_file(path, "tensors file", "give a .pt, .npz or .safetensors file with images and labels")
    if path.suffix == ".npz":
        data: object = read_npz(path, "tensors file")
    elif path.suffix == ".safetensors":
        data = read_safetensors(path, "tensors file")
    else:
        data = safe_torch_load(path, "tensors file")
    if not isinstance(data, dict):
        raise AuditError(f"{where} holds a {type(data).__name__}; allowed: a dict with 'images' and 'labels'")
    missing = [k for k in ("images", "labels") if k not in data]
    if missing:
        raise AuditError(
            f"{where} has no '{missing[0]}'; allowed: a mapping with 'images' and 'labels' (and 'classes')"
        )
    images = _as_pixels(_numbers(data["images"], "images", where), where)
    labels = _labels(data["labels"], where)
    classes = _class_names(data.get("classes"), where)
    if len(labels) == 0:
        raise AuditError(f"{where} holds no images; allowed: at least one image per class")
    num_classes = len(classes) if classes is not None else int(labels.max()) + 1
    validate_images(images, labels, num_classes, where)
    names = [str(i) for i in range(len(labels))]
    return ImageSet(images, labels, classes or [str(k) for k in range(num_classes)], names=names)
