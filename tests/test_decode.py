"""Tests for pegp_stream.inputs.decode and .encode: the record contract, its reason codes, and robustness."""

from __future__ import annotations

import base64
import doctest
import io
import json
import math
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pegp_stream.errors import PegpError
from pegp_stream.inputs import decode as decode_module
from pegp_stream.inputs import encode as encode_module
from pegp_stream.inputs.decode import (
    DEFAULT_LIMITS,
    REASONS,
    DecodeError,
    DecodeLimits,
    Sample,
    decode_record,
)
from pegp_stream.inputs.encode import EncodeError, encode_record

RNG = np.random.default_rng(0)
SHAPES = [(5, 7), (5, 7, 1), (5, 7, 3), (5, 7, 4)]
IMAGES = {shape: RNG.integers(0, 256, size=shape, dtype=np.uint8) for shape in SHAPES}
# A smooth image, so that JPEG (lossy) stays close to it.
SMOOTH = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * 7
SMOOTH_RGB = np.stack([SMOOTH, SMOOTH[::-1], SMOOTH.T], axis=2)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _image_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


PNG_3X3 = _image_bytes(Image.new("RGB", (3, 3), (10, 20, 30)), "PNG")


def _json(**fields: object) -> bytes:
    return json.dumps(fields).encode("utf-8")


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking 8-bit grey PNG of a few dozen bytes whose header declares width x height."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (width + 1))  # one row only: decoding it would fail, not allocate
    return decode_module.PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG with the size in its SOF0 header rewritten."""
    data = bytearray(_image_bytes(Image.new("L", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def reason_of(value: bytes | None, headers=(), limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_record(value, headers, limits)
    assert caught.value.reason in REASONS
    return caught.value.reason


def test_docstring_examples_run():
    assert doctest.testmod(decode_module).failed == 0
    assert doctest.testmod(encode_module).failed == 0


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", ["json", "binary"])
def test_png_round_trip_is_exact(shape, fmt):
    image = IMAGES[shape]
    sample = decode_record(*encode_record(image, "cat", fmt=fmt))
    # PNG knows no (H, W, 1): grey decodes as (H, W)
    expected = image[:, :, 0] if shape[-1:] == (1,) else image
    assert sample.image.dtype == np.uint8 and sample.image.shape == expected.shape
    np.testing.assert_array_equal(sample.image, expected)
    assert sample.label == "cat"


@pytest.mark.parametrize("shape", SHAPES)
def test_raw_round_trip_keeps_the_shape_exactly(shape):
    image = IMAGES[shape]
    value, headers = encode_record(image, 3, image_format="raw")
    assert headers == [] and set(json.loads(value)) == {"label", "pixels", "shape"}
    sample = decode_record(value, headers)
    assert sample.image.shape == shape
    np.testing.assert_array_equal(sample.image, image)
    assert sample.label == 3


@pytest.mark.parametrize("image", [SMOOTH, SMOOTH[:, :, None], SMOOTH_RGB], ids=["grey", "grey1", "rgb"])
@pytest.mark.parametrize("fmt", ["json", "binary"])
def test_jpeg_round_trip_is_close(image, fmt):
    sample = decode_record(*encode_record(image, "cat", fmt=fmt, image_format="jpeg"))
    expected = image[:, :, 0] if image.shape[-1:] == (1,) else image
    assert sample.image.dtype == np.uint8 and sample.image.shape == expected.shape
    assert np.abs(sample.image.astype(int) - expected.astype(int)).mean() < 3


def test_json_metadata_round_trip():
    value, _ = encode_record(IMAGES[(5, 7)], 7, id="rec-1", segment=2, ts=1_700_000_000.25)
    sample = decode_record(value, [])
    assert (sample.label, sample.id, sample.segment, sample.ts) == (7, "rec-1", 2, 1_700_000_000.25)


def test_binary_metadata_travels_in_headers_as_text():
    value, headers = encode_record(SMOOTH_RGB, 7, id=11, segment="s2", ts=1_700_000_000.25, fmt="binary")
    assert value.startswith(decode_module.PNG_SIGNATURE)
    assert dict(headers) == {
        "label": b"7", "content-type": b"image/png", "id": b"11", "segment": b"s2", "ts": b"1700000000.25",
    }
    sample = decode_record(value, headers)
    assert (sample.label, sample.id, sample.segment, sample.ts) == (7, "11", "s2", 1_700_000_000.25)  # canonical


def test_binary_jpeg_without_content_type_is_detected():
    value, _ = encode_record(SMOOTH, "cat", fmt="binary", image_format="jpeg")
    assert value.startswith(decode_module.JPEG_SOI)
    assert decode_record(value, [("label", b"cat")]).image.shape == SMOOTH.shape


def test_iso_timestamps_in_json_and_headers():
    image = _b64(PNG_3X3)
    assert decode_record(_json(label="a", image=image, ts="2024-01-01T00:00:00Z"), []).ts == 1_704_067_200.0
    assert decode_record(_json(label="a", image=image, ts="2024-01-01T01:00:00+01:00"), []).ts == 1_704_067_200.0
    assert decode_record(_json(label="a", image=image, ts="2024-01-01"), []).ts == 1_704_067_200.0  # naive = UTC
    assert decode_record(_json(label="a", image=image, ts=5), []).ts == 5.0
    headers = [("label", b"a"), ("ts", b"2024-01-01T00:00:00Z")]
    assert decode_record(PNG_3X3, headers).ts == 1_704_067_200.0
    assert decode_record(PNG_3X3, [("label", b"a"), ("ts", b"-1.5e3")]).ts == -1500.0
    value, headers = encode_record(SMOOTH, "a", ts="2024-01-01T00:00:00Z", fmt="binary")
    assert dict(headers)["ts"] == b"1704067200.0" and decode_record(value, headers).ts == 1_704_067_200.0


def test_unknown_extra_fields_are_ignored():
    value = _json(label="a", image=_b64(PNG_3X3), version=2, extra={"nested": [1, None, {"x": float("1e10")}]},
                  meta=None, Label="not the label")
    sample = decode_record(value, [("unrelated", b"\xff"), ("content-type", b"image/gif")])
    assert sample.label == "a" and sample.image.shape == (3, 3, 3)


def test_null_counts_as_absent():
    sample = decode_record(_json(label="a", image=None, pixels=_b64(bytes(4)), shape=[2, 2], id=None, ts=None), [])
    assert sample.image.shape == (2, 2) and sample.id is None and sample.ts is None


def test_decoded_arrays_are_fresh_and_feed_the_model_input():
    from pegp_stream.core.prepare import to_model_input

    samples = [decode_record(*encode_record(IMAGES[shape], "a", image_format=f)) for shape in SHAPES
               for f in ("png", "raw")]
    for sample in samples:
        assert sample.image.flags.writeable and sample.image.flags.c_contiguous
    batch = to_model_input([s.image for s in samples], (3, 8, 8), (0.5,) * 3, (0.5,) * 3)
    assert batch.shape == (len(samples), 3, 8, 8)


# --- Pillow modes --------------------------------------------------------------------------------------


def test_modes_other_than_l_rgb_rgba_are_converted():
    grey = Image.fromarray(SMOOTH)
    palette = Image.fromarray(SMOOTH_RGB).convert("P")
    cases = {
        "P": (palette, (16, 16, 3)),
        "1": (grey.convert("1"), (16, 16)),
        "LA": (grey.convert("LA"), (16, 16, 4)),
        "I;16": (Image.fromarray(SMOOTH.astype(np.uint16) * 257), (16, 16)),
    }
    palette_alpha = palette.copy()
    palette_alpha.info["transparency"] = 0
    cases["P+transparency"] = (palette_alpha, (16, 16, 4))
    for name, (image, shape) in cases.items():
        sample = decode_record(_image_bytes(image, "PNG"), [("label", b"a")])
        assert sample.image.dtype == np.uint8 and sample.image.shape == shape, name
    sixteen = decode_record(_image_bytes(cases["I;16"][0], "PNG"), [("label", b"a")]).image
    np.testing.assert_array_equal(sixteen, SMOOTH)  # v * 257 -> v exactly
    one_bit = decode_record(_image_bytes(cases["1"][0], "PNG"), [("label", b"a")]).image
    assert set(np.unique(one_bit)) <= {0, 255}


def test_cmyk_jpeg_becomes_rgb():
    cmyk = _image_bytes(Image.fromarray(SMOOTH_RGB).convert("CMYK"), "JPEG")
    assert decode_record(cmyk, [("label", b"a")]).image.shape == (16, 16, 3)


# --- reason codes --------------------------------------------------------------------------------------

IMAGE = _b64(PNG_3X3)
BAD_INPUTS = {
    "tombstone": (None, "empty_value"),
    "empty": (b"", "empty_value"),
    "not bytes": ("{}", "bad_field"),
    "malformed json": (b'{"label": "a", ', "malformed_json"),
    "not utf-8": (b'{"label": "\xff"}', "malformed_json"),
    "nan is not json": (b'{"label": "a", "image": "", "ts": NaN}', "malformed_json"),
    "too deep": (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),
    "list": (b'[{"label": "a"}]', "not_an_object"),
    "string": (b'"label"', "not_an_object"),
    "missing label": (_json(image=IMAGE), "missing_label"),
    "null label": (_json(label=None, image=IMAGE), "missing_label"),
    "bool label": (_json(label=True, image=IMAGE), "bad_label"),
    "float label": (_json(label=1.0, image=IMAGE), "bad_label"),
    "list label": (_json(label=["a"], image=IMAGE), "bad_label"),
    "empty label": (_json(label="", image=IMAGE), "bad_label"),
    "long label": (_json(label="x" * 257, image=IMAGE), "bad_label"),
    "huge int label": (_json(label=2**63, image=IMAGE), "bad_label"),
    "surrogate label": (b'{"label": "\\ud800", "image": ""}', "bad_label"),
    "no image": (_json(label="a"), "missing_image"),
    "both images": (_json(label="a", image=IMAGE, pixels=_b64(bytes(4)), shape=[2, 2]), "ambiguous_image"),
    "bad base64": (_json(label="a", image="not base64!"), "bad_base64"),
    "bad padding": (_json(label="a", image="iVBORw0"), "bad_base64"),
    "base64 with newline": (_json(label="a", image=IMAGE[:8] + "\n" + IMAGE[8:]), "bad_base64"),
    "url-safe base64": (_json(label="a", image="_-__"), "bad_base64"),
    "image not a string": (_json(label="a", image=[1, 2]), "bad_base64"),
    "undecodable": (_json(label="a", image=_b64(b"hello, world")), "undecodable_image"),
    "truncated png": (_json(label="a", image=_b64(PNG_3X3[:-30])), "undecodable_image"),
    "empty image": (_json(label="a", image=""), "undecodable_image"),
    "gif in json": (_json(label="a", image=_b64(_image_bytes(Image.new("RGB", (3, 3)), "GIF"))), "undecodable_image"),
    "bmp in json": (_json(label="a", image=_b64(_image_bytes(Image.new("RGB", (3, 3)), "BMP"))), "undecodable_image"),
    "gif as value": (_image_bytes(Image.new("RGB", (3, 3)), "GIF"), "undecodable_image"),
    "bmp as value": (_image_bytes(Image.new("RGB", (3, 3)), "BMP"), "undecodable_image"),
    "no shape": (_json(label="a", pixels=_b64(bytes(4))), "bad_shape"),
    "zero side": (_json(label="a", pixels="", shape=[0, 5]), "bad_shape"),
    "two channels": (_json(label="a", pixels=_b64(bytes(18)), shape=[3, 3, 2]), "bad_shape"),
    "4-d": (_json(label="a", pixels=_b64(bytes(16)), shape=[2, 2, 2, 2]), "bad_shape"),
    "1-d": (_json(label="a", pixels=_b64(bytes(4)), shape=[4]), "bad_shape"),
    "float side": (_json(label="a", pixels=_b64(bytes(4)), shape=[2.0, 2]), "bad_shape"),
    "bool side": (_json(label="a", pixels=_b64(bytes(1)), shape=[True, 1]), "bad_shape"),
    "shape not a list": (_json(label="a", pixels=_b64(bytes(4)), shape="2x2"), "bad_shape"),
    "too few bytes": (_json(label="a", pixels=_b64(bytes(11)), shape=[2, 2, 3]), "pixel_count_mismatch"),
    "too many bytes": (_json(label="a", pixels=_b64(bytes(5)), shape=[2, 2]), "pixel_count_mismatch"),
    "huge raw shape": (_json(label="a", pixels="", shape=[5000, 5000]), "too_many_pixels"),
    "bool id": (_json(label="a", image=IMAGE, id=False), "bad_field"),
    "empty segment": (_json(label="a", image=IMAGE, segment=""), "bad_field"),
    "segment object": (_json(label="a", image=IMAGE, segment={"n": 1}), "bad_field"),
    "ts not a time": (_json(label="a", image=IMAGE, ts="yesterday"), "bad_field"),
    "ts infinite": (b'{"label": "a", "image": "", "ts": 1e400}', "bad_field"),
    "ts huge int": (_json(label="a", image=IMAGE, ts=10**400), "bad_field"),
    "ts bool": (_json(label="a", image=IMAGE, ts=True), "bad_field"),
    "repeated label": (b'{"label": "a", "label": "b", "image": ""}', "bad_field"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_each_bad_json_input_has_its_reason(name):
    value, reason = BAD_INPUTS[name]
    assert reason_of(value, []) == reason


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([], "missing_label"),
        ([("label", None)], "missing_label"),
        ([("id", b"1")], "missing_label"),
        ([("label", b"")], "bad_label"),
        ([("label", b"\xff\xfe")], "bad_label"),
        ([("label", b"x" * 300)], "bad_label"),
        ([("label", 5)], "bad_label"),
        ([("label", b"a"), ("segment", b"")], "bad_field"),
        ([("label", b"a"), ("id", b"\xff")], "bad_field"),
        ([("label", b"a"), ("ts", b"nan")], "bad_field"),
        ([("label", b"a"), ("ts", b"1e999")], "bad_field"),
        ([("label", b"a"), ("ts", b"soon")], "bad_field"),
        ([("label",)], "bad_field"),
        (None, "bad_field"),
        ([("label", b"a"), 7], "bad_field"),
    ],
)
def test_each_bad_header_has_its_reason(headers, reason):
    assert reason_of(PNG_3X3, headers) == reason


def test_headers_last_wins_and_json_form_ignores_headers():
    assert decode_record(PNG_3X3, [("label", b"a"), ("label", b"b")]).label == "b"
    assert decode_record(_json(label="a", image=IMAGE), None).label == "a"  # type: ignore[arg-type]


def test_oversize_record():
    value = _json(label="a", image=IMAGE)
    assert reason_of(value, [], DecodeLimits(max_record_bytes=len(value) - 1)) == "too_large"
    assert decode_record(value, [], DecodeLimits(max_record_bytes=len(value))).label == "a"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (png_declaring(5000, 5000), "H * W over max_pixels, checked before decoding"),
        (png_declaring(5000, 1), "one side over max_side"),
        (png_declaring(100_000, 100_000), "Pillow's own decompression-bomb error"),
        (jpeg_declaring(60_000, 60_000), "a JPEG header"),
    ],
)
def test_declared_size_is_checked_before_decoding(data, why):
    assert reason_of(data, [("label", b"a")]) == "too_many_pixels", why
    assert reason_of(_json(label="a", image=_b64(data)), []) == "too_many_pixels", why


def test_pillow_bomb_warning_made_an_error_is_too_many_pixels():
    limits = DecodeLimits(max_pixels=2**40, max_side=2**20)  # past Pillow's warning level (~89 M pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert reason_of(png_declaring(10_000, 10_000), [("label", b"a")], limits) == "too_many_pixels"


def test_custom_limits_apply_to_real_images():
    value, headers = encode_record(SMOOTH, "a")
    assert reason_of(value, headers, DecodeLimits(max_pixels=255)) == "too_many_pixels"
    assert reason_of(value, headers, DecodeLimits(max_side=15)) == "too_many_pixels"
    assert decode_record(value, headers, DecodeLimits(max_pixels=256, max_side=16)).image.shape == (16, 16)
    assert reason_of(_json(label="abc", image=IMAGE), [], DecodeLimits(max_label_chars=2)) == "bad_label"


def test_decode_error_is_precise_and_picklable():
    with pytest.raises(DecodeError) as caught:
        decode_record(_json(label="a", pixels=_b64(bytes(5)), shape=[2, 2]), [])
    error = caught.value
    assert isinstance(error, PegpError) and isinstance(error, ValueError)
    assert (error.reason, error.field) == ("pixel_count_mismatch", "pixels")
    assert str(error) == "pixels: has 5 bytes but shape [2, 2] needs 4"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.field, str(copy)) == (error.reason, error.field, str(error))


def test_messages_are_short_ascii():
    value = b'{"label": "\\ud800' + b"\xc3\xa9" * 200 + b'", "image": ""}'
    with pytest.raises(DecodeError) as caught:
        decode_record(value, [])
    assert str(caught.value).isascii() and len(str(caught.value)) < 200


def test_limits_are_frozen_documented_and_strict():
    assert DecodeLimits.model_config["frozen"]
    assert all(field.description for field in DecodeLimits.model_fields.values())
    with pytest.raises(ValueError):
        DecodeLimits(max_pixels=0)
    with pytest.raises(ValueError):
        DecodeLimits(max_pixel=10)  # type: ignore[call-arg]


# --- the producer side ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "kwargs"),
    [
        (SMOOTH.astype(np.float32), {}),
        (SMOOTH.tolist(), {}),
        (np.zeros((2, 2, 2), np.uint8), {}),
        (np.zeros((0, 2), np.uint8), {}),
        (np.zeros((2, 2, 4), np.uint8), {"image_format": "jpeg"}),
        (SMOOTH, {"image_format": "raw", "fmt": "binary"}),
        (SMOOTH, {"fmt": "xml"}),
        (SMOOTH, {"image_format": "webp"}),
        (SMOOTH, {"label": True}),
        (SMOOTH, {"label": ""}),
        (SMOOTH, {"id": 1.5}),
        (SMOOTH, {"ts": float("nan")}),
        (SMOOTH, {"ts": "yesterday"}),
    ],
)
def test_encode_rejects_what_decode_would(image, kwargs):
    kwargs = {"label": "a", **kwargs}
    with pytest.raises(EncodeError):
        encode_record(image, **kwargs)


def test_encode_leaves_the_image_unchanged():
    image = IMAGES[(5, 7, 1)]
    before = image.copy()
    for image_format in ("png", "raw"):
        encode_record(image, "a", image_format=image_format)
    np.testing.assert_array_equal(image, before)


# --- properties: whatever arrives, only DecodeError ----------------------------------------------------


def _check_outcome(value, headers) -> None:
    try:
        sample = decode_record(value, headers)
    except DecodeError as error:
        assert error.reason in REASONS and str(error).isascii()
        return
    assert isinstance(sample, Sample)
    assert sample.image.dtype == np.uint8
    assert sample.image.ndim == 2 or (sample.image.ndim == 3 and sample.image.shape[2] in (1, 3, 4))
    assert isinstance(sample.label, str | int) and not isinstance(sample.label, bool)


header_names = st.sampled_from(["label", "id", "segment", "ts", "content-type"]) | st.text(max_size=6)
header_values = st.none() | st.binary(max_size=24) | st.sampled_from([b"", b"1", b"2024-01-01", b"nan", b"a"])
values = (
    st.none()
    | st.binary(max_size=256)
    | st.binary(max_size=64).map(lambda tail: decode_module.PNG_SIGNATURE + tail)
    | st.binary(max_size=64).map(lambda tail: decode_module.JPEG_SOI + tail)
    | st.integers(0, len(PNG_3X3)).map(lambda cut: PNG_3X3[:cut])
    | st.tuples(st.integers(0, len(PNG_3X3) - 1), st.integers(0, 255)).map(
        lambda edit: PNG_3X3[: edit[0]] + bytes([edit[1]]) + PNG_3X3[edit[0] + 1 :]
    )
)


@settings(max_examples=300, deadline=None)
@given(value=values, headers=st.lists(st.tuples(header_names, header_values), max_size=6))
def test_random_bytes_and_headers_raise_only_decode_error(value, headers):
    _check_outcome(value, headers)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
plausible = {
    "label": st.text(max_size=4) | st.integers(-3, 3),
    "id": st.text(max_size=4) | st.integers(),
    "segment": st.text(max_size=4) | st.integers(),
    "ts": st.floats() | st.sampled_from(["2024-01-01", "2024-13-01", "0001-01-01T00:00:00+01:00"]),
}
image_fields = (
    st.just({"image": IMAGE})
    | st.tuples(st.integers(1, 4), st.integers(1, 4), st.sampled_from([(), (1,), (3,), (4,)])).map(
        lambda dims: {"pixels": _b64(bytes(math.prod(dims[:2] + dims[2]))), "shape": [*dims[:2], *dims[2]]}
    )
    | st.fixed_dictionaries(
        {},
        optional={
            "image": st.sampled_from([IMAGE, _b64(b"junk"), "", "@@", _b64(png_declaring(9000, 9000))]) | json_values,
            "pixels": st.binary(max_size=48).map(_b64) | json_values,
            "shape": st.lists(st.integers(-1, 5), max_size=4) | json_values,
        },
    )
)
# Real keys with plausible or arbitrary values (label nearly always there, so later checks are reached),
# mixed in with unknown keys.
records = st.builds(
    lambda extra, image, known: {**extra, **image, **known},
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    image_fields,
    st.fixed_dictionaries(
        {"label": plausible["label"] | json_values},
        optional={key: strategy | json_values for key, strategy in plausible.items() if key != "label"},
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=records | json_values)
def test_random_json_raises_only_decode_error(document):
    _check_outcome(json.dumps(document).encode("utf-8"), [])


@settings(max_examples=100, deadline=None)
@given(document=records, cut=st.integers(0, 200))
def test_truncated_json_raises_only_decode_error(document, cut):
    _check_outcome(json.dumps(document).encode("utf-8")[:cut], [])
