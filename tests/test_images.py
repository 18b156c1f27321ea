"""Image reading: truncated, garbage and empty files raise an error naming the file and the sample."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from posekd_lib.data.images import CorruptImageError, check_image, image_problem, read_rgb


def picture(w: int = 96, h: int = 64) -> np.ndarray:
    """An RGB test picture with detail in every row (so a grey fill would show)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 7) % 256], axis=-1).astype(np.uint8)


def write_image(path, rgb=None, ext=".jpg") -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(picture() if rgb is None else rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def truncate(path, fraction: float = 1 / 3) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_whole_jpeg_and_png_read_back(tmp_path):
    for ext in (".jpg", ".png"):
        p = tmp_path / f"ok{ext}"
        write_image(p, ext=ext)
        rgb = read_rgb(p)
        assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8
        err = np.abs(rgb.astype(int) - picture())
        assert err.max() == 0 if ext == ".png" else err.mean() < 8  # RGB order, lossless / lossy
        assert image_problem(p) is None and check_image(p) == p


def test_truncated_jpeg_raises_naming_file_and_sample(tmp_path):
    p = tmp_path / "000000000042.jpg"
    write_image(p)
    truncate(p)
    assert cv2.imread(str(p)) is not None  # the defect: cv2 alone decodes it, grey rows and all
    with pytest.raises(CorruptImageError, match=r"000000000042\.jpg \(sample 3, image id 42\): JPEG truncated"):
        read_rgb(p, "sample 3, image id 42")
    with pytest.raises(CorruptImageError, match=r"000000000042\.jpg \(sample 7\)"):
        read_rgb(p, 7)
    with pytest.raises(CorruptImageError, match="FF D9"):
        check_image(p)


def test_truncated_png_garbage_and_empty_files_raise(tmp_path):
    png = tmp_path / "cut.png"
    write_image(png, ext=".png")
    truncate(png, 0.8)
    with pytest.raises(CorruptImageError, match=r"cut\.png \(sample 0\): PNG truncated"):
        read_rgb(png, 0)

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert image_problem(garbage) is None  # no image signature: only the decoder can tell
    with pytest.raises(CorruptImageError, match=r"garbage\.jpg \(sample 1\): cv2 cannot decode"):
        read_rgb(garbage, 1)

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for fn in (read_rgb, check_image):
        with pytest.raises(CorruptImageError, match=r"empty\.jpg \(sample 2\): the file is empty"):
            fn(empty, "sample 2")

    with pytest.raises(FileNotFoundError, match=r"nothing\.jpg \(sample 4\)"):
        read_rgb(tmp_path / "nothing.jpg", 4)
    assert issubclass(CorruptImageError, ValueError)


def test_padding_after_the_end_marker_is_accepted(tmp_path):
    p = tmp_path / "padded.jpg"
    p.write_bytes(write_image(p) + b"\x00" * 10 + b"\n")
    assert read_rgb(p).shape == (64, 96, 3)
