"""Sanitising of images sent in chat messages.

Every image a client sends is decoded and re-encoded here before it is relayed to other users:

* **Privacy** - photos taken with phones carry EXIF metadata, very often including the GPS position
  where they were taken, plus camera serial numbers, XMP, comments, ICC profiles and PNG text
  chunks. Re-encoding from bare pixels guarantees none of it reaches other users. The EXIF
  orientation is applied first so that dropping the EXIF does not leave photos lying on their side.
* **Denial of service** - a PNG or GIF of a few kilobytes can declare 20000x20000 pixels and expand
  to gigabytes once decoded (a "pixel bomb"). The declared size is read from the header and checked
  against ``max_pixels`` before a single pixel is decoded.
* **Bandwidth** - images are fitted within ``max_size`` x ``max_size``. JPEG photos are decoded in
  draft mode, which lets libjpeg decode directly at 1/2, 1/4 or 1/8 scale: much faster and lighter
  than decoding a 12 MP photo and shrinking it afterwards.

Everything here is synchronous, CPU bound and free of global state changes (no Pillow globals are
touched), so the caller can run it in a thread pool.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["ImageRejected", "process_image"]

# Formats accepted as input. Anything else (TIFF, SVG, PSD, EPS...) is refused: a small allow-list of
# common, well-tested decoders keeps the attack surface small.
_INPUT_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
# Formats that come out as JPEG; all others are re-encoded as PNG. Pillow may report a JPEG carrying
# a multi-picture extension (some phone cameras) as MPO.
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_JPEG_QUALITY = 85
# Base64 characters decoded per call (a multiple of 4): about a millisecond of work each.
_BASE64_SLICE = 1 << 18

# Grayscale modes that should stay grayscale rather than be expanded to RGB.
_GRAY_MODES = frozenset({"1", "L", "LA", "F"})
_INT16_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# Maps 16-bit samples to 8 bits; a plain convert("L") would clip everything above 255 to white.
_INT16_TO_L = [value >> 8 for value in range(65536)]

_EMPTY = "image_data: empty"
_NOT_BASE64 = "image_data: not valid base64"
_UNSUPPORTED = "image_data: not a supported image (PNG, JPEG, GIF, WebP or BMP)"
_CORRUPT = "image_data: corrupt or truncated image"


class ImageRejected(ValueError):
    """Raised with a short human reason, e.g. "image_data: not valid base64".

    The reason is sent to the client verbatim.
    """


def process_image(image_data: str, *, max_size: int, max_pixels: int) -> str:
    """base64 text in -> base64 text (no newlines, standard alphabet, padded) of the re-encoded image out.

    The output is fitted within ``max_size`` x ``max_size`` (never upscaled), upright, stripped of all
    metadata, encoded as JPEG if the input was a JPEG and as PNG otherwise. Images declaring more than
    ``max_pixels`` pixels are refused before any decoding. Bad input of any kind raises
    :class:`ImageRejected`; no other exception escapes for bad input.
    """
    if max_size < 1 or max_pixels < 1:
        raise ValueError("max_size and max_pixels must be positive")
    data = _decode_base64(image_data)
    try:
        with _open_image(data, max_pixels) as im:
            is_jpeg = im.format in _JPEG_FORMATS
            picture = _decode_and_fit(im, max_size, is_jpeg)
        encoded = _encode(picture, is_jpeg)
    except ImageRejected:
        raise
    except Exception as exc:
        # Pillow signals bad data with a zoo of exceptions (OSError for truncation, SyntaxError,
        # ValueError, EOFError, struct.error, zlib.error, DecompressionBombError...). Everything in
        # this block is Pillow working on client data, so any failure means a broken image.
        raise ImageRejected(_CORRUPT) from exc
    return base64.b64encode(encoded).decode("ascii")


def _decode_base64(image_data: str) -> bytes:
    """Strictly decode base64, tolerating surrounding whitespace and line wrapping (MIME encoders).

    Decoded in slices: one C call on a whole photo would hold the GIL for tens of milliseconds,
    and the event loop thread, which needs it to serve every other room, would wait as long.
    """
    text = image_data.strip()
    if "\n" in text or "\r" in text:
        text = text.replace("\r", "").replace("\n", "")
    if not text:
        raise ImageRejected(_EMPTY)
    padding = text.find("=")
    if len(text) % 4 or (padding != -1 and padding < len(text) - 2):
        raise ImageRejected(_NOT_BASE64)
    try:
        data = b"".join(
            base64.b64decode(text[start : start + _BASE64_SLICE], validate=True)
            for start in range(0, len(text), _BASE64_SLICE)
        )
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters in a str
        raise ImageRejected(_NOT_BASE64) from exc
    if not data:
        raise ImageRejected(_EMPTY)
    return data


def _open_image(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Identify the image and check its declared size; Pillow's open() parses only the header.

    Pillow has its own, process-wide pixel limit (``Image.MAX_IMAGE_PIXELS``): above it open() warns,
    and above twice it raises ``DecompressionBombError`` without telling the dimensions. Both cases
    are reported with the same "too large" reason as our own, stricter, per-call limit.
    """
    try:
        im = Image.open(io.BytesIO(data), formats=_INPUT_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        width, height = _declared_size(data)
        raise ImageRejected(_too_large(width, height, max_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(_UNSUPPORTED) from exc
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ImageRejected(_too_large(width, height, max_pixels))
    return im


def _declared_size(data: bytes) -> tuple[int, int]:
    """Read the dimensions from the header with the plugin Image.open() would use.

    Only called after Pillow refused the image as a decompression bomb: the plugin factories parse the
    header just like ``Image.open`` but skip its global pixel check, which gives us the size to report.
    """
    Image.init()
    prefix = data[:16]
    for fmt in _INPUT_FORMATS:
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept is not None else True
        if isinstance(accepted, str) or not accepted:  # a str is a warning about a near miss
            continue
        try:
            with factory(io.BytesIO(data), "") as im:
                return im.size
        except (SyntaxError, IndexError, TypeError, struct.error):  # not this format, as in Image.open
            continue
    raise ImageRejected(_CORRUPT)  # not reached: Image.open already identified the image


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return f"image_data: image too large ({width}x{height} pixels, max {max_pixels} pixels)"


def _decode_and_fit(im: ImageFile.ImageFile, max_size: int, is_jpeg: bool) -> Image.Image:
    """Decode the (first frame of the) image, fit it in the box, make it upright and metadata-free."""
    if is_jpeg:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, the smallest still >= the fitted size: a
        # 4000x3000 photo fitted to 800x600 is decoded as 1000x750, sixteen times fewer pixels.
        im.draft("RGB" if im.mode == "RGB" else None, _fitted_size(im.size, max_size))
    im.load()  # first frame only for animated GIF/WebP/APNG
    picture = _normalise_mode(im, is_jpeg)
    # Resize before rotating: the box is square so the result is the same, and rotating is cheaper.
    # reducing_gap first shrinks by an integer factor with a box filter, then finishes with Lanczos.
    picture.thumbnail((max_size, max_size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    picture = ImageOps.exif_transpose(picture)
    return _strip_metadata(picture)


def _fitted_size(size: tuple[int, int], max_size: int) -> tuple[int, int]:
    """The size `thumbnail` will produce: inside the box, same aspect ratio, never larger."""
    width, height = size
    scale = min(max_size / width, max_size / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _normalise_mode(im: Image.Image, is_jpeg: bool) -> Image.Image:
    """Convert to L, LA, RGB or RGBA (L or RGB for JPEG output), keeping transparency.

    Done before resizing because Pillow resizes palette ("P") and bilevel ("1") images with
    nearest-neighbour only and cannot resize some other modes at all. 16-bit grayscale is scaled down
    to 8 bits (its rare tRNS transparency is dropped).
    """
    if im.mode in _INT16_MODES:
        return im.convert("I").point(_INT16_TO_L, "L")
    alpha = im.has_transparency_data and not is_jpeg
    base = "L" if im.mode in _GRAY_MODES else "RGB"
    target = base + "A" if alpha else base
    return im if im.mode == target else im.convert(target)


def _strip_metadata(im: Image.Image) -> Image.Image:
    """Return a new image holding only the pixels.

    Clearing ``info`` would not be enough: Pillow's encoders also read some metadata from ``info``
    (PNG takes the ICC profile, JPEG the comment) and the parsed EXIF is cached on the image object.
    """
    clean = Image.new(im.mode, im.size)
    clean.paste(im, (0, 0))
    return clean


def _encode(im: Image.Image, as_jpeg: bool) -> bytes:
    """Encode without any metadata: JPEG for photos (quality 85), lossless PNG for everything else."""
    out = io.BytesIO()
    if as_jpeg:
        im.save(out, "JPEG", quality=_JPEG_QUALITY, optimize=True)
    else:
        im.save(out, "PNG")
    return out.getvalue()
