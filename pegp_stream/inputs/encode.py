"""Sample to record: the producer side of the record contract that `decode.decode_record` reads (pure).

>>> import numpy as np
>>> value, headers = encode_record(np.zeros((2, 2, 3), np.uint8), "cat", fmt="binary")
>>> value[:4], headers
(b'\\x89PNG', [('label', b'cat'), ('content-type', b'image/png')])
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np
from PIL import Image

from pegp_stream.errors import PegpError
from pegp_stream.inputs.decode import DecodeError, _json_ts, _key

T = TypeVar("T")

_FORMATS = ("json", "binary")
_IMAGE_FORMATS = ("png", "jpeg", "raw")
_CONTENT_TYPES = {"png": b"image/png", "jpeg": b"image/jpeg"}
_JPEG_QUALITY = 95


class EncodeError(PegpError, ValueError):
    """The arguments cannot make a valid record; the message names the argument and the reason."""


def encode_record(
    image: np.ndarray,
    label: str | int,
    *,
    id: str | int | None = None,
    segment: str | int | None = None,
    ts: float | str | None = None,
    fmt: Literal["json", "binary"] = "json",
    image_format: Literal["png", "jpeg", "raw"] = "png",
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Encode one labelled uint8 image as a record (value, headers) that `decode_record` accepts.

    `image` is (H, W) or (H, W, C) with C in 1, 3, 4, and is not modified. `image_format` "raw" sends the
    JSON `pixels` and `shape` (the shape is kept exactly); "png" is lossless (grey decodes as (H, W));
    "jpeg" is lossy (quality 95) and has no alpha. `fmt` "binary" sends the PNG/JPEG bytes as the value and
    the metadata as UTF-8 headers, so the decoder returns id and segment as str (labels in either form
    decode to their canonical form, `decode.canonical_label`). `ts` is epoch
    seconds or an ISO-8601 string. Invalid arguments raise `EncodeError`.
    """
    if fmt not in _FORMATS:
        raise EncodeError(f"fmt: {fmt!r} is not one of {', '.join(_FORMATS)}")
    if image_format not in _IMAGE_FORMATS:
        raise EncodeError(f"image_format: {image_format!r} is not one of {', '.join(_IMAGE_FORMATS)}")
    if fmt == "binary" and image_format == "raw":
        raise EncodeError("image_format: 'raw' pixels need the JSON form; use png or jpeg with fmt='binary'")
    pixels = _checked_image(image, image_format)
    _checked(_key, label, "label", math.inf, "bad_label")
    for field, value in (("id", id), ("segment", segment)):
        if value is not None:
            _checked(_key, value, field, math.inf, "bad_field")
    seconds = _checked(_json_ts, ts)
    if fmt == "binary":
        # ts travels as epoch seconds: ISO text such as "20240101" would read back as a number
        metadata = {"label": label, "id": id, "segment": segment, "ts": seconds}
        return _image_bytes(pixels, image_format), _headers(metadata, image_format)
    metadata = {"label": label, "id": id, "segment": segment, "ts": ts}
    return _json_value(pixels, image_format, metadata), []


def _checked(check: Callable[..., T], *args: Any) -> T:
    """Run one of the decoder's field rules, so that producer and consumer agree on what is valid."""
    try:
        return check(*args)
    except DecodeError as exc:
        raise EncodeError(str(exc)) from None


def _checked_image(image: object, image_format: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise EncodeError(f"image: must be a uint8 numpy array, not {kind}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))) or min(image.shape[:2]) < 1:
        raise EncodeError(f"image: shape {image.shape} is not (H, W) or (H, W, C) with C in 1, 3, 4")
    if image_format == "jpeg" and image.ndim == 3 and image.shape[2] == 4:
        raise EncodeError("image: JPEG has no alpha channel; send png or raw for (H, W, 4)")
    return np.ascontiguousarray(image)


def _image_bytes(pixels: np.ndarray, image_format: str) -> bytes:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    buffer = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    else:
        Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _json_value(pixels: np.ndarray, image_format: str, metadata: dict[str, Any]) -> bytes:
    record = {key: value for key, value in metadata.items() if value is not None}
    if image_format == "raw":
        record["pixels"] = base64.b64encode(pixels.tobytes()).decode("ascii")
        record["shape"] = list(pixels.shape)
    else:
        record["image"] = base64.b64encode(_image_bytes(pixels, image_format)).decode("ascii")
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _headers(metadata: dict[str, Any], image_format: str) -> list[tuple[str, bytes]]:
    headers = [("label", str(metadata["label"]).encode("utf-8")), ("content-type", _CONTENT_TYPES[image_format])]
    for name in ("id", "segment", "ts"):
        if metadata[name] is not None:
            headers.append((name, str(metadata[name]).encode("utf-8")))  # str(float) round-trips exactly
    return headers
