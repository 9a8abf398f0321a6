"""Qwen2.5-VL image preprocessing: images -> flattened patches and their (t, h, w) grids.

Each image is converted to RGB (transparency composited onto white), resized with Pillow's bicubic
filter to the "smart" size (both sides multiples of patch * merge = 28, the pixel count within
[min_pixels, max_pixels], aspect ratio kept as closely as possible), scaled to [0, 1], normalised
with the CLIP mean and std, and cut into patches. A still image is repeated to fill the
temporal patch (2 frames), so each patch has C * 2 * 14 * 14 = 1176 values. The arithmetic follows
transformers' Qwen2-VL image processor (Pillow backend) step for step, so the pixel values are equal.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

ImageInput = Union[Image.Image, np.ndarray, str, Path]
FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}  # what a data: URL may hold
DATA_URL = re.compile(r"data:([^;,]*)((?:;[^;,]*)*),(.*)", re.DOTALL)  # media type, ;parameters, data
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageConfig:
    min_pixels: int = 56 * 56
    """Images with fewer pixels are scaled up to at least this many (rounded to the 28-pixel grid)."""
    max_pixels: int = 28 * 28 * 16384
    """Images with more pixels are scaled down to at most this many; 16384 LM tokens per image by default."""
    patch_size: int = 14
    """Side of one vision patch, in pixels (the checkpoint's vision_config.patch_size)."""
    merge_size: int = 2
    """Patches merged per side into one LM token (vision_config.spatial_merge_size)."""
    temporal_patch_size: int = 2
    """Frames per patch; a still image is repeated to fill them."""
    image_mean: tuple[float, ...] = CLIP_MEAN
    """Per-channel mean subtracted after scaling to [0, 1]."""
    image_std: tuple[float, ...] = CLIP_STD
    """Per-channel standard deviation divided by after subtracting the mean."""

    def __post_init__(self):
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={self.min_pixels}, max_pixels={self.max_pixels}")

    @classmethod
    def from_dir(cls, path: str | Path) -> ImageConfig:
        """A checkpoint's image processor settings, where transformers reads them: processor_config.json's
        "image_processor" (transformers 5 saves them only there), else preprocessor_config.json (either
        the min/max_pixels or the `size` spelling); defaults where the files or a key are missing."""
        processor, file = Path(path) / "processor_config.json", Path(path) / "preprocessor_config.json"
        nested = json.loads(processor.read_text()).get("image_processor") if processor.is_file() else None
        d = nested if isinstance(nested, dict) else json.loads(file.read_text()) if file.is_file() else {}
        size = d.get("size") or {}
        kw = {"min_pixels": d.get("min_pixels", size.get("shortest_edge")),
              "max_pixels": d.get("max_pixels", size.get("longest_edge")),
              "patch_size": d.get("patch_size"), "merge_size": d.get("merge_size"),
              "temporal_patch_size": d.get("temporal_patch_size"),
              "image_mean": tuple(d["image_mean"]) if "image_mean" in d else None,
              "image_std": tuple(d["image_std"]) if "image_std" in d else None}
        return cls(**{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict:
        """preprocessor_config.json as transformers writes it for Qwen2.5-VL."""
        return {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
                "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
                "patch_size": self.patch_size, "merge_size": self.merge_size,
                "temporal_patch_size": self.temporal_patch_size, "image_mean": list(self.image_mean),
                "image_std": list(self.image_std), "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
                "do_normalize": True, "do_convert_rgb": True, "resample": 3}


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 16384) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, then scaled (keeping the aspect ratio) into
    [min_pixels, max_pixels] if rounding left it outside."""
    if min(height, width) < 1:
        raise ValueError(f"image of {height}x{width} pixels: an image needs at least one pixel each way")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image of {height}x{width} pixels: aspect ratio must be at most 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor  # a 0 side falls below min_pixels
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def to_rgb(image: ImageInput) -> Image.Image:
    """A Pillow RGB image from a path, a base64 PNG or JPEG `data:` URL, a Pillow image, or a uint8
    array (H, W), (H, W, 1|3|4)."""
    if isinstance(image, str) and image.startswith("data:"):
        image = open_data_url(image)
    elif isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image file {image} does not exist")
        image = Image.open(image)
        image.load()
    if isinstance(image, np.ndarray):
        return Image.fromarray(_array_rgb(image))
    if not isinstance(image, Image.Image):
        raise TypeError(f"unsupported image of type {type(image).__name__}: pass a path, a PIL image or a uint8 numpy array")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def split_data_url(url: str) -> tuple[str, str]:
    """A base64 PNG or JPEG `data:` URL -> (its Pillow format, the base64 payload, not yet decoded);
    ValueError naming what is wrong otherwise. `reasonrl serve` and the processor read them alike."""
    m = DATA_URL.fullmatch(url)
    if m is None:
        scheme = url.split(":", 1)[0][:20] if ":" in url else "no scheme"
        raise ValueError(f"only data: URLs are accepted (nothing is fetched), got {scheme}")
    media, params = m.group(1).strip().lower(), m.group(2).lower().split(";")
    if media not in FORMATS:
        raise ValueError(f"image type {media[:64] or 'none'!r} is not supported (image/png or image/jpeg)")
    if "base64" not in params:
        raise ValueError(f"the data: URL must be base64 (data:{media};base64,...)")
    return FORMATS[media], m.group(3)


def open_data_url(url: str) -> Image.Image:
    """A base64 PNG or JPEG `data:` URL decoded; ValueError naming the URL and the problem otherwise."""
    try:
        fmt, data = split_data_url(url)
    except ValueError as exc:
        raise ValueError(f"image URL {url[:40]!r}: {exc}") from None
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)), formats=[fmt])
        image.load()
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"image URL {url[:40]!r}: not a valid {fmt} image ({type(exc).__name__})") from None
    return image


def _array_rgb(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"image array must be uint8 (H, W) or (H, W, 1|3|4), got {a.dtype} {a.shape}")
    if a.ndim == 2 or a.shape[-1] == 1:
        return np.repeat(a.reshape(a.shape[0], a.shape[1], 1), 3, axis=-1)
    if a.shape[-1] == 4:  # composite onto white, rounded (as transformers does for arrays)
        alpha = a[..., 3:4] / 255
        return np.round(alpha * a[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return a


def patchify(image: np.ndarray, cfg: ImageConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """image (C, H, W) float32 -> (patches (h*w, C*T*p*p), grid (1, h, w)), patches in merge-block
    order: merged-grid row, merged-grid column, then the merge x merge patches inside."""
    c, height, width = image.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    h, w = height // p, width // p
    x = image.reshape(c, h // m, m, p, w // m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (h/m, w/m, m, m, C, p, p)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))  # the still image fills every frame
    return x.reshape(h * w, c * t * p * p), (1, h, w)


def preprocess(images: list[ImageInput], cfg: ImageConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """images -> (pixel_values (P, C*T*p*p) float32, image_grid_thw (I, 3) long)."""
    cfg = cfg or ImageConfig()
    factor = cfg.patch_size * cfg.merge_size
    mean = np.array(cfg.image_mean, dtype=np.float32)[:, None, None]
    std = np.array(cfg.image_std, dtype=np.float32)[:, None, None]
    patches, grids = [], []
    for image in images:
        rgb = to_rgb(image)
        h, w = smart_resize(rgb.height, rgb.width, factor, cfg.min_pixels, cfg.max_pixels)
        x = np.asarray(rgb.resize((w, h), resample=Image.Resampling.BICUBIC)).transpose(2, 0, 1)
        x = (x.astype(np.float64) * (1 / 255)).astype(np.float32)
        flat, grid = patchify((x - mean) / std, cfg)
        patches.append(flat)
        grids.append(grid)
    if not patches:
        return torch.zeros(0, 3 * cfg.temporal_patch_size * cfg.patch_size ** 2), torch.zeros(0, 3, dtype=torch.long)
    return torch.from_numpy(np.concatenate(patches)), torch.tensor(grids, dtype=torch.long)
