"""Record to `Sample`: decode one Kafka record of the labelled-image stream (pure: no Kafka, no torch).

The record contract (the producer side is `encode.encode_record`):

* JSON form: the value is a UTF-8 JSON object with `label` (non-empty str or int; never bool), exactly
  one of `image` (base64 of PNG or JPEG bytes) or `pixels` (base64 of raw uint8 bytes, C order) with
  `shape` [H, W] or [H, W, C] (C in 1, 3, 4), and optionally `id` and `segment` (non-empty str or int)
  and `ts` (epoch seconds as a number, or an ISO-8601 string; no time zone means UTC). A null value
  counts as absent. Unknown fields are ignored. Headers are not read in this form.
* Binary form: the value is the PNG or JPEG bytes themselves; the label travels in the UTF-8 header
  `label`, optionally with headers `id`, `segment` and `ts` (epoch seconds or ISO-8601 text). Header
  values are text, so a binary record's id and segment are always str ("3", never 3). When a
  header name repeats, the last one wins; a `content-type` header is allowed and not needed.

Labels have one form whichever way they arrive (`canonical_label`): an int when the label is an integer, or
text that spells an int64 canonically ("7", "-3"; not "07", "+7", " 7" or "7.0"), else the text. So the JSON
label 7, the JSON label "7" and the header `label: 7` are one class; "07" and "seven" are classes of their own.

A value that starts with the PNG signature or the JPEG SOI marker (FF D8 FF) is the binary form;
anything else must be JSON. `image` and binary values must be PNG or JPEG; other formats are rejected.

Decoded images are fresh, writable uint8 arrays: (H, W) or (H, W, C) with C in 1, 3, 4. `pixels` keep
the sent shape exactly. PNG and JPEG keep L, RGB and RGBA; every other mode becomes one of those:
1-bit to L (0 or 255), 16-bit grey to L (rounded v / 257), palette to RGB (RGBA when it has
transparency), LA and PA to RGBA, CMYK and YCbCr to RGB. A grey PNG or JPEG decodes as (H, W) even if
it was encoded from (H, W, 1). EXIF orientation is not applied; only the first frame of an animated
PNG is read.

`decode_record` raises only `DecodeError`, whatever the bytes and headers; its `reason` is one of the
codes below (stable: they are Prometheus label values and dead-letter headers). Cheap checks run
before expensive ones and the first failure wins.

    empty_value           the value is None (a tombstone) or empty
    too_large             the value is longer than `max_record_bytes`
    malformed_json        not UTF-8, or not JSON (NaN and Infinity are not JSON; nesting too deep)
    not_an_object         valid JSON, but not an object
    missing_label         no label: the key is absent or null, or there is no `label` header
    bad_label             label of the wrong type (bool, float, ...), empty, longer than
                          `max_label_chars`, an int outside int64, or text that is not valid UTF-8
    missing_image         neither `image` nor `pixels`
    ambiguous_image       both `image` and `pixels`
    bad_base64            `image` or `pixels` is not a string of standard, padded base64
    undecodable_image     the bytes are not a decodable PNG or JPEG (another format, truncated, corrupt)
    bad_shape             `shape` missing, not [H, W] or [H, W, C] of positive ints, or C not in 1, 3, 4
    pixel_count_mismatch  the `pixels` byte count is not H * W * C
    too_many_pixels       a side over `max_side` or H * W over `max_pixels` (the declared size, checked
                          before decoding) or Pillow's own decompression-bomb limit
    bad_field             `id`, `segment` or `ts` invalid, a known key repeated in the object, or
                          headers that are not (name, bytes) pairs, or a value that is not bytes

Example:

>>> import numpy as np
>>> from pegp_stream.inputs.encode import encode_record
>>> sample = decode_record(*encode_record(np.zeros((2, 3), np.uint8), "cat", segment=1))
>>> sample.label, sample.segment, sample.image.shape
('cat', 1, (2, 3))
>>> try:
...     decode_record(b'{"label": "cat"}', [])
... except DecodeError as error:
...     print(error.reason, "|", error)
missing_image | image: one of 'image' or 'pixels' is required
"""

from __future__ import annotations

import base64
import io
import json
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image
from pydantic import Field

from pegp_stream.errors import PegpError
from pegp_stream.schema import Frozen

Reason = Literal[
    "empty_value", "too_large", "malformed_json", "not_an_object", "missing_label", "bad_label",
    "missing_image", "ambiguous_image", "bad_base64", "undecodable_image", "bad_shape",
    "pixel_count_mismatch", "too_many_pixels", "bad_field",
]
REASONS: tuple[str, ...] = get_args(Reason)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
# Other image formats, recognised only to give a precise reason (none of these can start valid JSON).
_OTHER_IMAGE_MAGIC = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"RIFF": "RIFF/WebP",
                      b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
_RECORD_KEYS = frozenset({"label", "image", "pixels", "shape", "id", "segment", "ts"})
_HEADER_NAMES = frozenset({"label", "id", "segment", "ts"})
_INT64 = (-(2**63), 2**63 - 1)
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")
_NUMBER_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class DecodeLimits(Frozen):
    """Bounds on one record, checked before any expensive work; a record beyond them is rejected."""

    max_record_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="largest record value in bytes (base64 in JSON makes images a third larger)"
    )
    max_pixels: int = Field(
        4096 * 4096, ge=1, description="largest image area H * W, checked on the declared size before decoding"
    )
    max_side: int = Field(4096, ge=1, description="largest image height or width, in pixels")
    max_label_chars: int = Field(256, ge=1, description="longest label, id or segment string, in characters")


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True, eq=False)  # eq=False: a generated __eq__ would compare arrays element-wise and fail
class Sample:
    """One decoded record: uint8 pixels as sent ((H, W) or (H, W, C), C in 1, 3, 4) and its metadata."""

    image: np.ndarray
    label: str | int
    id: str | int | None = None
    segment: str | int | None = None
    ts: float | None = None


class DecodeError(PegpError, ValueError):
    """A record breaks the contract. `reason` is a code from `REASONS`; the message names the field."""

    def __init__(self, reason: Reason, field: str, detail: str) -> None:
        self.reason = reason
        self.field = field
        self.detail = detail
        super().__init__(f"{field}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the three-argument constructor
        return type(self), (self.reason, self.field, self.detail)


def decode_record(
    value: bytes | None, headers: Sequence[tuple[str, bytes]] = (), limits: DecodeLimits = DEFAULT_LIMITS
) -> Sample:
    """Decode one record's value and headers into a `Sample`, or raise `DecodeError` (and nothing else)."""
    data = _checked_value(value, limits)
    if data.startswith((PNG_SIGNATURE, JPEG_SOI)):
        return _decode_binary(data, headers, limits)
    for magic, name in _OTHER_IMAGE_MAGIC.items():
        if data.startswith(magic):
            raise DecodeError("undecodable_image", "value", f"is a {name} image; only PNG and JPEG are accepted")
    return _decode_json(data, limits)


def _checked_value(value: object, limits: DecodeLimits) -> bytes:
    if value is None:
        raise DecodeError("empty_value", "value", "is null (a tombstone)")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise DecodeError("bad_field", "value", f"must be bytes, not {type(value).__name__}")
    data = bytes(value)
    if not data:
        raise DecodeError("empty_value", "value", "is empty")
    if len(data) > limits.max_record_bytes:
        raise DecodeError("too_large", "value", f"has {len(data)} bytes; max_record_bytes={limits.max_record_bytes}")
    return data


# --- JSON form -----------------------------------------------------------------------------------------


def _decode_json(data: bytes, limits: DecodeLimits) -> Sample:
    record = _parse_object(data)
    label = _label(record.get("label"), "label", limits)
    identity = _optional_key(record.get("id"), "id", limits)
    segment = _optional_key(record.get("segment"), "segment", limits)
    ts = _json_ts(record.get("ts"))
    return Sample(_json_image(record, limits), label, identity, segment, ts)


class _JsonObject(dict):
    """A parsed JSON object that remembers which keys occurred more than once (json keeps the last)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.repeated: set[str] = set()
        if len(self) < len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                (self.repeated if key in seen else seen).add(key)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _parse_object(data: bytes) -> _JsonObject:
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_JsonObject, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DecodeError("malformed_json", "value", _shorten(str(exc) or type(exc).__name__)) from None
    if not isinstance(document, _JsonObject):
        raise DecodeError("not_an_object", "value", f"is a JSON {_json_type(document)}, not an object")
    repeated = sorted(document.repeated & _RECORD_KEYS)
    if repeated:
        raise DecodeError("bad_field", repeated[0], "appears more than once in the object")
    return document


def _json_image(record: dict[str, Any], limits: DecodeLimits) -> np.ndarray:
    encoded, pixels = record.get("image"), record.get("pixels")
    if encoded is None and pixels is None:
        raise DecodeError("missing_image", "image", "one of 'image' or 'pixels' is required")
    if encoded is not None and pixels is not None:
        raise DecodeError("ambiguous_image", "image", "'image' and 'pixels' are both set; send exactly one")
    if encoded is not None:
        return _decode_image(_base64(encoded, "image"), "image", limits)
    shape = _shape(record.get("shape"), limits)
    raw = _base64(pixels, "pixels")
    if len(raw) != math.prod(shape):
        raise DecodeError(
            "pixel_count_mismatch", "pixels", f"has {len(raw)} bytes but shape {list(shape)} needs {math.prod(shape)}"
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()


def _base64(text: object, field: str) -> bytes:
    if not isinstance(text, str):
        raise DecodeError("bad_base64", field, f"must be a base64 string, not {_json_type(text)}")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise DecodeError("bad_base64", field, f"is not standard padded base64 ({_shorten(str(exc))})") from None


def _shape(value: object, limits: DecodeLimits) -> tuple[int, ...]:
    if value is None:
        raise DecodeError("bad_shape", "shape", "is required with 'pixels'")
    if (
        not isinstance(value, list)
        or len(value) not in (2, 3)
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in value)
    ):
        raise DecodeError("bad_shape", "shape", f"must be [H, W] or [H, W, C] of integers, not {_preview(value)}")
    if min(value) < 1:
        raise DecodeError("bad_shape", "shape", f"sides must be positive, not {value}")
    if len(value) == 3 and value[2] not in (1, 3, 4):
        raise DecodeError("bad_shape", "shape", f"channels must be 1, 3 or 4, not {value[2]}")
    _check_size(value[0], value[1], "shape", limits)
    return tuple(value)


def _json_ts(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _iso_seconds(value, "ts")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError("bad_field", "ts", f"must be epoch seconds or an ISO-8601 string, not {_json_type(value)}")
    return _finite_seconds(value, "ts")


# --- binary form ---------------------------------------------------------------------------------------


def _decode_binary(data: bytes, headers: Sequence[tuple[str, bytes]], limits: DecodeLimits) -> Sample:
    text = _header_texts(headers)
    label = _label(text.get("label"), "header label", limits)
    identity = _optional_key(text.get("id"), "header id", limits)
    segment = _optional_key(text.get("segment"), "header segment", limits)
    raw_ts = text.get("ts")
    ts = None if raw_ts is None else _text_ts(raw_ts, "header ts")
    return Sample(_decode_image(data, "value", limits), label, identity, segment, ts)


def _header_texts(headers: Sequence[tuple[str, bytes]]) -> dict[str, str | None]:
    """The known headers as text (the last of a repeated name wins; a None value counts as absent)."""
    found: dict[str, object] = {}
    try:
        for name, raw in headers:  # what a record carries is checked here, whatever its declared type
            if isinstance(name, str) and name in _HEADER_NAMES:
                found[name] = raw
    except (TypeError, ValueError):
        raise DecodeError("bad_field", "headers", "must be a sequence of (name, bytes) pairs") from None
    return {name: _header_text(name, raw) for name, raw in found.items()}


def _header_text(name: str, raw: object) -> str | None:
    reason: Reason = "bad_label" if name == "label" else "bad_field"
    if raw is None or isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise DecodeError(reason, f"header {name}", f"must be bytes, not {type(raw).__name__}")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(reason, f"header {name}", "is not valid UTF-8") from None


def _text_ts(text: str, field: str) -> float:
    if _NUMBER_TEXT.fullmatch(text):
        return _finite_seconds(float(text), field)
    return _iso_seconds(text, field)


# --- shared field rules --------------------------------------------------------------------------------


def _label(value: object, field: str, limits: DecodeLimits) -> str | int:
    if value is None:
        raise DecodeError("missing_label", field, "is required")
    return canonical_label(_key(value, field, limits.max_label_chars, "bad_label"))


def canonical_label(label: str | int) -> str | int:
    """The one form of a label wherever it enters (records, `Learner.learn_many`, data set streams): an int
    for an integer (numpy's too, not bool) or for text spelling an int64 canonically ("7", "-3": ASCII digits,
    no "+", no leading zero, no spaces); any other label is returned unchanged."""
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        return int(label)
    if isinstance(label, str) and _CANONICAL_INT.fullmatch(label) and _INT64[0] <= int(label) <= _INT64[1]:
        return int(label)
    return label


def _optional_key(value: object, field: str, limits: DecodeLimits) -> str | int | None:
    return None if value is None else _key(value, field, limits.max_label_chars, "bad_field")


def _key(value: object, field: str, max_chars: int, reason: Reason) -> str | int:
    """A label, id or segment: an int in the int64 range (not bool), or non-empty UTF-8-encodable text."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DecodeError(reason, field, f"must be a string or an integer, not {_json_type(value)}")
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise DecodeError(reason, field, "integer is outside the int64 range")
        return value
    if not value:
        raise DecodeError(reason, field, "must not be empty")
    if len(value) > max_chars:
        raise DecodeError(reason, field, f"has {len(value)} characters; max_label_chars={max_chars}")
    try:
        value.encode("utf-8")  # lone surrogates (legal in JSON escapes) would break metrics and dead letters
    except UnicodeEncodeError:
        raise DecodeError(reason, field, f"{_preview(value)} is not encodable as UTF-8") from None
    return value


def _finite_seconds(value: float, field: str) -> float:
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise DecodeError("bad_field", field, f"must be finite epoch seconds, not {_preview(value)}")
    return seconds


def _iso_seconds(text: str, field: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError, OSError):
        raise DecodeError("bad_field", field, f"{_preview(text)} is not an ISO-8601 time") from None


def _check_size(height: int, width: int, field: str, limits: DecodeLimits) -> None:
    if max(height, width) > limits.max_side:
        raise DecodeError("too_many_pixels", field, f"{height}x{width} has a side over max_side={limits.max_side}")
    if height * width > limits.max_pixels:
        raise DecodeError("too_many_pixels", field, f"{height}x{width} is over max_pixels={limits.max_pixels}")


# --- images --------------------------------------------------------------------------------------------


def _decode_image(data: bytes, field: str, limits: DecodeLimits) -> np.ndarray:
    """PNG or JPEG bytes to a uint8 array; the declared size is checked before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
            _check_size(image.height, image.width, field, limits)
            image.load()
            array = _to_uint8(image)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning if made an error
        raise DecodeError("too_many_pixels", field, _shorten(str(exc))) from None
    except MemoryError:  # the host is out of memory: not the record's fault, so not a dead letter
        raise
    except Exception as exc:  # hostile bytes make Pillow raise OSError, ValueError, SyntaxError, struct.error, ...
        detail = f"is not a decodable PNG or JPEG ({type(exc).__name__}: {_shorten(str(exc))})"
        raise DecodeError("undecodable_image", field, detail) from None
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise DecodeError("undecodable_image", field, f"decoded to {array.dtype} {array.shape}")
    return array


def _to_uint8(image: Image.Image) -> np.ndarray:
    """L, RGB and RGBA as they are; 16-bit grey rounded to L; every other mode converted to L, RGB or RGBA."""
    if image.mode in ("L", "RGB", "RGBA"):
        return np.array(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.clip(np.array(image), 0, 65535).astype(np.uint32)
        return ((wide + 128) // 257).astype(np.uint8)  # the inverse of the usual 8 -> 16 bit v * 257
    if image.mode == "1":
        return np.array(image.convert("L"))
    has_alpha = bool({"A", "a"} & set(image.getbands())) or "transparency" in image.info
    return np.array(image.convert("RGBA" if has_alpha else "RGB"))


# --- messages ------------------------------------------------------------------------------------------


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    return "object" if isinstance(value, dict) else names.get(type(value), type(value).__name__)


def _preview(value: object, limit: int = 48) -> str:
    """A short ASCII rendering of a value for a message (messages go to logs and dead-letter headers)."""
    if isinstance(value, list | dict):
        items = value.values() if isinstance(value, dict) else value
        if len(value) > 8 or any(isinstance(item, list | dict) for item in items):  # nothing deep or long
            return f"an {_json_type(value)} of {len(value)} items"
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
    return _shorten(ascii(value), limit)


def _shorten(text: str, limit: int = 120) -> str:
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_image_fields(fields: dict[str, Any], limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """The image of a JSON object with `image` (base64 PNG/JPEG) or `pixels` + `shape` (what a record or a
    prediction request carries); raises DecodeError with the same reason codes as `decode_record`."""
    return _json_image(fields, limits)


def decode_image_bytes(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A PNG or JPEG file's pixels (uploads); raises DecodeError."""
    if len(data) > limits.max_record_bytes:
        raise DecodeError("too_large", "file", f"has {len(data)} bytes; max_record_bytes={limits.max_record_bytes}")
    return _decode_image(data, "file", limits)
