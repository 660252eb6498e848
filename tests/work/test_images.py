"""Tests for gischat.images: all images are generated in memory."""

from __future__ import annotations

import base64
import contextlib
import io
import random
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from PIL import ExifTags, Image, JpegImagePlugin, PngImagePlugin, features

from gischat.work.images import ImageRejected, process_image

MAX_SIZE = 800
MAX_PIXELS = 40_000_000
RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 255, 0)
METADATA_KEYS = {"exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment", "Comment", "Author", "gps"}

needs_webp = pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")


# --- helpers -------------------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def run(data: bytes, *, max_size: int = MAX_SIZE, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Process raw image bytes and return the decoded output, checking the output is clean base64."""
    out = process_image(b64(data), max_size=max_size, max_pixels=max_pixels)
    assert "\n" not in out
    assert out == out.strip()
    im = Image.open(io.BytesIO(base64.b64decode(out, validate=True)))
    im.load()
    return im


def rejected(data: str, *, max_size: int = MAX_SIZE, max_pixels: int = MAX_PIXELS) -> str:
    with pytest.raises(ImageRejected) as info:
        process_image(data, max_size=max_size, max_pixels=max_pixels)
    return str(info.value)


def gradient(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A smooth, non-uniform picture (uniform ones would hide resampling and rotation bugs)."""
    gray = Image.linear_gradient("L").resize(size)
    if mode == "L":
        return gray
    return Image.merge(
        "RGB", (gray, gray.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gray.rotate(90))
    ).convert(mode)


def photo(size: tuple[int, int]) -> bytes:
    """A realistic-ish camera JPEG: noise over a gradient, quality 90, hard to compress."""
    noise = Image.effect_noise(size, 40)
    base = gradient(size)
    return encode(Image.blend(base, Image.merge("RGB", (noise, noise, noise)), 0.3), "JPEG", quality=90)


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG, built by hand so that huge sizes cost no memory: a pixel bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter type byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    idat = [
        compressor.compress(row * min(rows_per_block, height - y)) for y in range(0, height, rows_per_block)
    ]
    idat.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A tiny real JPEG whose SOF header is patched to claim another size."""
    data = bytearray(encode(gradient((16, 16)), "JPEG"))
    pos = 2  # after SOI
    while data[pos + 1] != 0xC0:  # walk the marker segments up to SOF0
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def dominant(pixel: tuple[int, ...]) -> str:
    r, g, b = pixel[:3]
    return (
        "red" if r > 200 and g < 60 and b < 60 else "blue" if b > 200 and r < 60 and g < 60 else repr(pixel)
    )


def assert_no_metadata(raw: bytes, im: Image.Image) -> None:
    assert len(im.getexif()) == 0
    assert not METADATA_KEYS & set(im.info), im.info
    if isinstance(im, PngImagePlugin.PngImageFile):
        assert im.text == {}
    for secret in (b"Exif", b"secret", b"fake-icc", b"xmpmeta", b"GPS"):
        assert secret not in raw


# --- resizing and formats ------------------------------------------------------------------------


def test_downscales_keeping_aspect_ratio() -> None:
    out = run(encode(gradient((2000, 1000)), "PNG"))
    assert (out.format, out.size) == ("PNG", (800, 400))


def test_never_upscales() -> None:
    out = run(encode(gradient((100, 50)), "PNG"))
    assert out.size == (100, 50)


def test_tall_image_fits_the_box() -> None:
    out = run(encode(gradient((300, 3000)), "PNG"), max_size=200)
    assert out.size == (20, 200)


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("JPEG", "JPEG"),
        ("PNG", "PNG"),
        ("GIF", "PNG"),
        pytest.param("WEBP", "PNG", marks=needs_webp),
        ("BMP", "PNG"),
    ],
)
def test_output_format(fmt: str, expected: str) -> None:
    out = run(encode(gradient((120, 80)), fmt), max_size=60)
    assert (out.format, out.size) == (expected, (60, 40))


def test_line_wrapped_base64_with_surrounding_whitespace_is_accepted() -> None:
    wrapped = base64.encodebytes(encode(gradient((64, 64)), "PNG")).decode("ascii").replace("\n", "\r\n")
    assert wrapped.count("\n") > 2
    out = process_image(f"  \n{wrapped}\n ", max_size=MAX_SIZE, max_pixels=MAX_PIXELS)
    assert Image.open(io.BytesIO(base64.b64decode(out, validate=True))).size == (64, 64)


def test_jpeg_draft_mode_decodes_big_photos_at_reduced_scale(
    big_photo: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded_sizes: list[tuple[int, int]] = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> Any:
        result = original_draft(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = run(big_photo)
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (800, 600))
    assert decoded_sizes[0] == (1000, 750)  # libjpeg decoded at 1/4 scale, not 4000x3000


# --- modes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fmt", "expected_format", "expected_mode"),
    [
        ("L", "JPEG", "JPEG", "L"),
        ("CMYK", "JPEG", "JPEG", "RGB"),
        ("RGB", "PNG", "PNG", "RGB"),
        ("RGBA", "PNG", "PNG", "RGBA"),
        ("LA", "PNG", "PNG", "LA"),
        ("L", "PNG", "PNG", "L"),
        ("1", "PNG", "PNG", "L"),
        ("P", "PNG", "PNG", "RGB"),
        ("P", "BMP", "PNG", "RGB"),
        ("RGB", "GIF", "PNG", "RGB"),
    ],
)
def test_modes_are_normalised(mode: str, fmt: str, expected_format: str, expected_mode: str) -> None:
    src = gradient((90, 60)).convert(mode)
    out = run(encode(src, fmt), max_size=45)
    assert (out.format, out.mode, out.size) == (expected_format, expected_mode, (45, 30))


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    src = Image.new("I;16", (2, 1))
    src.putpixel((0, 0), 0x8000)
    src.putpixel((1, 0), 0xFFFF)
    out = run(encode(src, "PNG"))
    assert out.mode == "L"
    assert (out.getpixel((0, 0)), out.getpixel((1, 0))) == (128, 255)


def test_palette_transparency_becomes_rgba() -> None:
    src = Image.new("P", (40, 40), 0)
    src.putpalette([0, 0, 0, *RED])
    src.paste(1, (20, 0, 40, 40))
    out = run(encode(src, "PNG", transparency=0))
    assert out.mode == "RGBA"
    assert out.getpixel((5, 5))[3] == 0  # type: ignore[index]
    assert out.getpixel((35, 5)) == (*RED, 255)


def test_rgba_alpha_survives_resizing() -> None:
    src = Image.new("RGBA", (400, 400), (*BLUE, 0))
    src.paste((*RED, 255), (200, 0, 400, 400))
    out = run(encode(src, "PNG"), max_size=100)
    assert out.mode == "RGBA"
    assert out.getpixel((10, 50))[3] == 0  # type: ignore[index]
    assert out.getpixel((90, 50)) == (*RED, 255)


def test_animated_gif_keeps_the_first_frame() -> None:
    frames = [Image.new("RGB", (60, 40), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = run(data)
    assert (out.format, out.size, getattr(out, "n_frames", 1)) == ("PNG", (60, 40), 1)
    assert out.convert("RGB").getpixel((30, 20)) == RED


@needs_webp
def test_animated_webp_keeps_the_first_frame() -> None:
    frames = [Image.new("RGB", (60, 40), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    out = run(data)
    assert (out.format, out.size) == ("PNG", (60, 40))
    assert dominant(out.getpixel((30, 20))) == "red"  # type: ignore[arg-type]


# --- orientation and metadata --------------------------------------------------------------------


def exif_with_gps(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "secret phone"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 24.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (2.0, 21.0, 3.0)
    return exif


def red_left_blue_right(size: tuple[int, int]) -> Image.Image:
    im = Image.new("RGB", size, RED)
    im.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return im


def test_jpeg_exif_orientation_is_applied_and_all_metadata_dropped() -> None:
    data = encode(
        red_left_blue_right((200, 100)),
        "JPEG",
        exif=exif_with_gps(6),
        icc_profile=b"fake-icc-profile",
        comment=b"secret comment",
        xmp=b"<x:xmpmeta>secret</x:xmpmeta>",
    )
    source = Image.open(io.BytesIO(data))  # the test image really carries all that
    assert source.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert {"exif", "icc_profile", "comment", "xmp"} <= set(source.info)

    raw = base64.b64decode(process_image(b64(data), max_size=MAX_SIZE, max_pixels=MAX_PIXELS))
    out = Image.open(io.BytesIO(raw))
    # Orientation 6: the stored picture must be rotated 90 degrees clockwise, so left goes on top.
    assert (out.format, out.size) == ("JPEG", (100, 200))
    assert dominant(out.getpixel((50, 20))) == "red"  # type: ignore[arg-type]
    assert dominant(out.getpixel((50, 180))) == "blue"  # type: ignore[arg-type]
    assert_no_metadata(raw, out)


def test_orientation_is_applied_to_resized_images() -> None:
    data = encode(red_left_blue_right((2000, 1000)), "JPEG", exif=exif_with_gps(8))
    out = run(data)
    # Orientation 8: rotate 90 degrees counter-clockwise, so left goes at the bottom.
    assert out.size == (400, 800)
    assert dominant(out.getpixel((200, 780))) == "red"  # type: ignore[arg-type]
    assert dominant(out.getpixel((200, 20))) == "blue"  # type: ignore[arg-type]


def test_png_text_icc_and_exif_are_dropped() -> None:
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret comment")
    text.add_itxt("Author", "secret author", zip=True)
    data = encode(
        red_left_blue_right((200, 100)), "PNG", pnginfo=text, icc_profile=b"fake-icc", exif=exif_with_gps(3)
    )
    source = Image.open(io.BytesIO(data))
    source.load()
    assert {"Comment", "Author", "icc_profile", "exif"} <= set(source.info)

    raw = base64.b64decode(process_image(b64(data), max_size=MAX_SIZE, max_pixels=MAX_PIXELS))
    out = Image.open(io.BytesIO(raw))
    out.load()
    assert (out.format, out.size) == ("PNG", (200, 100))
    assert dominant(out.getpixel((180, 50))) == "red"  # type: ignore[arg-type]  # orientation 3: 180 deg
    assert_no_metadata(raw, out)


# --- pixel bombs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    data = bilevel_png(20_000, 20_000)
    assert len(data) < 100_000  # 400 megapixels in a few tens of kB
    return data


@pytest.fixture(scope="module")
def big_photo() -> bytes:
    return photo((4000, 3000))


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def test_png_pixel_bomb_is_refused_quickly(png_bomb: bytes) -> None:
    start = time.perf_counter()
    reason = rejected(b64(png_bomb))
    elapsed = time.perf_counter() - start
    assert reason == f"image_data: image too large (20000x20000 pixels, max {MAX_PIXELS} pixels)"
    assert elapsed < 0.5


def test_size_above_max_pixels_but_below_pillow_limit_is_refused() -> None:
    reason = rejected(b64(bilevel_png(5000, 5000)), max_pixels=1_000_000)
    assert reason == "image_data: image too large (5000x5000 pixels, max 1000000 pixels)"


def test_max_pixels_is_inclusive() -> None:
    data = encode(gradient((100, 50)), "PNG")
    assert run(data, max_pixels=5000).size == (100, 50)
    assert "too large (100x50 pixels, max 4999 pixels)" in rejected(b64(data), max_pixels=4999)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_turned_error_is_still_a_clean_rejection() -> None:
    # 100 megapixels: above Image.MAX_IMAGE_PIXELS (warning) but below twice it (error).
    reason = rejected(b64(bilevel_png(10_000, 10_000)), max_pixels=200_000_000)
    assert reason == "image_data: image too large (10000x10000 pixels, max 200000000 pixels)"


@pytest.mark.parametrize(("width", "height"), [(65_000, 65_000), (8000, 6000)])
def test_jpeg_header_claiming_a_huge_size_is_refused(width: int, height: int) -> None:
    data = b64(jpeg_claiming(width, height))
    elapsed = timed(lambda: rejected(data))
    assert rejected(data) == f"image_data: image too large ({width}x{height} pixels, max {MAX_PIXELS} pixels)"
    assert elapsed < 0.5


# --- bad input -----------------------------------------------------------------------------------


def tiff() -> str:
    return b64(encode(gradient((10, 10)), "TIFF"))


def truncated_png() -> str:
    noise = Image.effect_noise((64, 64), 100).convert("RGB")
    data = encode(noise, "PNG")
    return b64(data[: len(data) // 2])


UNSUPPORTED = "image_data: not a supported image (PNG, JPEG, GIF, WebP or BMP)"


@pytest.mark.parametrize(
    ("make_input", "reason"),
    [
        (lambda: "", "image_data: empty"),
        (lambda: " \r\n\t", "image_data: empty"),
        (lambda: "not base64!", "image_data: not valid base64"),
        (lambda: "abc", "image_data: not valid base64"),
        (lambda: "aGVs bG8=", "image_data: not valid base64"),
        (lambda: "data:image/png;base64,aGVsbG8=", "image_data: not valid base64"),
        (lambda: "ünïcode", "image_data: not valid base64"),
        (lambda: b64(b"hello"), UNSUPPORTED),
        (tiff, UNSUPPORTED),
        (truncated_png, "image_data: corrupt or truncated image"),
        (lambda: b64(jpeg_claiming(16, 16)[:200]), "image_data: corrupt or truncated image"),
    ],
    ids=[
        "empty",
        "blank",
        "garbage",
        "bad-padding",
        "inner-space",
        "data-url",
        "non-ascii",
        "not-an-image",
        "tiff",
        "truncated-png",
        "truncated-jpeg",
    ],
)
def test_bad_input_is_rejected_with_a_reason(make_input: Callable[[], str], reason: str) -> None:
    assert rejected(make_input()) == reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", pytest.param("WEBP", marks=needs_webp)])
def test_corrupted_bytes_never_escape_as_another_exception(fmt: str) -> None:
    original = encode(gradient((48, 32)), fmt)
    rng = random.Random(fmt)
    for _ in range(60):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(1, len(data))]
        with contextlib.suppress(ImageRejected):
            run(bytes(data), max_pixels=1_000_000)


def test_invalid_limits_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="positive"):
        process_image(b64(b"x"), max_size=0, max_pixels=10)
