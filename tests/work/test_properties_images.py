"""Properties of image sanitising (`work/images.process_image`): any input is an image or a refusal.

Whatever a client puts in `image_data` (any text, base64 of any bytes, small images of every
accepted format with bytes flipped, cut or spliced in, base64 damaged), `process_image` either
returns the base64 of a PNG or JPEG within the box, or raises `ImageRejected` with a short
`image_data: ...` reason, never another exception. Sizes are kept tiny so that it stays fast.
"""

from __future__ import annotations

import base64
import io

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from gischat.work.images import ImageRejected, process_image

from properties_profile import examples

MAX_SIZE = 8
MAX_PIXELS = 64 * 64
REASONS = (
    "image_data: empty",
    "image_data: not valid base64",
    "image_data: not a supported image (PNG, JPEG, GIF, WebP or BMP)",
    "image_data: corrupt or truncated image",
)


def tiny(fmt: str, mode: str, size: tuple[int, int] = (12, 7)) -> bytes:
    image = Image.new(mode, size, color=None)
    for x in range(size[0]):
        image.putpixel(
            (x, x % size[1]), (x * 40) % 256 if mode in ("L", "P", "1") else (x * 40 % 256,) * len(mode)
        )
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


SAMPLES = [
    tiny("PNG", "RGBA"),
    tiny("PNG", "L"),
    tiny("PNG", "P"),
    tiny("JPEG", "RGB"),
    tiny("JPEG", "L"),
    tiny("GIF", "P"),
    tiny("WEBP", "RGB"),
    tiny("BMP", "RGB"),
    tiny("TIFF", "RGB"),  # identified by Pillow, refused here
]


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A small image of an accepted format (or one refused) with a few bytes flipped, cut or added."""
    data = draw(st.sampled_from(SAMPLES))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["flip", "cut", "splice", "set"]))
        at = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
        elif action == "cut":
            data = data[:at]
        elif action == "splice":
            data = data[:at] + draw(st.binary(max_size=8)) + data[at:]
        else:  # a header field, a length or a dimension set to an extreme
            data = (
                data[:at]
                + draw(st.sampled_from([b"\xff\xff", b"\x00\x00", b"\x7f\xff\xff\xff"]))
                + data[at + 2 :]
            )
        if not data:
            break
    return data


@st.composite
def damaged_base64(draw: st.DrawFn) -> str:
    """Valid base64 of a sample, wrapped, padded wrongly or with a foreign character put in."""
    text = base64.b64encode(draw(st.sampled_from(SAMPLES))).decode()
    action = draw(st.sampled_from(["wrap", "pad", "foreign", "space"]))
    at = draw(st.integers(0, len(text)))
    if action == "wrap":
        return "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    if action == "pad":
        return text[:at] + "=" * draw(st.integers(1, 3)) + text[at:]
    if action == "foreign":
        return text[:at] + draw(st.characters(exclude_categories=["Cs"])) + text[at:]
    return " \t" + text + "\n"


INPUTS = (
    damaged().map(lambda data: base64.b64encode(data).decode())
    | damaged_base64()
    | st.binary(max_size=64).map(lambda data: base64.b64encode(data).decode())
    | st.text(max_size=40)
)


@examples(400)
@given(image_data=INPUTS)
def test_any_image_data_is_an_image_or_a_refusal(image_data: str) -> None:
    try:
        result = process_image(image_data, max_size=MAX_SIZE, max_pixels=MAX_PIXELS)
    except ImageRejected as exc:
        reason = str(exc)
        assert reason in REASONS or reason.startswith("image_data: image too large ("), reason
        event(f"refused: {reason.split('(')[0]}")
        return
    data = base64.b64decode(result, validate=True)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format in ("PNG", "JPEG")
        assert max(image.size) <= MAX_SIZE
        assert not image.info.get("exif")
        event(f"image: {image.format}")


@pytest.mark.parametrize(
    "sample", SAMPLES[:-1], ids=["png-rgba", "png-l", "png-p", "jpeg", "jpeg-l", "gif", "webp", "bmp"]
)
def test_the_samples_are_accepted(sample: bytes) -> None:
    """The property's starting points are images the server takes (TIFF aside)."""
    result = process_image(base64.b64encode(sample).decode(), max_size=MAX_SIZE, max_pixels=MAX_PIXELS)
    with Image.open(io.BytesIO(base64.b64decode(result))) as image:
        assert max(image.size) <= MAX_SIZE
