"""Reading image files, with truncated and corrupt files reported by name.

cv2 decodes a JPEG cut short without an error: libjpeg fills the missing rows with grey and prints
``Premature end of JPEG file`` to stderr, naming no file, and the grey rows then go into training
or evaluation unseen. Every image the library reads goes through :func:`read_rgb` (datasets,
evaluation through them, the FiftyOne builder and YOLO export through :func:`check_image`, the
embedded generator's cache check through :func:`image_problem`), which checks the file's structure
before decoding:

* the file exists and is not empty;
* a JPEG (``FF D8 FF``) ends with its end-of-image marker ``FF D9`` (trailing zero bytes or
  whitespace, which some writers pad with, are allowed);
* a PNG (its 8-byte signature) ends with an ``IEND`` chunk;
* any other content must be a format cv2 decodes, and the decode must not return None.

A JPEG damaged inside its data but with its end marker intact still decodes (libjpeg says
``Corrupt JPEG data`` on stderr): the check catches what a cut-short copy or download leaves, the
common case, not every flipped bit. :class:`CorruptImageError` says which file, and which sample
when the caller passes ``what`` (``"sample 3, image id 12"``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type and its fixed CRC
_TAIL = 64  # bytes read from the end of a file to find its end marker


class CorruptImageError(ValueError):
    """An image file that is empty, truncated or cannot be decoded; the message names the file
    (and the sample, when the reader was told which)."""

    def __init__(self, path, problem: str, what: str | None = None):
        self.path, self.problem, self.what = Path(path), problem, what
        where = f" ({what})" if what else ""
        super().__init__(f"corrupt image {path}{where}: {problem}; re-copy or regenerate the file")


def _where(what) -> str:
    return f" ({what})" if what else ""


def _structure_problem(head: bytes, tail: bytes, size: int) -> str | None:
    """The problem with a file of ``size`` bytes that starts with ``head`` and ends with ``tail``."""
    if size == 0:
        return "the file is empty (0 bytes)"
    if head.startswith(_JPEG_SOI):
        if not tail.rstrip(b"\x00 \t\r\n").endswith(_JPEG_EOI):
            return (f"JPEG truncated: no end-of-image marker FF D9 at the end of its {size} bytes "
                    "(cv2 would fill the missing rows with grey)")
    elif head.startswith(_PNG_SIG):
        if not tail.rstrip(b"\x00").endswith(_PNG_IEND):
            return f"PNG truncated: no IEND chunk at the end of its {size} bytes"
    return None


def image_problem(path) -> str | None:
    """What is wrong with the structure of image file ``path``, or None when it looks whole.

    Reads only the first and last few bytes, so it is cheap enough to run over a whole folder.
    Raises ``FileNotFoundError`` when there is no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(max(0, size - _TAIL))
        tail = f.read()
    return _structure_problem(head, tail, size)


def check_image(path, what: str | None = None) -> Path:
    """Raise :class:`CorruptImageError` (or ``FileNotFoundError``) unless ``path`` looks whole; returns the path.

    A structural check only (see :func:`image_problem`); :func:`read_rgb` also decodes.
    """
    try:
        problem = image_problem(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}{_where(what)}") from None
    if problem:
        raise CorruptImageError(path, problem, what)
    return Path(path)


def read_rgb(path, what: str | int | None = None) -> np.ndarray:
    """Decode an image file with cv2 and return it as RGB uint8 ``(H, W, 3)``.

    ``what`` names the sample in error messages (``"sample 3, image id 12"``; an int ``i`` reads as
    ``"sample i"``). Raises ``FileNotFoundError`` for a missing file and :class:`CorruptImageError`
    for an empty, truncated or undecodable one.
    """
    import cv2

    if isinstance(what, (int, np.integer)) and not isinstance(what, bool):
        what = f"sample {int(what)}"
    check_image(path, what)
    # cv2.imread, not imdecode on the bytes: the exact decode (EXIF rotation included) that the
    # official HRNet pipeline and the golden tests use
    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None:
        raise CorruptImageError(path, f"cv2 cannot decode it ({Path(path).stat().st_size} bytes; "
                                      "not an image, or damaged)", what)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
