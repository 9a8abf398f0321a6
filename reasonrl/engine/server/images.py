"""Images in chat requests, for vision-language checkpoints: OpenAI `image_url` content parts whose
URL is a `data:` URL (PNG or JPEG, base64), turned into the engine's `MultimodalPrompt`.

    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR..."}}

All of it runs in the prepare workers, off the event loop. Every refusal is a 400 naming the part
(`messages.0.content.1.image_url`): a remote or non-data URL (the server fetches nothing), a media
type other than PNG or JPEG, bad base64, more than `max_image_bytes`, a header declaring more than
`max_image_pixels` pixels (checked before a pixel is decoded: decompression bombs stop there), data
that does not decode as the type it claims, more images than `max_images_per_request`, or images
whose tokens alone fill the context length (checked from the headers, before preprocessing).
`detail` is accepted and ignored: images are sized by the checkpoint's preprocessor pixel bounds.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import torch
from PIL import Image

from reasonrl.engine.server.config import ServeConfig
from reasonrl.engine.server.errors import APIError
from reasonrl.models.qwen2_5_vl.processor import preprocess, smart_resize, split_data_url
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt, expand_image_tokens


class ChatImages:
    """Reads the image parts of a chat for one vision-language model."""

    def __init__(self, model, cfg: ServeConfig, max_model_len: int):
        self.vlm, self.image_cfg, self.cfg, self.max_len = model.vlm_config, model.image_config, cfg, max_model_len
        self.factor = self.image_cfg.patch_size * self.image_cfg.merge_size
        smallest = smart_resize(self.factor, self.factor, self.factor, self.image_cfg.min_pixels, self.image_cfg.max_pixels)
        # a prompt is shorter than the context (its images leave a token at least): the most smallest images that fit
        fits = max(1, (max_model_len - 1) // self._tokens(*smallest))
        self.max_images = min(cfg.max_images_per_request or fits, fits)

    def _tokens(self, height: int, width: int) -> int:
        return (height // self.factor) * (width // self.factor)

    def messages(self, messages: list) -> tuple[list[dict[str, Any]], list[tuple[str, Image.Image, int]]]:
        """The chat as the template renders it (a message with images as parts, {"type": "image"} for
        each; any other as text) and its decoded images, each with the parameter that names it and its tokens."""
        out, images = [], []
        for i, m in enumerate(messages):
            parts = m.content if isinstance(m.content, list) else []
            content = [self._part(part, f"messages.{i}.content.{j}", images) for j, part in enumerate(parts)]
            if any(part["type"] == "image" for part in content):
                out.append({**m.model_dump(exclude_none=True), "content": content})
            else:
                out.append({**m.model_dump(exclude_none=True), "content": "".join(p["text"] for p in content)
                            if isinstance(m.content, list) else (m.content or "")})
        return out, images

    def _part(self, part: dict, where: str, images: list[tuple[str, Image.Image, int]]) -> dict:
        """A text part as it is; an image part decoded into `images` (within the count and context bounds)."""
        if part.get("type") != "image_url":
            return _text_part(part, where)
        if len(images) == self.max_images:
            raise APIError(f"{where}: more than {self.max_images} images in one request", param=where)
        image = self._decode(part, where)
        images.append((f"{where}.image_url", image, self._image_tokens(image, f"{where}.image_url")))
        tokens = sum(n for _, _, n in images)
        if tokens >= self.max_len:
            raise APIError(f"{where}: the images so far take {tokens} tokens, at least the context length "
                           f"{self.max_len}", param=where)
        return {"type": "image"}

    def _image_tokens(self, image: Image.Image, where: str) -> int:
        try:
            size = smart_resize(image.height, image.width, self.factor, self.image_cfg.min_pixels, self.image_cfg.max_pixels)
        except ValueError as exc:  # an aspect ratio past 200
            raise APIError(f"{where}: cannot use this image: {exc}", param=where) from None
        return self._tokens(*size)

    def _decode(self, part: dict, where: str) -> Image.Image:
        spec = part.get("image_url")
        where = f"{where}.image_url"
        if set(part) != {"type", "image_url"} or not isinstance(spec, dict) or not isinstance(spec.get("url"), str) \
                or set(spec) - {"url", "detail"} or spec.get("detail", "auto") not in ("auto", "low", "high"):
            raise APIError(f"{where} must be {{\"url\": \"data:...\", \"detail\" (optional): auto|low|high}}", param=where)
        return decode_data_url(spec["url"], self.cfg, where)

    def prompt(self, ids: list[int], images: list[tuple[str, Image.Image, int]], pixels: bool = True) -> MultimodalPrompt:
        """The rendered ids (one placeholder per image) with the images preprocessed and placed. Without
        `pixels` (POST /tokenize) the same ids and checks, the grids from the images' sizes, nothing
        normalised or hashed: the prompt has no pixel values."""
        values, grids = [], []
        for where, image, _ in images:
            if not pixels:
                height, width = smart_resize(image.height, image.width, self.factor, self.image_cfg.min_pixels,
                                             self.image_cfg.max_pixels)  # as preprocess resizes it
                grids.append(torch.tensor([[1, height // self.image_cfg.patch_size, width // self.image_cfg.patch_size]]))
                continue
            try:
                p, g = preprocess([image], self.image_cfg)
            except Exception as exc:  # the image's content made preprocessing fail: the request's fault
                raise APIError(f"{where}: cannot use this image: {exc}", param=where) from None
            values.append(p)
            grids.append(g)
        grid = torch.cat(grids)
        try:
            ids = expand_image_tokens(ids, grid, self.vlm.image_token_id, self.vlm.vision.spatial_merge_size)
            prompt = MultimodalPrompt.from_ids(ids, torch.cat(values) if values else None, grid, self.vlm)
        except ValueError as exc:  # e.g. image placeholder tokens written in the text
            raise APIError(f"the messages do not place their images: {exc}", param="messages") from None
        if pixels:
            _ = prompt.image_digests  # hashed here, in the worker, rather than in the engine's thread
        return prompt


def _text_part(part: dict, where: str) -> dict:
    if part.get("type") != "text":
        raise APIError(f"{where}.type: content part type {part.get('type')!r} is not supported (text or image_url)",
                       param=f"{where}.type")
    if set(part) != {"type", "text"} or not isinstance(part["text"], str):
        raise APIError(f"{where} must be {{\"type\": \"text\", \"text\": string}}", param=where)
    return {"type": "text", "text": part["text"]}


def decode_data_url(url: str, cfg: ServeConfig, where: str) -> Image.Image:
    """A PNG or JPEG data: URL -> a decoded Pillow image, or a 400 naming `where` and the problem."""
    try:
        fmt, data = split_data_url(url)
    except ValueError as exc:
        raise APIError(f"{where}: {exc}", param=where) from None
    if len(data) // 4 * 3 > cfg.max_image_bytes + 3:  # refused before decoding
        raise APIError(f"{where}: the image is larger than this server's limit of {cfg.max_image_bytes} bytes", param=where)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(f"{where}: the image data is not valid base64 ({exc})", param=where) from None
    if len(raw) > cfg.max_image_bytes:
        raise APIError(f"{where}: the image is larger than this server's limit of {cfg.max_image_bytes} bytes", param=where)
    return _open(raw, fmt, cfg.max_image_pixels, where)


def _open(raw: bytes, fmt: str, max_pixels: int, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError as exc:
        raise APIError(f"{where}: the image has too many pixels ({exc})", param=where) from None
    except Exception as exc:
        raise APIError(f"{where}: the data is not a valid {fmt} image ({type(exc).__name__})", param=where) from None
    if image.width * image.height > max_pixels:
        raise APIError(f"{where}: the image is {image.width}x{image.height} pixels, more than this server's limit of "
                       f"{max_pixels}", param=where)
    try:
        image.load()
    except Exception as exc:  # truncated or corrupt data
        raise APIError(f"{where}: the {fmt} image is corrupt: {type(exc).__name__}: {exc}", param=where) from None
    return image
