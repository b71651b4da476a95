"""Labelled image data sets, loaded whole into memory.

`load_dataset(name, split)` looks `name` up in one registry:

- ``digits``: scikit-learn's bundled 8x8 digits (never downloads); a fixed stratified 80/20 split, seed 0.
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn``: local files when there are any, else
  torchvision's download. Each folder searched (``data_dir``; without it ``$PEGPSTREAM_DATA``, or
  ``../shared/data``; then the download folder ``~/.cache/pegp-stream/torchvision``) may hold the shared
  format (``mnist_uint8.npz``/``fashion_mnist_uint8.npz`` with keys ``xtrain ytrain xtest ytest``;
  ``cifar10_jpg.tar.xz`` with ``<split>/<class>/NNNN.jpg``, decoded once and cached as an uncompressed
  ``.npz`` keyed by the archive's sha256) or torchvision's layout (what its ``download=True`` writes).
  Without either, torchvision downloads into the download folder; without network that fails with a
  `DatasetError` naming both ways.
- ``npz:<path>``: any ``.npz`` with keys ``xtrain ytrain xtest ytest`` or ``x y`` (train split only).
- ``folder:<path>``: ``<path>/<class>/<image>`` or ``<path>/{train,test}/<class>/<image>``.

Shared files are checked against the ``SHA256SUMS`` file beside them when one exists; torchvision checks
the md5 of its CIFAR and SVHN files itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from pegp_stream.errors import PegpError

__all__ = [
    "DATA_ENV",
    "DatasetError",
    "DatasetLoader",
    "LabelledImages",
    "SPLITS",
    "available_datasets",
    "default_cache_dir",
    "default_data_dirs",
    "download_dir",
    "file_sha256",
    "load_dataset",
    "read_sha256sums",
    "register_dataset",
    "verify_checksums",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
SHA256SUMS_FILENAME = "SHA256SUMS"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DIGIT_CLASS_NAMES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Environment variable naming the local data folder (instead of ../shared/data). Not PEGP_*: every PEGP_
# variable sets a configuration key, and an unknown key is an error.
DATA_ENV = "PEGPSTREAM_DATA"
# Grayscale Pillow modes; any other mode is decoded as RGB.
_GRAY_MODES = frozenset({"1", "L"})


class DatasetError(PegpError, ValueError):
    """A data set name, split, file or its content is invalid. The message names the file or the argument."""


# --------------------------------------------------------------------------------------------- container


@dataclass(frozen=True, eq=False)
class LabelledImages:
    """A whole labelled image data set (one split) in memory.

    `images` is uint8, shape (N, H, W) for grayscale or (N, H, W, 3) for RGB; `labels` is int64, shape
    (N,), each in ``[0, num_classes)``; `class_names[label]` names the class. Arrays are shared, not copied.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        _check_images(self.images, self.name)
        _check_labels(self.labels, len(self.images), len(self.class_names), self.name)
        if not all(isinstance(c, str) for c in self.class_names):
            raise DatasetError(f"{self.name}: class_names must be a tuple of str, got {self.class_names!r}")

    @property
    def num_classes(self) -> int:
        """Number of classes named in `class_names` (some may have no sample in this split)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledImages:
        """Rows `indices` (integers, in order, repeats allowed) as a new data set with the same classes."""
        rows = np.asarray(indices)
        if rows.size == 0:
            rows = rows.astype(np.int64)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise DatasetError(f"{self.name}: subset indices must be a 1-D integer array, got "
                               f"shape {rows.shape} dtype {rows.dtype}")
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise DatasetError(f"{self.name}: subset indices must lie in [0, {len(self)}), got "
                               f"[{rows.min()}, {rows.max()}]")
        return LabelledImages(self.images[rows], self.labels[rows], self.class_names, self.name)

    def sample(self, limit: int | None, seed: int) -> LabelledImages:
        """`limit` rows drawn at random (seeded, kept in stored order), or the whole set when `limit` is None or
        not smaller. Not the first `limit`: a split may be stored sorted by class (the shared CIFAR-10 train
        split's first 5 000 images are all airplanes)."""
        if not limit or limit >= len(self):
            return self
        return self.subset(np.sort(np.random.default_rng(seed).permutation(len(self))[:limit]))


def _check_images(images: np.ndarray, name: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        found = getattr(images, "dtype", type(images))
        raise DatasetError(f"{name}: images must be a uint8 numpy array, got {found}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise DatasetError(f"{name}: images must have shape (N, H, W) or (N, H, W, 3), got {images.shape}")


def _check_labels(labels: np.ndarray, num_images: int, num_classes: int, name: str) -> None:
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
        raise DatasetError(f"{name}: labels must be a 1-D int64 numpy array, got "
                           f"{getattr(labels, 'dtype', type(labels))} shape {getattr(labels, 'shape', None)}")
    if len(labels) != num_images:
        raise DatasetError(f"{name}: {num_images} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{name}: labels must lie in [0, {num_classes}) for {num_classes} class names, "
                           f"got [{labels.min()}, {labels.max()}]")


# ---------------------------------------------------------------------------------------------- registry


class DatasetLoader(Protocol):
    """A registered loader: ``loader(split, data_dir, cache_dir) -> LabelledImages``.

    `split` is already validated; `data_dir` and `cache_dir` are what the caller passed (``None`` = default).
    """

    def __call__(self, split: str, data_dir: Path | None, cache_dir: Path | None) -> LabelledImages: ...


_LOADERS: dict[str, DatasetLoader] = {}
# Names of the form "<prefix>:<path>"; the loader gets (resolved path, split, full name).
_PATH_LOADERS: dict[str, Callable[[Path, str, str], LabelledImages]] = {}


def register_dataset(name: str, loader: DatasetLoader) -> None:
    """Make `load_dataset(name, ...)` call `loader(split, data_dir, cache_dir)`. Names are unique, no ':'."""
    if not name or ":" in name or name != name.strip():
        raise DatasetError(f"dataset name must be non-empty, without ':' or surrounding spaces, got {name!r}")
    if name in _LOADERS:
        raise DatasetError(f"dataset {name!r} is already registered")
    _LOADERS[name] = loader


def available_datasets() -> tuple[str, ...]:
    """The names `load_dataset` accepts: registered names, then the path forms (``npz:<path>``, ...)."""
    return (*sorted(_LOADERS), *(f"{prefix}:<path>" for prefix in sorted(_PATH_LOADERS)))


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> LabelledImages:
    """Load split `split` ("train" or "test") of the data set `name` into memory.

    `data_dir` is the folder with local files; when ``None`` the folders are `default_data_dirs()`. For
    ``npz:<path>`` and ``folder:<path>`` a relative path is taken relative to `data_dir` when given.
    `cache_dir` holds decoded caches and torchvision's downloads (default ``~/.cache/pegp-stream``).
    Raises `DatasetError`, also when a data set is neither local nor downloadable.
    """
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    data_path = Path(data_dir) if data_dir is not None else None
    cache_path = Path(cache_dir) if cache_dir is not None else None
    prefix, sep, location = name.partition(":")
    if sep:
        if prefix not in _PATH_LOADERS or not location:
            raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(available_datasets())}")
        path = Path(location).expanduser()
        if data_path is not None and not path.is_absolute():
            path = data_path / path
        return _PATH_LOADERS[prefix](path, split, name)
    if name not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(available_datasets())}")
    return _LOADERS[name](split, data_path, cache_path)


# --------------------------------------------------------------------------------------------- checksums

# sha256 hex digest per (resolved path, mtime_ns, size): a file is hashed once per process unless it changes.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file at `path`, cached in-process per (path, mtime, size)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = _hash_file(resolved)
    return _DIGESTS[key]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_sha256sums(sums_file: str | Path) -> dict[str, str]:
    """Parse a ``sha256sum`` listing (``<hex>  <filename>`` lines) into {filename: lowercase hex}."""
    sums_path = Path(sums_file)
    entries: dict[str, str] = {}
    for number, line in enumerate(sums_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digest, _, filename = line.strip().partition(" ")
        filename = filename.strip().removeprefix("*")  # '*' marks binary mode in sha256sum output
        if len(digest) != 64 or not filename or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise DatasetError(f"{sums_path}:{number}: expected '<64 hex digits>  <filename>', got {line!r}")
        entries[filename] = digest.lower()
    return entries


def verify_checksums(data_dir: str | Path) -> dict[str, str]:
    """Check every file listed in ``data_dir/SHA256SUMS``; return {filename: digest} when all match.

    Raises `DatasetError` naming every missing or mismatching file.
    """
    sums_path = Path(data_dir) / SHA256SUMS_FILENAME
    if not sums_path.is_file():
        raise DatasetError(f"no {SHA256SUMS_FILENAME} in {Path(data_dir)}")
    expected = read_sha256sums(sums_path)
    problems = []
    for filename, digest in expected.items():
        path = sums_path.parent / filename
        if not path.is_file():
            problems.append(f"{filename}: missing")
        elif (actual := file_sha256(path)) != digest:
            problems.append(f"{filename}: sha256 {actual} != expected {digest}")
    if problems:
        raise DatasetError(f"checksum verification failed in {sums_path.parent}: " + "; ".join(problems))
    return expected


def _verify_against_sums(path: Path, required_entry: bool) -> None:
    """Compare `path` with the SHA256SUMS beside it, if that exists; a missing entry fails if required."""
    sums_path = path.parent / SHA256SUMS_FILENAME
    if not sums_path.is_file():
        return
    expected = read_sha256sums(sums_path).get(path.name)
    if expected is None:
        if required_entry:
            raise DatasetError(f"{sums_path} has no entry for {path.name}; cannot verify it")
        return
    if (actual := file_sha256(path)) != expected:
        raise DatasetError(f"{path}: sha256 {actual} does not match {expected} in {sums_path}; "
                           "the file is corrupt or was replaced")


# ------------------------------------------------------------------------------------------ shared files


def _repository_root() -> Path:
    return Path(__file__).resolve().parent.parent


def default_data_dirs() -> tuple[Path, ...]:
    """Folders searched for local data files when no data_dir is given: ``$PEGPSTREAM_DATA`` when set,
    else ``../shared/data`` relative to the working directory, then relative to the repository root."""
    if configured := os.environ.get(DATA_ENV):
        return (Path(configured).expanduser(),)
    candidates = (Path.cwd().parent / "shared" / "data", _repository_root().parent / "shared" / "data")
    return tuple(dict.fromkeys(candidates))  # once each when the working directory is the repository root


def download_dir(cache_dir: Path | None = None) -> Path:
    """Where torchvision data sets are downloaded to (and read from offline): ``<cache_dir>/torchvision``."""
    return (cache_dir or default_cache_dir()) / "torchvision"


def _shared_file(folder: Path, filename: str) -> Path | None:
    """The verified path of `folder/filename`, or None when it is absent."""
    path = folder / filename
    if not path.is_file():
        return None
    path = path.resolve()
    _verify_against_sums(path, required_entry=True)
    return path


def _load_split_npz(
    path: Path, split: str, name: str
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """(images, int64 labels, class names or None) of `split` from an npz with keys xtrain/ytrain/xtest/ytest
    or x/y (train only), and optionally ``class_names``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            suffix = _npz_key_suffix(path, set(archive.files), split)
            images, labels = archive[f"x{suffix}"], archive[f"y{suffix}"]
            names = archive["class_names"] if "class_names" in archive.files else None
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read as .npz ({error})") from error
    class_names = tuple(str(c) for c in names) if names is not None else None
    return _normalised_images(images, name), _integer_labels(labels, name), class_names


def _npz_key_suffix(path: Path, keys: set[str], split: str) -> str:
    if {"xtrain", "ytrain", "xtest", "ytest"} <= keys:
        return split
    if {"x", "y"} <= keys:
        if split != "train":
            raise DatasetError(f"{path} has keys x, y (a single split): only split='train' is valid")
        return ""
    raise DatasetError(f"{path} must hold arrays xtrain, ytrain, xtest, ytest or x, y; "
                       f"found {', '.join(sorted(keys)) or 'none'}")


def _normalised_images(images: np.ndarray, name: str) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    _check_images(images, name)
    return images


def _integer_labels(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{name}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise DatasetError(f"{name}: labels must be non-negative, found {labels.min()}")
    return labels.astype(np.int64)


def _shared_npz_reader(name: str, class_names: tuple[str, ...]) -> SharedReader:
    """A reader of a shared npz file (keys xtrain, ytrain, xtest, ytest) as data set `name`."""

    def read(path: Path, split: str, cache_dir: Path | None) -> LabelledImages:
        images, labels, _ = _load_split_npz(path, split, name)
        return LabelledImages(images, labels, class_names, name)

    return read


def _load_digits(split: str, data_dir: Path | None, cache_dir: Path | None) -> LabelledImages:
    """scikit-learn's bundled 8x8 digits, 0..16 scaled to 0..255; stratified 80/20 split with seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    train_rows, test_rows = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0
    )
    rows = np.sort(train_rows if split == "train" else test_rows)
    images = np.rint(bunch.images[rows] * (255.0 / 16.0)).astype(np.uint8)
    return LabelledImages(images, labels[rows], DIGIT_CLASS_NAMES, "digits")


# ---------------------------------------------------------------------------------------------- cifar10

CIFAR10_ARCHIVE = "cifar10_jpg.tar.xz"
_CACHE_KEYS = ("xtrain", "ytrain", "xtest", "ytest", "class_names")


def default_cache_dir() -> Path:
    """Where decoded data sets are cached when no cache_dir is given: ``~/.cache/pegp-stream``."""
    return Path.home() / ".cache" / "pegp-stream"


def _read_cifar10_archive(archive: Path, split: str, cache_dir: Path | None) -> LabelledImages:
    """CIFAR-10 from the JPEG archive, through a decoded cache keyed by the archive's sha256."""
    cache_file = (cache_dir or default_cache_dir()) / f"cifar10-{file_sha256(archive)}.npz"
    decoded = _read_cache(cache_file)
    if decoded is None:
        decoded = _decode_split_archive(archive)
        _write_cache_atomically(cache_file, decoded)
    class_names = tuple(str(c) for c in decoded["class_names"])
    return LabelledImages(decoded[f"x{split}"], decoded[f"y{split}"].astype(np.int64), class_names, "cifar10")


def _read_cache(cache_file: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None when it is absent or unreadable (then it is rebuilt)."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as cached:
            return {key: cached[key] for key in _CACHE_KEYS}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        logger.warning("ignoring unreadable cache %s (%s); decoding again", cache_file, error)
        return None


def _write_cache_atomically(cache_file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as an uncompressed npz; readers see either no file or the whole file (temp + rename)."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=cache_file.parent, prefix=f".{cache_file.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            np.savez(stream, allow_pickle=True, **arrays)  # numpy's default, named so **arrays cannot be it
        os.replace(temp_name, cache_file)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _decode_split_archive(archive: Path) -> dict[str, np.ndarray]:
    """Decode every ``<split>/<class>/<image>`` member of a tar archive as RGB, in one streaming pass.

    Classes are sorted folder names (shared by both splits); rows are ordered by (class, file name).
    """
    members: dict[str, list[tuple[str, str, np.ndarray]]] = {split: [] for split in SPLITS}
    try:
        # Stream mode ("r|*") reads the xz data once, front to back, without seeking.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                parts = parts[1:] if parts and parts[0] == "." else parts
                if not member.isfile() or len(parts) != 3 or parts[0] not in members:
                    continue
                if PurePosixPath(parts[2]).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                stream = tar.extractfile(member)
                if stream is None:  # not a regular file (isfile() above rules that out)
                    continue
                data = stream.read()
                image = _decode_image(data, f"{archive}:{member.name}", gray=False)
                members[parts[0]].append((parts[1], parts[2], image))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DatasetError(f"{archive}: cannot read as a tar archive ({error})") from error
    class_names = sorted({entry[0] for entries in members.values() for entry in entries})
    label_of = {class_name: label for label, class_name in enumerate(class_names)}
    decoded: dict[str, np.ndarray] = {"class_names": np.array(class_names, dtype=np.str_)}
    for split, entries in members.items():
        if not entries:
            raise DatasetError(f"{archive} has no images under {split}/<class>/")
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        labelled = [(label_of[c], f"{archive}:{split}/{c}/{f}", image) for c, f, image in entries]
        decoded[f"x{split}"], decoded[f"y{split}"] = _stack_images(labelled)
    return decoded


# ------------------------------------------------------------------------------------- torchvision sets

# A reader of one shared-format file: (path, split, cache_dir) -> the split.
SharedReader = Callable[[Path, str, "Path | None"], LabelledImages]


@dataclass(frozen=True)
class _Source:
    """Where a named data set can come from: its shared-format file (optional) and torchvision's class.

    `layout` says where torchvision's files lie under a root folder (for error messages); `class_names`
    None means torchvision's own ``classes`` attribute.
    """

    name: str
    torchvision_class: str
    layout: str
    class_names: tuple[str, ...] | None = None
    shared_file: str | None = None
    read_shared: SharedReader | None = None


def _torchvision_set(source: _Source, root: Path, split: str, download: bool) -> Any:
    """Construct torchvision's data set object for `split` under `root` (raises RuntimeError when absent)."""
    import torchvision.datasets

    factory = getattr(torchvision.datasets, source.torchvision_class)
    if source.torchvision_class == "SVHN":
        return factory(str(root), split=split, download=download)
    return factory(str(root), train=split == "train", download=download)


def _from_torchvision(dataset: Any, source: _Source) -> LabelledImages:
    """Convert a torchvision data set (MNIST-like tensors, CIFAR's NHWC arrays, SVHN's NCHW arrays)."""
    images = np.asarray(dataset.data, dtype=np.uint8)
    if source.torchvision_class == "SVHN":  # SVHN stores channels first
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    labels = np.asarray(dataset.labels if hasattr(dataset, "labels") else dataset.targets, dtype=np.int64)
    class_names = source.class_names or tuple(str(c) for c in dataset.classes)
    return LabelledImages(images, labels, class_names, source.name)


def _read_local(source: _Source, folder: Path, split: str, cache_dir: Path | None) -> LabelledImages | None:
    """The split from `folder`'s shared-format file, else from torchvision's layout there; None if neither."""
    if source.shared_file and source.read_shared and (path := _shared_file(folder, source.shared_file)) is not None:
        return source.read_shared(path, split, cache_dir)
    try:
        return _from_torchvision(_torchvision_set(source, folder, split, download=False), source)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        return None


def _download(source: _Source, split: str, target: Path) -> LabelledImages:
    """Download `source` into `target` with torchvision (its progress lines go to stderr, not stdout)."""
    target.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        return _from_torchvision(_torchvision_set(source, target, split, download=True), source)


def _torchvision_loader(source: _Source) -> DatasetLoader:
    """Local files first (data_dir, or the default folders, then the download folder), else a download."""

    def load(split: str, data_dir: Path | None, cache_dir: Path | None) -> LabelledImages:
        folders = (data_dir,) if data_dir is not None else default_data_dirs()
        target = download_dir(cache_dir)
        for folder in (*folders, target):
            if (found := _read_local(source, folder, split, cache_dir)) is not None:
                return found
        try:
            return _download(source, split, target)
        except (OSError, RuntimeError) as error:  # URLError is an OSError; torchvision wraps mirror failures
            raise DatasetError(_unavailable_message(source, folders, target, error)) from error

    load.__doc__ = f"Load {source.name} from local files or torchvision's download."
    return load


def _unavailable_message(source: _Source, folders: Iterable[Path], target: Path, error: Exception) -> str:
    """Name both ways to get `source`: local files via --data-dir, or a download into `target`."""
    forms = f"{source.shared_file} or " if source.shared_file else ""
    reason = " ".join(str(error).split())
    return (f"{source.name}: no local copy and the download failed ({reason}). Either pass --data-dir "
            f"(stream.data_dir, or set {DATA_ENV}) a folder holding {forms}torchvision's {source.layout} "
            f"(looked in {', '.join(str(f) for f in folders)}), or run once with network access: it downloads "
            f"into {target}, which later runs read offline.")


_DIGITS = DIGIT_CLASS_NAMES
_SOURCES = (
    _Source("mnist", "MNIST", "MNIST/raw/*-ubyte files", _DIGITS, "mnist_uint8.npz",
            _shared_npz_reader("mnist", _DIGITS)),
    _Source("fashion_mnist", "FashionMNIST", "FashionMNIST/raw/*-ubyte files", FASHION_MNIST_CLASS_NAMES,
            "fashion_mnist_uint8.npz", _shared_npz_reader("fashion_mnist", FASHION_MNIST_CLASS_NAMES)),
    _Source("cifar10", "CIFAR10", "cifar-10-batches-py/ folder", None, CIFAR10_ARCHIVE, _read_cifar10_archive),
    _Source("cifar100", "CIFAR100", "cifar-100-python/ folder"),
    _Source("svhn", "SVHN", "train_32x32.mat and test_32x32.mat", _DIGITS),
)


# ------------------------------------------------------------------------------------------ image files


def _decode_image(source: bytes | Path, where: str, gray: bool | None) -> np.ndarray:
    """Decode one image: RGB when `gray` is False, 'L' when True, else whichever its mode is closer to."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            as_gray = image.mode in _GRAY_MODES if gray is None else gray
            return np.asarray(image.convert("L" if as_gray else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"{where}: cannot decode image ({error})") from error


def _stack_images(labelled: Iterable[tuple[int, str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack (label, where, image) rows into (images, int64 labels); grayscale rows join RGB ones as RGB.

    Raises `DatasetError` naming the first image whose height x width differs from the first one's.
    """
    rows = list(labelled)
    first_label, first_where, first_image = rows[0]
    for _, where, image in rows:
        if image.shape[:2] != first_image.shape[:2]:
            raise DatasetError(f"{where} is {image.shape[1]}x{image.shape[0]} (width x height) but "
                               f"{first_where} is {first_image.shape[1]}x{first_image.shape[0]}; "
                               "all images must share one size")
    images = [image for _, _, image in rows]
    if any(image.ndim == 3 for image in images):
        images = [np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image for image in images]
    return np.stack(images), np.array([label for label, _, _ in rows], dtype=np.int64)


def _load_npz_path(path: Path, split: str, name: str) -> LabelledImages:
    """``npz:<path>``: class names from a ``class_names`` array if present, else "0".."max label"."""
    if not path.is_file():
        raise DatasetError(f"{name}: no file {path}")
    _verify_against_sums(path, required_entry=False)
    images, labels, class_names = _load_split_npz(path, split, name)
    if class_names is None:
        class_names = tuple(str(c) for c in range(int(labels.max(initial=-1)) + 1))
    return LabelledImages(images, labels, class_names, name)


def _load_folder(path: Path, split: str, name: str) -> LabelledImages:
    """``folder:<path>``: ``<path>/<class>/<image>`` is the train split; with ``train/`` or ``test/``
    subfolders each split is ``<path>/<split>/<class>/<image>``. Classes are the sorted class folder
    names over all splits, so a label means the same class in both splits."""
    split_roots = _folder_split_roots(path, name)
    if split not in split_roots:
        whole = split_roots == {"train": path}
        reason = "no train/ or test/ subfolders, so it holds a train split only" if whole else f"no {split}/"
        raise DatasetError(f"{name}: {path} has {reason}; split={split!r} is invalid")
    class_names = sorted({d.name for root in split_roots.values() for d in root.iterdir() if d.is_dir()})
    split_root = split_roots[split]
    labelled = []
    for label, class_name in enumerate(class_names):
        files = sorted(f for f in (split_root / class_name).glob("*")
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        labelled += [(label, str(f), _decode_image(f, str(f), gray=None)) for f in files]
    if not labelled:
        raise DatasetError(f"{name}: no {'/'.join(IMAGE_SUFFIXES)} images under {split_root}/<class>/")
    images, labels = _stack_images(labelled)
    return LabelledImages(images, labels, tuple(class_names), name)


def _folder_split_roots(path: Path, name: str) -> dict[str, Path]:
    """{split: folder of its class folders}: the train/ and test/ subfolders present, else {"train": path}."""
    if not path.is_dir():
        raise DatasetError(f"{name}: no directory {path}")
    roots = {split: path / split for split in SPLITS if (path / split).is_dir()}
    return roots or {"train": path}


register_dataset("digits", _load_digits)
for _source in _SOURCES:
    register_dataset(_source.name, _torchvision_loader(_source))
_PATH_LOADERS["npz"] = _load_npz_path
_PATH_LOADERS["folder"] = _load_folder
