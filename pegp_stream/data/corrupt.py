"""Common image corruptions (Hendrycks & Dietterich 2019, "Benchmarking neural network robustness to common
corruptions and perturbations") through the `imagecorruptions` package, reproducible per image.

The package draws its noise from numpy's global generator; `corrupt_images` seeds that generator from
(seed, row) before each image and restores it afterwards, so an image's corruption depends only on its row
and the seed, not on which other images are corrupted with it. The package is an optional dependency (the
``bench`` extra): only domain-incremental evaluation streams use it, the daemon never corrupts images.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from pegp_stream.data.datasets import DatasetError

# The package's corruptions that work here and are reproducible. Left out: fog (uses np.float_, removed in
# numpy 2), glass_blur and gaussian_blur (pass scikit-image's removed `multichannel` argument, gone in 0.26),
# impulse_noise (scikit-image draws it from a fresh unseeded generator, so no seed reproduces it).
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "speckle_noise", "defocus_blur", "motion_blur", "zoom_blur", "snow", "frost",
    "spatter", "brightness", "contrast", "saturate", "elastic_transform", "pixelate", "jpeg_compression",
)
MIN_SIZE = 32  # the package rejects smaller images: smaller ones are resized up to this first


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int, rows: np.ndarray) -> np.ndarray:
    """`images` (uint8, (N, H, W) or (N, H, W, 3)) with corruption `name` at `severity` (1-5) as a new uint8
    (N, H', W', 3) array; image i's noise is seeded by (`seed`, `rows[i]`). Images whose short side is under
    32 pixels (MNIST's 28, say) are first resized bilinearly so that it is 32, as the backbone's input step
    would resize them anyway; larger images keep their size.

    Raises `DatasetError` when the package is missing; ValueError for a name outside `CORRUPTIONS`.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; supported: {', '.join(CORRUPTIONS)}")
    corrupt = _corrupt_function()
    saved = np.random.get_state()
    try:
        corrupted = []
        for image, row in zip(images, rows, strict=True):
            np.random.seed([seed % 2**32, int(row)])
            corrupted.append(corrupt(_at_least_min_size(image), severity=severity, corruption_name=name))
    finally:
        np.random.set_state(saved)
    return np.stack(corrupted)


def _at_least_min_size(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if min(height, width) >= MIN_SIZE:
        return image
    scale = MIN_SIZE / min(height, width)
    size = (max(MIN_SIZE, round(width * scale)), max(MIN_SIZE, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _corrupt_function():
    """`imagecorruptions.corrupt`, or a DatasetError saying how to install it."""
    try:
        with warnings.catch_warnings():  # its `import pkg_resources` warns (setuptools < 81)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # and scipy.ndimage.interpolation
            from imagecorruptions import corrupt
    except ImportError as error:
        raise DatasetError(f"stream.corruptions needs the imagecorruptions package ({error}); install it with "
                           "pip install 'pegp-stream[bench]'") from error
    return corrupt
