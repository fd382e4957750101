"""Reading chest X-rays and masks: PNG and JPEG in any common mode and depth, and DICOM.

Every reader returns a float32 (H, W) array in [0, 1] in which air and lungs are dark (the
MONOCHROME2 convention), plus an `info` dict that records what was done to get there
(docs/CONTRACTS.md). The format is detected from the file's content, never its extension: a
collection that names a PNG `.jpg` still reads, a text file named `.png` is refused by name.

Scaling to [0, 1]:
  * 8-bit (L, RGB, P, ...): divided by 255.
  * 16-bit (I;16, I): divided by 2**bits - 1, where bits is the bit length of the image's largest
    value (at least 8). A 12-bit detector stored in a 16-bit PNG reaches about 1.0 instead of
    1/16; min-max scaling would instead stretch every film to full contrast and hide exposure.
  * DICOM: min-max over the non-padding pixels after the modality and VOI LUTs, because after
    a window or LUT the nominal bit range says nothing about the values actually used.

Everything unreadable raises `ImageReadError` (a ValueError) whose message says what is wrong
and what to do; the cache turns it into a quarantine entry and goes on.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cmtlib.errors import CmtError

# A chest X-ray is never this small; a 1 x 1 file is a placeholder or a failed export.
MIN_SIDE = 16
# Below Pillow's own limit (about 89 M pixels), so an image we pass on never trips its warning;
# the largest chest films are about 4,300 x 4,300 (18.5 M).
MAX_PIXELS = 8_000 * 8_000
# A JPEG is decoded at 1/2, 1/4 or 1/8 size once it is this many times the target side or more.
DRAFT_FACTOR = 2

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
SUPPORTED_MODES = ("L", "1", "P", "PA", "RGB", "RGBA", "LA", "I;16", "I;16L", "I;16B", "I")
# What Pillow raises on broken files: OSError (truncated, UnidentifiedImageError), SyntaxError
# (broken PNG chunks), ValueError / EOFError (bad headers), DecompressionBombError.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# Other formats we can name when refusing them.
_OTHER_SIGNATURES = {b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WebP", b"%PDF": "PDF"}


class ImageReadError(CmtError, ValueError):
    """An image or mask that cannot be used; the message says why and how to fix it."""


def read_image(path: str | os.PathLike, target_size: int | tuple[int, int] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a PNG, JPEG or DICOM chest X-ray as grayscale in [0, 1], lungs dark.

    Args:
        path: the image file; its format is detected from its content.
        target_size: the side (or (height, width)) the caller will resize to. Only a hint: a JPEG
            at least twice as large is decoded at a reduced scale (never below target_size), and
            `info["draft"]` says so. The array is not resized here.

    Returns:
        (image, info): image is float32 of shape (H, W) in [0, 1]; info records format, mode,
        bits, orig_size (h, w of the stored image), inverted, rescaled, windowed, draft, alpha.

    Raises:
        ImageReadError: missing, empty, truncated, too small, too large or unsupported files.
    """
    return decode_image(read_bytes(path), target_size=target_size, name=str(path))


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image or mask file, refusing missing, non-regular and empty files."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"file not found: {path} (check the manifest's path column and its folder)")
    if not path.is_file():
        raise ImageReadError(f"not a regular file: {path}")
    data = path.read_bytes()
    if not data:
        raise ImageReadError(f"file is empty (0 bytes): {path}; the download or export failed, fetch it again")
    return data


def sniff_format(data: bytes, name: str = "image") -> str:
    """'PNG', 'JPEG' or 'DICOM' from the file's first bytes; anything else is refused."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_SIGNATURE):
        return "JPEG"
    if data[128:132] == b"DICM":
        return "DICOM"
    for magic, kind in _OTHER_SIGNATURES.items():
        if data.startswith(magic):
            raise ImageReadError(f"{name} is a {kind} file; convert it to PNG (supported: PNG, JPEG, DICOM)")
    head = data[:64]
    looks_text = all(32 <= b < 127 or b in b"\t\r\n" for b in head)
    what = f"text starting {head[:32].decode('ascii', 'replace')!r}" if looks_text else f"bytes {head[:8].hex()}"
    raise ImageReadError(f"{name} is not a PNG, JPEG or DICOM file (its content is {what}); the file name's extension does not decide the format")


def decode_image(data: bytes, target_size: int | tuple[int, int] | None = None, name: str = "image") -> tuple[np.ndarray, dict[str, Any]]:
    """`read_image` on bytes already in memory (the cache hashes them before decoding)."""
    fmt = sniff_format(data, name)
    if fmt == "DICOM":
        return _decode_dicom(data, name)
    if fmt == "PNG":
        width, height, bits = _png_header(data, name)
    else:
        width, height, bits = _jpeg_header(data, name)
    _check_dimensions(width, height, name)
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except _PIL_ERRORS as err:
        raise ImageReadError(f"{name}: {fmt} header cannot be read ({err}); the file is damaged") from err
    info: dict[str, Any] = {"format": fmt, "mode": im.mode, "bits": bits, "orig_size": [height, width], "draft": False}
    orientation = im.getexif().get(0x0112)
    if orientation not in (None, 1):
        # Pixels are kept as stored so that boxes given in stored pixels stay aligned.
        info["exif_orientation"] = int(orientation)
    if fmt == "JPEG" and target_size is not None:
        th, tw = (target_size, target_size) if isinstance(target_size, int) else target_size
        if width >= DRAFT_FACTOR * tw and height >= DRAFT_FACTOR * th:
            # draft("L") also decodes colour JPEGs straight to luma, which is what we want.
            im.draft("L", (tw, th))
            info["draft"] = im.size != (width, height)
    try:
        im.load()
    except _PIL_ERRORS as err:
        raise ImageReadError(f"{name}: {fmt} data cannot be decoded ({err}); the file is damaged or truncated") from err
    arr, extra = _pil_to_gray(im, name)
    info.update(extra)
    _check_not_blank(arr, name)
    return arr, info


def read_mask(path: str | os.PathLike, shape: tuple[int, int], out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask PNG for an image of `shape` (h, w).

    Foreground is alpha > 127 when the mask has a non-opaque alpha channel, else gray > 127, or
    gray > 0 when the mask is stored as 0/1. A mask of the image's aspect ratio but another size
    is rescaled (area interpolation, then threshold 0.5).

    Args:
        path: the mask file (PNG, or any format `read_image` accepts).
        shape: (h, w) of the image the mask belongs to, in stored pixels.
        out_shape: (h, w) to return; default `shape`. The cache passes its S x S here, which
            skips resizing to the image's full size first.

    Returns:
        bool array of out_shape.

    Raises:
        ImageReadError: unreadable mask, or a mask whose aspect ratio differs from the image's.
    """
    name = str(path)
    data = read_bytes(path)
    fmt = sniff_format(data, name)
    if fmt == "DICOM":
        raise ImageReadError(f"{name}: a mask must be a PNG, not DICOM")
    width, height, _ = _png_header(data, name) if fmt == "PNG" else _jpeg_header(data, name)
    _check_dimensions(width, height, name)
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
        im.load()
    except _PIL_ERRORS as err:
        raise ImageReadError(f"{name}: mask cannot be decoded ({err})") from err
    h, w = shape
    mh, mw = im.height, im.width
    # Same aspect within one pixel at the larger of the two sizes.
    if abs(mh * w - h * mw) > max(w, mw):
        raise ImageReadError(f"{name}: mask is {mw}x{mh} px but its image is {w}x{h} px (another aspect ratio), so it cannot belong to that image")
    fg = _mask_foreground(im)
    out_h, out_w = out_shape or shape
    if (mh, mw) != (out_h, out_w):
        resized = Image.fromarray(fg.astype(np.float32), mode="F").resize((out_w, out_h), Image.Resampling.BOX)
        fg = np.asarray(resized) >= 0.5
    return fg


def _mask_foreground(im: Image.Image) -> np.ndarray:
    """bool (H, W) foreground of a mask image in any mode."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha > 127
    if im.mode == "1":
        return np.asarray(im, dtype=bool)
    wide = im.mode in ("I;16", "I;16L", "I;16B", "I")
    gray = np.asarray(im if wide else im.convert("L"))
    if gray.max() <= 1:
        return gray > 0  # stored as 0/1
    return gray > (32767 if wide and gray.max() > 255 else 127)


def _pil_to_gray(im: Image.Image, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """float32 (H, W) in [0, 1] from a loaded Pillow image, with what was done."""
    extra: dict[str, Any] = {"alpha": None}
    mode = im.mode
    if mode not in SUPPORTED_MODES:
        raise ImageReadError(
            f"{name}: image mode {mode} is not supported (supported: {', '.join(SUPPORTED_MODES)}); "
            "convert it to 8-bit grayscale or RGB PNG"
        )
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        extra["converted_from"] = mode
        mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I"):
        values = np.asarray(im).astype(np.float64)  # (H, W)
        lo, hi = float(values.min()), float(values.max())
        if lo < 0:
            # Signed 32-bit data has no bit range to scale by; stretch what is there.
            extra.update(bits=32, scaling="minmax")
            return ((values - lo) / max(hi - lo, 1.0)).astype(np.float32), extra
        bits = max(8, int(hi).bit_length())
        extra.update(bits=bits, scaling=f"/{2 ** bits - 1}")
        return (values / (2**bits - 1)).astype(np.float32), extra
    if mode in ("RGBA", "LA"):
        alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
        gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        if alpha.min() >= 1.0:
            extra["alpha"] = "dropped"
            return gray, extra
        # Transparent means no signal; in an X-ray no signal is air, which is dark.
        extra["alpha"] = "composited on black"
        return gray * alpha, extra
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0, extra


def _check_dimensions(width: int, height: int, name: str) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageReadError(
            f"{name} is {width}x{height} px; at least {MIN_SIDE} px per side is needed to hold a chest X-ray "
            "(a placeholder or a failed export?)"
        )
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{name} claims {width}x{height} px ({width * height:,} pixels, above the {MAX_PIXELS:,} limit); "
            "refused as a possible decompression bomb; downscale it first if it is genuine"
        )


def _check_not_blank(arr: np.ndarray, name: str) -> None:
    if arr.size and float(arr.max()) == float(arr.min()):
        raise ImageReadError(f"{name} has the same value ({float(arr.min()):.3f}) in every pixel; a blank export holds no X-ray")


def _png_header(data: bytes, name: str) -> tuple[int, int, int]:
    """(width, height, bit depth) from IHDR, after checking every chunk is complete up to IEND.

    Pillow reads a truncated PNG without complaint when some other code has set
    ImageFile.LOAD_TRUNCATED_IMAGES; this walk does not depend on that global.
    """
    pos = len(PNG_SIGNATURE)
    if data[pos + 4:pos + 8] != b"IHDR" or len(data) < pos + 25:
        raise ImageReadError(f"{name}: PNG without a valid IHDR header; the file is damaged")
    width = int.from_bytes(data[pos + 8:pos + 12], "big")
    height = int.from_bytes(data[pos + 12:pos + 16], "big")
    bits = data[pos + 16]
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        pos += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            if pos > len(data):
                break
            return width, height, bits
    raise ImageReadError(f"{name}: PNG is truncated (it ends before its IEND chunk, {len(data):,} bytes); download or export it again")


# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header(data: bytes, name: str) -> tuple[int, int, int]:
    """(width, height, bits) from the SOF segment, after checking the scan data reaches EOI.

    Segments are walked by their lengths up to the first scan, so the end-of-image marker of an
    EXIF thumbnail (inside APP1) is never mistaken for the main image's. Inside scan data every
    0xFF byte is stuffed, so a later FF D9 is the real end of image.
    """
    pos, size = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageReadError(f"{name}: JPEG segment structure is broken at byte {pos}; the file is damaged")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF_MARKERS and pos + 9 <= len(data):
            bits = data[pos + 4]
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            size = (width, height, bits)
        if marker == 0xDA:  # start of scan
            if size is None:
                raise ImageReadError(f"{name}: JPEG has no frame header (SOF) before its image data; the file is damaged")
            if data.rfind(b"\xff\xd9") < pos:
                raise ImageReadError(
                    f"{name}: JPEG is truncated (no end-of-image marker after its image data, {len(data):,} bytes); "
                    "download or export it again"
                )
            return size
        pos += 2 + length
    raise ImageReadError(f"{name}: JPEG ends before its image data ({len(data):,} bytes); the file is truncated or damaged")


def _decode_dicom(data: bytes, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Single-frame grayscale (or RGB) DICOM -> [0, 1], MONOCHROME2 convention."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:
        raise ImageReadError(f"{name} is DICOM but pydicom is not installed; install it with pip install 'cmtlib[data]'") from err
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as err:  # pydicom raises many types on bad files; the reason is kept
        raise ImageReadError(f"{name}: DICOM cannot be parsed ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds:
        raise ImageReadError(f"{name}: DICOM holds no pixel data (a report or presentation state, not an image)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(f"{name}: multi-frame DICOM ({frames} frames); export the frontal frame as a single-frame file")
    _check_dimensions(int(ds.get("Columns", 0)), int(ds.get("Rows", 0)), name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"):
        raise ImageReadError(f"{name}: DICOM photometric interpretation {photometric} is not supported (MONOCHROME1/2, RGB, YBR_FULL)")
    try:
        stored = ds.pixel_array
    except Exception as err:  # missing decoder plug-ins, broken pixel data: pydicom's reason is kept
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageReadError(f"{name}: DICOM pixel data cannot be decoded (transfer syntax {syntax}: {err})") from err
    info: dict[str, Any] = {
        "format": "DICOM", "mode": photometric, "bits": int(ds.get("BitsStored", 8)),
        "orig_size": [int(stored.shape[0]), int(stored.shape[1])], "draft": False,
        "inverted": photometric == "MONOCHROME1", "rescaled": False, "windowed": False, "alpha": None,
    }
    if stored.ndim == 3:
        # (H, W, 3) RGB (pydicom converts YBR); ITU-R 601 luma, as Pillow's convert("L").
        values = stored.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return _minmax(values, np.zeros(values.shape, bool), name), info
    padding = _padding_mask(stored, ds)
    values = stored
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if ds.get("ModalityLUTSequence") or (slope, intercept) != (1.0, 0.0):
        values = apply_modality_lut(values, ds)
        info["rescaled"] = True
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        if ds.get("VOILUTSequence") and values.dtype.kind == "f":
            # A VOI LUT is indexed by integers; rescaled values are whole numbers in practice.
            values = np.rint(values).astype(np.int64)
        values = apply_voi_lut(values, ds)
        info["windowed"] = True
    out = _minmax(values.astype(np.float64), padding, name)
    if info["inverted"]:
        # MONOCHROME1 shows low values bright; flip so lungs are dark as in MONOCHROME2.
        out = 1.0 - out
    out[padding] = 0.0  # padding is outside the body: the minimum, after any inversion
    if padding.any():
        info["padding_pixels"] = int(padding.sum())
    return out, info


def _padding_mask(stored: np.ndarray, ds: Any) -> np.ndarray:
    """bool (H, W): pixels equal to PixelPaddingValue (or within its range limit)."""
    if "PixelPaddingValue" not in ds:
        return np.zeros(stored.shape, dtype=bool)
    pad = int(ds.PixelPaddingValue)
    limit = int(ds.get("PixelPaddingRangeLimit", pad))
    lo, hi = min(pad, limit), max(pad, limit)
    return (stored >= lo) & (stored <= hi)


def _minmax(values: np.ndarray, ignore: np.ndarray, name: str) -> np.ndarray:
    """float32 min-max scaling to [0, 1] over the pixels not in `ignore`."""
    kept = values[~ignore]
    if kept.size == 0:
        raise ImageReadError(f"{name}: every pixel is padding (PixelPaddingValue); no image content")
    lo, hi = float(kept.min()), float(kept.max())
    if hi == lo:
        raise ImageReadError(f"{name} has the same value ({lo:g}) in every non-padding pixel; a blank export holds no X-ray")
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
