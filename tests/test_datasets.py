"""Tests for pegp_stream.datasets: the registry, each loader, checksums and the CIFAR-10 decode cache."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pegp_stream import datasets
from pegp_stream.datasets import (
    FASHION_MNIST_CLASS_NAMES,
    DatasetError,
    LabelledImages,
    available_datasets,
    file_sha256,
    load_dataset,
    verify_checksums,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FILES = ("mnist_uint8.npz", "fashion_mnist_uint8.npz", "cifar10_jpg.tar.xz", "SHA256SUMS")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data files in ``../shared/data`` beside the repository; skips when they are absent."""
    directory = (REPO_ROOT / ".." / "shared" / "data").resolve()
    missing = [f for f in SHARED_FILES if not (directory / f).is_file()]
    if missing:
        pytest.skip(f"shared data files {missing} not found in {directory} (see shared/data/README.md)")
    return directory


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_sums(directory: Path, entries: dict[str, str]) -> None:
    (directory / "SHA256SUMS").write_text("".join(f"{h}  {name}\n" for name, h in entries.items()))


# ------------------------------------------------------------------------------------ container, registry


def test_labelled_images_validates_and_subsets():
    images = np.zeros((4, 2, 2), np.uint8)
    data = LabelledImages(images, np.array([0, 1, 1, 0]), ("a", "b"), "toy")
    assert data.num_classes == 2 and len(data) == 4
    part = data.subset([3, 1])
    assert part.labels.tolist() == [0, 1] and part.class_names == ("a", "b")
    assert part.images.shape == (2, 2, 2)
    with pytest.raises(DatasetError, match=r"subset indices must lie in \[0, 4\)"):
        data.subset([4])
    with pytest.raises(DatasetError, match="1-D integer"):
        data.subset(np.array([True, False, True, False]))
    with pytest.raises(DatasetError, match="labels must lie in"):
        LabelledImages(images, np.array([0, 1, 2, 0]), ("a", "b"), "toy")
    with pytest.raises(DatasetError, match="uint8"):
        LabelledImages(images.astype(np.float32), np.array([0, 1, 1, 0]), ("a", "b"), "toy")
    with pytest.raises(DatasetError, match=r"\(N, H, W, 3\)"):
        LabelledImages(np.zeros((4, 2, 2, 4), np.uint8), np.array([0, 1, 1, 0]), ("a", "b"), "toy")
    with pytest.raises(DatasetError, match="4 images but 3 labels"):
        LabelledImages(images, np.array([0, 1, 1]), ("a", "b"), "toy")


def test_unknown_name_and_split_fail_with_the_valid_choices():
    valid = "valid: cifar10, digits, fashion_mnist, mnist, folder:<path>, npz:<path>"
    with pytest.raises(DatasetError, match=valid):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="unknown dataset 'zip:x'"):
        load_dataset("zip:x")
    with pytest.raises(DatasetError, match="split must be one of train, test; got 'val'"):
        load_dataset("digits", "val")
    assert "digits" in available_datasets()


def test_register_dataset_rejects_duplicates_and_bad_names():
    with pytest.raises(DatasetError, match="already registered"):
        datasets.register_dataset("digits", lambda split, data_dir, cache_dir: None)
    with pytest.raises(DatasetError, match="without ':'"):
        datasets.register_dataset("a:b", lambda split, data_dir, cache_dir: None)


# ---------------------------------------------------------------------------------------------- digits


def test_digits_shapes_classes_and_stratified_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1437, 8, 8) and test.images.shape == (360, 8, 8)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.images.max() == 255 and train.images.min() == 0
    assert train.class_names == tuple("0123456789") and train.num_classes == 10 and train.name == "digits"
    from sklearn.datasets import load_digits

    total = np.bincount(load_digits().target, minlength=10)
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10) + np.bincount(test.labels), total)
    np.testing.assert_allclose(np.bincount(test.labels) / total, 0.2, atol=0.01)


def test_digits_is_deterministic():
    first, second = load_dataset("digits", "test"), load_dataset("digits", "test")
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


# --------------------------------------------------------------------------------- shared MNIST files


@pytest.mark.parametrize(
    ("name", "class_names"), [("mnist", tuple("0123456789")), ("fashion_mnist", FASHION_MNIST_CLASS_NAMES)]
)
def test_shared_mnist_files_load(shared_data_dir, name, class_names):
    train = load_dataset(name, "train", data_dir=shared_data_dir)
    test = load_dataset(name, "test", data_dir=shared_data_dir)
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.labels.dtype == np.int64 and train.class_names == class_names and train.name == name
    assert sorted(np.unique(test.labels).tolist()) == list(range(10))


def test_mnist_class_counts_are_the_official_ones(shared_data_dir):
    train = load_dataset("mnist", "train", data_dir=shared_data_dir)
    official = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(train.labels).tolist() == official


def test_default_data_dir_from_cwd_or_repository_root(shared_data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert len(load_dataset("mnist", "test")) == 10000
    monkeypatch.chdir(tmp_path)  # ../shared/data from here does not exist: falls back to the repository root
    assert len(load_dataset("fashion_mnist", "test")) == 10000


def test_missing_shared_file_says_which_dir_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "_repository_root", lambda: tmp_path / "repo")
    with pytest.raises(DatasetError, match="mnist_uint8.npz not found .*pass data_dir="):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match=re.escape(f"looked in {tmp_path / 'elsewhere'}")):
        load_dataset("mnist", data_dir=tmp_path / "elsewhere")


def test_shared_checksums_verify(shared_data_dir):
    assert set(verify_checksums(shared_data_dir)) == {"mnist_uint8.npz", "fashion_mnist_uint8.npz",
                                                      "cifar10_jpg.tar.xz"}


# ------------------------------------------------------------------------------------------ checksums


def _tiny_mnist_npz(directory: Path) -> Path:
    path = directory / "mnist_uint8.npz"
    rng = np.random.default_rng(0)
    xtrain = rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    np.savez(path, xtrain=xtrain, ytrain=np.arange(6, dtype=np.uint8),
             xtest=np.zeros((2, 4, 4), np.uint8), ytest=np.array([0, 9], np.uint8))
    return path


def test_checksum_mismatch_is_detected(tmp_path):
    _tiny_mnist_npz(tmp_path)
    _write_sums(tmp_path, {"mnist_uint8.npz": "0" * 64})
    with pytest.raises(DatasetError, match="mnist_uint8.npz: sha256 .* does not match 0000"):
        load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="checksum verification failed .*mnist_uint8.npz: sha256"):
        verify_checksums(tmp_path)


def test_matching_checksum_loads_and_missing_entry_fails(tmp_path):
    path = _tiny_mnist_npz(tmp_path)
    _write_sums(tmp_path, {"mnist_uint8.npz": hashlib.sha256(path.read_bytes()).hexdigest()})
    data = load_dataset("mnist", "test", data_dir=tmp_path)
    assert data.labels.tolist() == [0, 9] and data.images.shape == (2, 4, 4)
    _write_sums(tmp_path, {"other.npz": "0" * 64})
    with pytest.raises(DatasetError, match="has no entry for mnist_uint8.npz"):
        load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="other.npz: missing"):
        verify_checksums(tmp_path)


def test_malformed_sums_line_is_named(tmp_path):
    _tiny_mnist_npz(tmp_path)
    (tmp_path / "SHA256SUMS").write_text("not-a-digest mnist_uint8.npz\n")
    with pytest.raises(DatasetError, match=r"SHA256SUMS:1: expected"):
        verify_checksums(tmp_path)


def test_file_digest_is_cached_per_path_mtime_and_size(tmp_path, monkeypatch):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"first")
    calls = []
    real_hash = datasets._hash_file
    monkeypatch.setattr(datasets, "_hash_file", lambda p: calls.append(p) or real_hash(p))
    assert file_sha256(path) == file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    assert len(calls) == 1
    path.write_bytes(b"second, longer")
    assert file_sha256(path) == hashlib.sha256(b"second, longer").hexdigest() and len(calls) == 2


# ------------------------------------------------------------------------------------------------ npz


def test_npz_path_with_split_keys_and_class_names(tmp_path):
    path = tmp_path / "toy.npz"
    np.savez(path, xtrain=np.ones((3, 5, 5, 1), np.uint8), ytrain=np.array([0, 2, 1]),
             xtest=np.ones((1, 5, 5, 1), np.uint8), ytest=np.array([2]),
             class_names=np.array(["x", "y", "z"]))
    train = load_dataset(f"npz:{path}")
    assert train.images.shape == (3, 5, 5) and train.class_names == ("x", "y", "z")
    assert train.name == f"npz:{path}"
    assert load_dataset("npz:toy.npz", "test", data_dir=tmp_path).labels.tolist() == [2]


def test_npz_path_with_x_y_is_train_only(tmp_path):
    path = tmp_path / "xy.npz"
    np.savez(path, x=np.zeros((4, 3, 3, 3), np.uint8), y=np.array([0, 1, 3, 1]))
    data = load_dataset(f"npz:{path}")
    assert data.images.shape == (4, 3, 3, 3) and data.class_names == ("0", "1", "2", "3")
    with pytest.raises(DatasetError, match="single split.*only split='train' is valid"):
        load_dataset(f"npz:{path}", "test")


def test_npz_path_errors_are_precise(tmp_path):
    with pytest.raises(DatasetError, match="no file"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")
    np.savez(tmp_path / "keys.npz", images=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DatasetError, match="xtrain, ytrain, xtest, ytest or x, y; found images"):
        load_dataset(f"npz:{tmp_path / 'keys.npz'}")
    np.savez(tmp_path / "float.npz", x=np.zeros((1, 2, 2), np.float32), y=np.array([0]))
    with pytest.raises(DatasetError, match="uint8"):
        load_dataset(f"npz:{tmp_path / 'float.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot read as .npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


# --------------------------------------------------------------------------------------------- folder


def test_folder_without_splits_is_train_only(tmp_path):
    for i, class_name in enumerate(["cat", "ant", "bee"]):
        for j in range(i + 1):
            _write_png(tmp_path / class_name / f"{j}.png", np.full((6, 4), 10 * i + j, np.uint8))
    (tmp_path / "ant" / "notes.txt").write_text("ignored")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.class_names == ("ant", "bee", "cat") and data.images.shape == (6, 6, 4)
    assert data.labels.tolist() == [0, 0, 1, 1, 1, 2]
    assert data.images[:, 0, 0].tolist() == [10, 11, 20, 21, 22, 0]
    with pytest.raises(DatasetError, match="train split only; split='test' is invalid"):
        load_dataset(f"folder:{tmp_path}", "test")


def test_folder_with_splits_keeps_labels_consistent(tmp_path):
    rgb = np.zeros((3, 3, 3), np.uint8)
    for class_name in ["a", "b", "c"]:
        _write_png(tmp_path / "train" / class_name / "0.jpg", rgb)
    _write_png(tmp_path / "test" / "c" / "0.png", rgb)
    test = load_dataset(f"folder:{tmp_path}", "test")
    assert test.class_names == ("a", "b", "c") and test.labels.tolist() == [2]
    assert test.images.shape == (1, 3, 3, 3)
    assert load_dataset(f"folder:{tmp_path}", "train").labels.tolist() == [0, 1, 2]


def test_folder_mixed_gray_and_rgb_become_rgb(tmp_path):
    _write_png(tmp_path / "a" / "0.png", np.full((2, 2), 7, np.uint8))
    _write_png(tmp_path / "b" / "0.png", np.full((2, 2, 3), 9, np.uint8))
    data = load_dataset(f"folder:{tmp_path}")
    assert data.images.shape == (2, 2, 2, 3) and data.images[0].tolist() == [[[7] * 3] * 2] * 2


def test_folder_errors_name_the_file(tmp_path):
    _write_png(tmp_path / "a" / "0.png", np.zeros((4, 4), np.uint8))
    _write_png(tmp_path / "b" / "odd.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"b/odd.png is 4x5 .*all images must share one size"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "b" / "odd.png").write_bytes(b"broken")
    with pytest.raises(DatasetError, match=r"odd.png: cannot decode image"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DatasetError, match="no directory"):
        load_dataset(f"folder:{tmp_path / 'absent'}")


# -------------------------------------------------------------------------------------- cifar10 (tiny)


def _tiny_cifar_archive(directory: Path, seed: int = 0) -> dict[str, bytes]:
    """A cifar10_jpg.tar.xz with the real layout (2 classes, 3 train + 1 test each); returns member bytes."""
    rng = np.random.default_rng(seed)
    members = {
        f"{split}/{class_name}/{number:04d}.jpg": _jpeg_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        for split, count in (("train", 3), ("test", 1))
        for class_name in ("truck", "bird")
        for number in range(count)
    }
    with tarfile.open(directory / "cifar10_jpg.tar.xz", "w:xz") as tar:
        for name in sorted(members, reverse=True):  # archive order must not matter
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return members


def _pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_cifar10_decodes_in_sorted_class_order(tmp_path):
    members = _tiny_cifar_archive(tmp_path)
    train = load_dataset("cifar10", "train", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert train.class_names == ("bird", "truck") and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train.images.shape == (6, 8, 8, 3) and train.name == "cifar10"
    np.testing.assert_array_equal(train.images[4], _pil_rgb(members["train/truck/0001.jpg"]))
    test = load_dataset("cifar10", "test", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(test.images[0], _pil_rgb(members["test/bird/0000.jpg"]))


def test_cifar10_cache_is_atomic_keyed_by_sha_and_reused(tmp_path, monkeypatch):
    _tiny_cifar_archive(tmp_path)
    cache = tmp_path / "cache"
    first = load_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)
    digest = hashlib.sha256((tmp_path / "cifar10_jpg.tar.xz").read_bytes()).hexdigest()
    assert [p.name for p in cache.iterdir()] == [f"cifar10-{digest}.npz"]  # no temp file left behind

    def no_decode(archive):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(datasets, "_decode_split_archive", no_decode)
    cached = load_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)
    np.testing.assert_array_equal(cached.images, first.images)
    monkeypatch.undo()
    _tiny_cifar_archive(tmp_path, seed=1)  # a changed archive is decoded again, under its own key
    changed = load_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2 and not np.array_equal(changed.images, first.images)


def test_cifar10_unreadable_cache_is_rebuilt(tmp_path):
    _tiny_cifar_archive(tmp_path)
    cache = tmp_path / "cache"
    expected = load_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)
    (cache_file,) = cache.iterdir()
    cache_file.write_bytes(b"truncated")
    rebuilt = load_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)
    np.testing.assert_array_equal(rebuilt.images, expected.images)


def test_cifar10_archive_without_test_split_fails(tmp_path):
    with tarfile.open(tmp_path / "cifar10_jpg.tar.xz", "w:xz") as tar:
        data = _jpeg_bytes(np.zeros((4, 4, 3), np.uint8))
        info = tarfile.TarInfo("train/cat/0000.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match=r"no images under test/<class>/"):
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")


# -------------------------------------------------------------------------------------- cifar10 (real)


@pytest.mark.slow
def test_real_cifar10_loads(shared_data_dir):
    """Uses the default cache (~/.cache/pegp-stream): about 14 s on 2 cores the first time, then < 1 s."""
    train = load_dataset("cifar10", "train", data_dir=shared_data_dir)
    test = load_dataset("cifar10", "test", data_dir=shared_data_dir)
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.class_names == CIFAR10_CLASSES
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
