"""Decoding one image file into RGB, whatever its mode, or one clear error."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MAX_PIXELS = 178_956_970  # PIL's own default bomb limit (~0.18 gigapixels), refused outright here


class ImageError(Exception):
    """A file that is not a readable image; the message names the file and the reason."""


def is_image_path(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image: EXIF orientation applied; greyscale, CMYK, RGBA,
    palette and 16-bit images converted; empty, truncated, corrupt and oversized files refused."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{path}: {w}x{h} pixels is over the limit of {max_pixels:,} (decompression bomb?)"
                    )
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(
            f"{path}: refused, over the limit of {max_pixels:,} pixels (decompression bomb?): {e}"
        ) from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{path}: unreadable image ({e})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16"):  # 16-bit greyscale: full range 0..65535 -> 0..255
        a = np.asarray(im, dtype=np.float64) / 257.0
        return Image.fromarray(a.round().clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("I", "F"):  # 32-bit int / float greyscale: no fixed range, stretch min..max
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
