"""Tests for pegp_stream.data.datasets: the registry, each loader, checksums, the CIFAR-10 decode cache, torchvision's
layouts and downloads (refused here), and the demo's choice of stream."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pegp_stream.config import DaemonConfig, load
from pegp_stream.data import datasets
from pegp_stream.data.datasets import (
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
    """The real data files where load_dataset looks by default ($PEGPSTREAM_DATA, else ../shared/data);
    skips, naming the folders and how to point at the files, when a clone has none of them."""
    folders = datasets.default_data_dirs()
    for directory in folders:
        if all((directory / f).is_file() for f in SHARED_FILES):
            return directory.resolve()
    pytest.skip(f"needs the shared data files {', '.join(SHARED_FILES)}, found in none of "
                f"{', '.join(str(f) for f in folders)}; set {datasets.DATA_ENV} to the folder holding them")


@pytest.fixture
def no_network(monkeypatch) -> None:
    """Every download in the test meets a refused connection: urllib (torchvision's downloader) and the
    proxy variables other clients read are pointed at a local port nothing listens on."""
    dead = "http://127.0.0.1:9"
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, dead)
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": dead, "https": dead}))
    monkeypatch.setattr(urllib.request, "_opener", opener)  # urlopen's process-wide opener, built once


@pytest.fixture
def no_local_data(monkeypatch, tmp_path) -> Path:
    """No default data folder and an empty default cache (HOME in tmp); returns that cache folder."""
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "no-data-here"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home" / ".cache" / "pegp-stream"


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
    valid = "valid: cifar10, cifar100, digits, fashion_mnist, mnist, svhn, folder:<path>, npz:<path>"
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


def test_default_data_dir_is_env_else_shared_from_cwd_or_repository_root(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.DATA_ENV, raising=False)
    repo, shared = tmp_path / "repo", tmp_path / "shared" / "data"
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    shared.mkdir(parents=True)
    repo.mkdir()
    _tiny_mnist_npz(shared)
    monkeypatch.setattr(datasets, "_repository_root", lambda: repo)
    monkeypatch.chdir(repo)
    assert len(load_dataset("mnist", "test")) == 2
    monkeypatch.chdir(tmp_path / "elsewhere" / "deeper")  # no ../shared/data here: the repository root's
    assert len(load_dataset("mnist", "train")) == 6
    own = tmp_path / "own"
    own.mkdir()
    _tiny_mnist_npz(own, train=3)
    monkeypatch.setenv(datasets.DATA_ENV, str(own))  # $PEGPSTREAM_DATA replaces ../shared/data
    assert datasets.default_data_dirs() == (own,)
    assert len(load_dataset("mnist", "train")) == 3
    assert load(DaemonConfig, None, {datasets.DATA_ENV: str(own)}) == DaemonConfig()  # not a config key


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"])
def test_unavailable_data_set_names_both_ways(name, tmp_path, no_network, no_local_data):
    with pytest.raises(DatasetError) as raised:
        load_dataset(name, "test")
    message = str(raised.value)
    assert "download failed" in message and "Connection refused" in message
    assert "--data-dir" in message and "stream.data_dir" in message and datasets.DATA_ENV in message
    assert str(tmp_path / "no-data-here") in message  # where it looked
    assert f"downloads into {no_local_data / 'torchvision'}" in message
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(DatasetError, match=re.escape(f"looked in {elsewhere})")):
        load_dataset(name, data_dir=elsewhere, cache_dir=tmp_path / "cache")


def test_shared_checksums_verify(shared_data_dir):
    assert set(verify_checksums(shared_data_dir)) == {"mnist_uint8.npz", "fashion_mnist_uint8.npz",
                                                      "cifar10_jpg.tar.xz"}


# ------------------------------------------------------------------------------------------ checksums


def _tiny_mnist_npz(directory: Path, train: int = 6) -> Path:
    path = directory / "mnist_uint8.npz"
    rng = np.random.default_rng(0)
    xtrain = rng.integers(0, 256, (train, 4, 4), dtype=np.uint8)
    np.savez(path, xtrain=xtrain, ytrain=np.arange(train, dtype=np.uint8),
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


# ---------------------------------------------------------------------- torchvision's layout (tiny copies)
# Each writer lays out a few images exactly as torchvision's download leaves them, so the loaders read them
# through torchvision with download=False: the path a download ends in, and the offline one.


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: magic 0x0000080<ndim> (unsigned bytes), big-endian int32 sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _tiny_torchvision_mnist(root: Path, folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`root/<folder>/raw/` with 5 train and 3 test 28x28 images; returns {split: (images, labels)}."""
    rng = np.random.default_rng(1)
    splits = {"train": (rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.array([3, 1, 4, 1, 5])),
              "test": (rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([9, 2, 6]))}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = splits[split]
        _write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return splits


@pytest.mark.parametrize(("name", "folder", "class_names"),
                         [("mnist", "MNIST", tuple("0123456789")),
                          ("fashion_mnist", "FashionMNIST", FASHION_MNIST_CLASS_NAMES)])
def test_mnist_like_from_torchvision_layout(name, folder, class_names, tmp_path, no_network):
    expected = _tiny_torchvision_mnist(tmp_path, folder)
    for split, (images, labels) in expected.items():
        data = load_dataset(name, split, data_dir=tmp_path, cache_dir=tmp_path / "cache")
        np.testing.assert_array_equal(data.images, images)
        assert data.labels.dtype == np.int64 and data.labels.tolist() == labels.tolist()
        assert data.class_names == class_names and data.name == name


def test_download_folder_is_read_offline(tmp_path, no_network, no_local_data):
    """What an earlier run downloaded (torchvision's layout in the cache) serves later runs without network."""
    expected = _tiny_torchvision_mnist(datasets.download_dir(), "MNIST")
    assert datasets.download_dir() == no_local_data / "torchvision"
    np.testing.assert_array_equal(load_dataset("mnist", "test").images, expected["test"][0])


def test_shared_file_wins_over_torchvision_layout_in_the_same_folder(tmp_path, no_network):
    _tiny_torchvision_mnist(tmp_path, "MNIST")
    _tiny_mnist_npz(tmp_path)
    assert load_dataset("mnist", "train", data_dir=tmp_path).images.shape == (6, 4, 4)


@pytest.fixture
def trust_md5(monkeypatch) -> None:
    """torchvision checks each CIFAR/SVHN file against the md5 of the real release, which a tiny copy cannot
    match: here a present file counts as intact. Only the checksum is bypassed; the files are read for real."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn

    def present(fpath, md5=None) -> bool:
        return Path(fpath).is_file()

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", present)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", present)


def _cifar_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` 32x32 RGB images, (N, 32, 32, 3)."""
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def _pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(entry))


def _tiny_cifar(root: Path, hundred: bool) -> dict[str, tuple[np.ndarray, list[int]]]:
    """CIFAR-10's ``cifar-10-batches-py`` (5 train batches, test_batch, batches.meta) or CIFAR-100's
    ``cifar-100-python`` (train, test, meta), rows as (N, 3072) channel-major like the real pickles."""
    rng = np.random.default_rng(2)
    folder, label_key = ("cifar-100-python", "fine_labels") if hundred else ("cifar-10-batches-py", "labels")
    files = {"train": ["train"], "test": ["test"]} if hundred else \
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    expected = {}
    for split, names in files.items():
        parts = [(_cifar_rows(rng, 2), [i % 3, (i + 1) % 3]) for i in range(len(names))]
        for name, (images, labels) in zip(names, parts, strict=True):
            _pickle(root / folder / name, {"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
                                           label_key: labels})
        expected[split] = (np.concatenate([p[0] for p in parts]), [label for p in parts for label in p[1]])
    meta = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    _pickle(root / folder / meta[0], {meta[1]: ["apple", "bus", "cat"]})
    return expected


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_torchvision_layout(name, tmp_path, no_network, trust_md5):
    expected = _tiny_cifar(tmp_path, hundred=name == "cifar100")
    for split, (images, labels) in expected.items():
        data = load_dataset(name, split, data_dir=tmp_path, cache_dir=tmp_path / "cache")
        np.testing.assert_array_equal(data.images, images)
        assert data.labels.tolist() == labels and data.class_names == ("apple", "bus", "cat")


def test_svhn_from_torchvision_layout(tmp_path, no_network, trust_md5):
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    images = _cifar_rows(rng, 4)
    savemat(tmp_path / "test_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": np.array([[10], [1], [9], [10]])})
    data = load_dataset("svhn", "test", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(data.images, images)
    assert data.labels.tolist() == [0, 1, 9, 0]  # SVHN writes digit 0 as label 10
    assert data.class_names == tuple("0123456789")


# -------------------------------------------------------------------------------------------------- demo


def test_demo_streams_mnist_when_it_can_get_it_else_digits(tmp_path, monkeypatch, no_network, no_local_data):
    from pegp_stream.data.demo import demo_stream_datasets

    demo_stream_datasets.cache_clear()
    assert demo_stream_datasets() == ("digits",)
    _tiny_torchvision_mnist(tmp_path / "data", "MNIST")
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "data"))
    demo_stream_datasets.cache_clear()
    assert demo_stream_datasets() == ("mnist",)
    demo_stream_datasets.cache_clear()


def test_a_limited_draw_holds_every_class_of_a_split_stored_sorted_by_class():
    """`sample` (pretrain --limit, distill --limit) draws at random, not the first N: the shared CIFAR-10 train
    split is stored sorted by class."""
    digits = datasets.load_dataset("digits", "train")
    by_class = digits.subset(np.argsort(digits.labels, kind="stable"))  # stored like the shared CIFAR-10 split
    subset = by_class.sample(60, seed=0)
    assert len(subset) == 60 and set(subset.labels.tolist()) == set(range(10))
    assert np.array_equal(by_class.sample(60, seed=0).images, subset.images)
    assert by_class.sample(None, seed=0) is by_class
