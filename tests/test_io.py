"""cmtlib.data.io: every input mode, depth and failure the readers promise to handle."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmtlib.data.io import MAX_PIXELS, ImageReadError, read_image, read_mask

pydicom = pytest.importorskip("pydicom")


def _phantom(h: int = 48, w: int = 40) -> np.ndarray:
    """uint8 (h, w): bright body (200) with a dark lung block (40) in the middle."""
    img = np.full((h, w), 200, dtype=np.uint8)
    img[h // 4:3 * h // 4, w // 4:3 * w // 4] = 40
    return img


def _save(tmp_path: Path, name: str, im: Image.Image, fmt: str = "PNG", **kw) -> Path:
    path = tmp_path / name
    im.save(path, format=fmt, **kw)
    return path


def _lung_vs_body(arr: np.ndarray) -> tuple[float, float]:
    h, w = arr.shape
    lung = arr[h // 4 + 2:3 * h // 4 - 2, w // 4 + 2:3 * w // 4 - 2].mean()
    body = np.concatenate([arr[:h // 4 - 1].ravel(), arr[3 * h // 4 + 1:].ravel()]).mean()
    return float(lung), float(body)


# ---- PNG / JPEG modes ---------------------------------------------------------------------------

def test_grayscale_png_scaled_by_255(tmp_path):
    arr, info = read_image(_save(tmp_path, "g.png", Image.fromarray(_phantom())))
    assert arr.dtype == np.float32 and arr.shape == (48, 40)
    assert arr[0, 0] == pytest.approx(200 / 255) and arr[24, 20] == pytest.approx(40 / 255)
    assert info["format"] == "PNG" and info["mode"] == "L" and info["orig_size"] == [48, 40]


def test_16bit_png_scaled_by_its_used_bit_depth(tmp_path):
    # A 12-bit detector in a 16-bit container: max 4000 -> 12 bits -> divide by 4095.
    values = np.linspace(0, 4000, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = _save(tmp_path, "deep.png", Image.fromarray(values))
    arr, info = read_image(path)
    assert info["mode"] == "I;16" and info["bits"] == 12 and info["scaling"] == "/4095"
    assert arr.max() == pytest.approx(4000 / 4095, abs=1e-6)
    assert arr[0, 0] == 0.0
    full = values.astype(np.uint32) * 16  # the same film using all 16 bits
    arr16, info16 = read_image(_save(tmp_path, "full.png", Image.fromarray(full.astype(np.uint16))))
    assert info16["bits"] == 16 and arr16.max() == pytest.approx(64000 / 65535, abs=1e-6)


def test_rgb_png_is_luma(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 1] = 255  # pure green: ITU-R 601 luma 0.587
    rgb[0, 0] = 0
    arr, info = read_image(_save(tmp_path, "rgb.png", Image.fromarray(rgb)))
    assert info["mode"] == "RGB" and arr[5, 5] == pytest.approx(150 / 255, abs=1 / 255)


def test_rgba_opaque_alpha_dropped_and_transparent_composited_on_black(tmp_path):
    gray = _phantom(32, 32)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    arr, info = read_image(_save(tmp_path, "a.png", Image.fromarray(rgba)))
    assert info["alpha"] == "dropped" and arr[0, 0] == pytest.approx(200 / 255)
    rgba[:4, :, 3] = 0  # transparent top rows over a bright body
    arr, info = read_image(_save(tmp_path, "b.png", Image.fromarray(rgba)))
    assert info["alpha"] == "composited on black"
    assert arr[:4].max() == 0.0 and arr[5, 0] == pytest.approx(200 / 255)


def test_la_png(tmp_path):
    gray = _phantom(32, 32)
    arr, info = read_image(_save(tmp_path, "la.png", Image.fromarray(np.dstack([gray, np.full_like(gray, 255)]), mode="LA")))
    assert info["mode"] == "LA" and arr[0, 0] == pytest.approx(200 / 255)


def test_palette_png_converted(tmp_path):
    im = Image.fromarray(_phantom()).convert("P")
    arr, info = read_image(_save(tmp_path, "p.png", im))
    assert info["mode"] == "P" and info["converted_from"] == "P"
    lung, body = _lung_vs_body(arr)
    assert lung == pytest.approx(40 / 255, abs=2 / 255) and body == pytest.approx(200 / 255, abs=2 / 255)


def test_one_bit_png(tmp_path):
    bits = np.zeros((20, 20), bool)
    bits[5:15, 5:15] = True
    arr, _ = read_image(_save(tmp_path, "one.png", Image.fromarray(bits)))
    assert set(np.unique(arr)) == {0.0, 1.0} and arr[10, 10] == 1.0


def test_format_from_content_not_extension(tmp_path):
    # ieee8023 really holds a PNG named .jpg.
    path = _save(tmp_path, "really_png.jpg", Image.fromarray(_phantom()))
    assert read_image(path)[1]["format"] == "PNG"


def test_large_jpeg_decoded_via_draft(tmp_path):
    big = np.kron(_phantom(48, 40), np.ones((20, 20), np.uint8))  # 960 x 800
    path = _save(tmp_path, "big.jpg", Image.fromarray(big).convert("RGB"), fmt="JPEG", quality=95)
    arr, info = read_image(path, target_size=100)
    assert info["draft"] is True and info["orig_size"] == [960, 800]
    assert arr.shape == (120, 100)  # 1/8 scale, never below the target
    lung, body = _lung_vs_body(arr)
    assert lung == pytest.approx(40 / 255, abs=0.03) and body == pytest.approx(200 / 255, abs=0.03)
    full, info_full = read_image(path)
    assert info_full["draft"] is False and full.shape == (960, 800)


# ---- failures, each with a reason ---------------------------------------------------------------

@pytest.mark.parametrize("content, reason", [
    (None, "file not found"),
    (b"", "file is empty (0 bytes)"),
    (b"id,label\n1,covid\n", "is not a PNG, JPEG or DICOM file"),
    (b"GIF89a" + bytes(40), "is a GIF file; convert it to PNG"),
])
def test_unreadable_files_say_why(tmp_path, content, reason):
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=re.escape(reason)):
        read_image(path)


def test_text_file_named_png_quotes_its_content(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello radiologist")
    with pytest.raises(ImageReadError, match="hello radiologist"):
        read_image(path)


def test_truncated_jpeg_refused_even_when_pillow_allows_truncation(tmp_path, monkeypatch):
    path = _save(tmp_path, "full.jpg", Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)), fmt="JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(ImageReadError, match="JPEG is truncated"):
        read_image(cut)
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some other library might
    with pytest.raises(ImageReadError, match="JPEG is truncated"):
        read_image(cut)


def test_truncated_png_refused(tmp_path):
    path = _save(tmp_path, "full.png", Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ImageReadError, match="PNG is truncated"):
        read_image(cut)


def test_tiny_image_refused(tmp_path):
    with pytest.raises(ImageReadError, match=r"1x1 px; at least 16 px"):
        read_image(_save(tmp_path, "dot.png", Image.new("L", (1, 1), 3)))


def test_blank_image_refused(tmp_path):
    with pytest.raises(ImageReadError, match="same value"):
        read_image(_save(tmp_path, "blank.png", Image.new("L", (32, 32), 0)))


def test_decompression_bomb_refused_before_decoding(tmp_path):
    # A PNG header claiming 9000 x 9000 px with a tiny body: refused from the header alone.
    side = int(MAX_PIXELS**0.5) + 1000
    data = bytearray(_save(tmp_path, "small.png", Image.fromarray(_phantom())).read_bytes())
    data[16:24] = side.to_bytes(4, "big") * 2
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(bomb)


def test_unsupported_mode_refused(tmp_path):
    path = _save(tmp_path, "cmyk.jpg", Image.new("CMYK", (32, 32), (0, 0, 0, 100)), fmt="JPEG")
    with pytest.raises(ImageReadError, match="mode CMYK is not supported"):
        read_image(path)


# ---- DICOM --------------------------------------------------------------------------------------

def _dicom(tmp_path: Path, name: str, pixels: np.ndarray, photometric: str = "MONOCHROME2", frames: int = 1, **tags) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / name), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _dicom_phantom(lung: int, body: int) -> np.ndarray:
    img = np.full((48, 40), body, np.uint16)
    img[12:36, 10:30] = lung
    img[0, 0] = 0 if lung > body else 4000  # stretch the range a little
    return img


@pytest.mark.parametrize("photometric, lung, body", [("MONOCHROME2", 300, 3000), ("MONOCHROME1", 3000, 300)])
def test_dicom_lungs_come_out_dark_in_both_photometrics(tmp_path, photometric, lung, body):
    # In MONOCHROME1 the lungs are stored HIGH; the reader inverts so they are dark either way.
    arr, info = read_image(_dicom(tmp_path, f"{photometric}.dcm", _dicom_phantom(lung, body), photometric))
    assert info["format"] == "DICOM" and info["inverted"] == (photometric == "MONOCHROME1")
    lung_mean, body_mean = _lung_vs_body(arr)
    assert lung_mean < 0.2 < 0.6 < body_mean
    assert arr.min() == 0.0 and arr.max() == 1.0


def test_dicom_rescale_slope_intercept_applied(tmp_path):
    pixels = _dicom_phantom(300, 3000)
    arr, info = read_image(_dicom(tmp_path, "r.dcm", pixels, RescaleSlope=2, RescaleIntercept=-1024))
    assert info["rescaled"] is True
    # min-max after a linear rescale equals min-max of the stored values
    expected = (pixels.astype(float) - pixels.min()) / (pixels.max() - pixels.min())
    np.testing.assert_allclose(arr, expected, atol=1e-6)
    # A window given in rescaled units (stored 1500..2500 -> -1024 + 2 x stored) only clips
    # where it should if the rescale was applied first.
    ramp = np.tile(np.linspace(0, 4000, 41), (32, 1)).astype(np.uint16)
    arr, info = read_image(_dicom(tmp_path, "rw.dcm", ramp, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=2976, WindowWidth=2000))
    assert info["rescaled"] and info["windowed"]
    assert arr[ramp <= 1500].max() == 0.0 and arr[ramp >= 2500].min() == 1.0
    assert 0.45 < arr[ramp == 2000].mean() < 0.55


def test_dicom_window_clips_outside_and_is_linear_inside(tmp_path):
    pixels = np.tile(np.linspace(0, 4000, 40), (32, 1)).astype(np.uint16)
    arr, info = read_image(_dicom(tmp_path, "w.dcm", pixels, WindowCenter=2000, WindowWidth=1000))
    assert info["windowed"] is True
    assert arr[pixels <= 1400].max() == 0.0 and arr[pixels >= 2600].min() == 1.0
    inside = (pixels > 1600) & (pixels < 2400)
    np.testing.assert_allclose(arr[inside], (pixels[inside] - 1499.5) / 999, atol=2e-3)


def test_dicom_padding_ignored_in_scaling_and_set_to_minimum(tmp_path):
    pixels = _dicom_phantom(1000, 2000)
    pixels[0, 0] = 1500
    pixels[:, :3] = 4095  # padding strip
    arr, info = read_image(_dicom(tmp_path, "pad.dcm", pixels, PixelPaddingValue=4095))
    assert info["padding_pixels"] == 48 * 3
    assert arr[:, :3].max() == 0.0
    assert arr[20, 20] == 0.0 and arr[0, 10] == 1.0  # 1000 -> 0, 2000 -> 1: padding did not stretch it


def test_dicom_multiframe_refused(tmp_path):
    path = _dicom(tmp_path, "multi.dcm", np.stack([_dicom_phantom(300, 3000)] * 2), frames=2)
    with pytest.raises(ImageReadError, match="multi-frame DICOM"):
        read_image(path)


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    import sys

    path = _dicom(tmp_path, "a.dcm", _dicom_phantom(300, 3000))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(ImageReadError, match="pydicom is not installed"):
        read_image(path)


# ---- masks --------------------------------------------------------------------------------------

def test_mask_same_size_and_rescaled_same_aspect(tmp_path):
    mask = np.zeros((50, 40), np.uint8)
    mask[10:30, 5:25] = 255
    path = _save(tmp_path, "m.png", Image.fromarray(mask))
    same = read_mask(path, (50, 40))
    assert same.dtype == bool and same.sum() == 20 * 20
    up = read_mask(path, (100, 80))  # image twice the mask's size, same aspect
    assert up.shape == (100, 80) and up[20:60, 10:50].all() and up.sum() == 40 * 40


def test_mask_stored_as_zero_one_and_alpha(tmp_path):
    ones = np.zeros((20, 20), np.uint8)
    ones[:10] = 1
    assert read_mask(_save(tmp_path, "01.png", Image.fromarray(ones)), (20, 20)).sum() == 200
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :5, 3] = 255  # foreground drawn by alpha only (as GeneralBlockchain's masks)
    assert read_mask(_save(tmp_path, "a.png", Image.fromarray(rgba)), (20, 20)).sum() == 100


def test_mask_of_other_aspect_refused(tmp_path):
    path = _save(tmp_path, "m.png", Image.fromarray(np.full((50, 40), 255, np.uint8)))
    with pytest.raises(ImageReadError, match="another aspect ratio"):
        read_mask(path, (50, 80))


# ---- real files ---------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_real_files_of_each_mode_read_with_contrast(cxr_public):
    files = sorted((cxr_public / "ieee8023_via_GeneralBlockchain_lungboxes" / "images").iterdir())
    files += sorted((cxr_public / "nih_chestxray14").rglob("*.png"))[:3]
    # cxr-public holds no 16-bit file; test_16bit_png_scaled_by_its_used_bit_depth covers that mode.
    seen: dict[tuple[str, str], int] = {}
    for path in files:
        with Image.open(path) as im:
            key = (im.format, im.mode)
        if seen.get(key, 0) >= 2:
            continue
        seen[key] = seen.get(key, 0) + 1
        arr, info = read_image(path, target_size=224)
        assert arr.dtype == np.float32 and 0.0 <= arr.min() and arr.max() <= 1.0, path
        assert arr.std() > 0.08 and arr.max() - arr.min() > 0.5, f"{path} looks flat: {info}"
    for mode in ("L", "RGB", "RGBA", "P"):
        assert any(m == mode for _, m in seen), f"no {mode} file among the real images"
