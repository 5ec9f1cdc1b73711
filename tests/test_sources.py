import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auditnn.data import sources
from auditnn.data.sources import load_source, make_shapes
from auditnn.errors import AuditError
from auditnn.io import sha256_bytes


def test_digits_asset_matches_its_recorded_checksum():
    assert sha256_bytes(sources._digits_bytes()) == sources.DIGITS_SHA256


def test_digits_are_1797_images_in_pixel_space(digits_base):
    train = digits_base.train
    assert train.images.shape == (1797, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert torch.bincount(train.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # the digit occupies a 20x20 box at a seeded random place: every image has ink, none everywhere
    ink = (train.images > 0).flatten(1).sum(1)
    assert ink.min() > 0 and ink.max() <= 400


def test_shapes_are_deterministic_balanced_and_in_range():
    a, b, c = make_shapes(60, seed=3), make_shapes(60, seed=3), make_shapes(60, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (60, 3, 32, 32) and len(a.classes) >= 6
    assert torch.bincount(a.labels).tolist() == [10] * 6
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0
    assert a.foreground is not None and (a.foreground.flatten(1).sum(1) > 5).all()


def test_unknown_source_names_the_spec_and_the_allowed_forms():
    with pytest.raises(AuditError, match="'pictures'.*digits, shapes"):
        load_source("pictures")
    with pytest.raises(AuditError, match="torchvision:imagenet"):
        load_source("torchvision:imagenet", data_root="x")
    with pytest.raises(AuditError, match="--data-root"):
        load_source("torchvision:mnist")


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_formats_load_from_idx_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (12, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte", train_x)
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(12) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)), compress=True)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(5), compress=True)
    data = load_source(f"torchvision:{name}", data_root=tmp_path)
    assert data.train.images.shape == (12, 1, 28, 28) and data.test.images.shape == (5, 1, 28, 28)
    assert torch.allclose(data.train.images[3, 0] * 255, torch.from_numpy(train_x[3]).float())
    assert data.train.labels.tolist() == (np.arange(12) % 10).tolist()


def test_cifar10_loads_its_pickled_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [1, 2, 3, 4]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    data = load_source("torchvision:cifar10", data_root=tmp_path)
    assert data.train.images.shape == (20, 3, 32, 32) and data.test.images.shape == (4, 3, 32, 32)
    assert data.train.labels[:4].tolist() == [1, 2, 3, 4] and data.train.classes[0] == "airplane"


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(_RunsCode.target),))


def test_cifar10_batch_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _RunsCode.target = str(tmp_path / "pwned")
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": _RunsCode(), "labels": [0]}))
    with pytest.raises(AuditError, match="not a CIFAR-10 batch.*refused"):
        load_source("torchvision:cifar10", data_root=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_svhn_loads_its_mat_files(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        savemat(
            tmp_path / f"{split}_32x32.mat",
            {
                "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                "y": np.array([[10], [1], [2], [3], [4], [5]][:n], dtype=np.uint8),
            },
        )
    data = load_source("torchvision:svhn", data_root=tmp_path)
    assert data.train.images.shape == (6, 3, 32, 32) and data.test.images.shape == (3, 3, 32, 32)
    assert data.train.labels.tolist() == [0, 1, 2, 3, 4, 5]  # SVHN writes the digit 0 as 10


def test_imagefolder_reads_class_folders_and_skips_other_files(tmp_path):
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 12), 40 * k + i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = load_source(f"imagefolder:{tmp_path}")
    assert data.train.classes == ["cat", "dog"]
    assert data.train.images.shape == (6, 1, 10, 12)
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_imagefolder_with_fewer_than_two_classes_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(AuditError, match="1 class folder.*at least 2"):
        load_source(f"imagefolder:{tmp_path}")
    with pytest.raises(AuditError, match="not a folder"):
        load_source(f"imagefolder:{tmp_path / 'missing'}")
