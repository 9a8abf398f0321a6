"""`ServeConfig`: every option of `reasonrl serve` (engine options are `EngineConfig`'s)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reasonrl.config import ByteSize, parse_size, positive_ints

API_KEY_ENV = "REASONRL_API_KEY"
ADMIN_KEY_ENV = "REASONRL_ADMIN_KEY"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to bind. Anything but loopback (e.g. 0.0.0.0) exposes the server: set api_key then."""
    port: int = 8000
    """TCP port; 0 picks a free one."""
    served_model_name: str | None = None
    """Model id in /v1/models and the `model` a request may name; None: "default" (the CLI passes
    the checkpoint directory's name)."""
    api_key: str | None = None
    """Required on every route but /health, as `Authorization: Bearer KEY`. None reads the
    REASONRL_API_KEY environment variable; unset there too, nothing is required."""
    admin_api_key: str | None = None
    """Key of the administrative routes (/v1/load_weights, /v1/abort with all=true). None reads
    REASONRL_ADMIN_KEY; unset there too, they take api_key."""
    admin_routes: bool = True
    """False turns the administrative routes off (403)."""
    load_weights_dir: str | None = None
    """Confines /v1/load_weights to checkpoints inside this directory (relative paths are taken
    inside it; symlinks are resolved first). None: any directory the server can read."""
    strict_api: bool = False
    """Refuse requests with fields the API does not know (400 naming the field); by default they are
    ignored with a logged warning, as vLLM does."""
    prm: str | None = None
    """A process reward model directory (`reasonrl prm train`): POST /v1/prm/score returns its step scores."""
    max_body_bytes: ByteSize = 8 << 20
    """Largest request body; larger ones get a 413 before they are read."""
    max_sequences_per_request: int = 256
    """Prompts times n in one request, at most (400 above)."""
    max_waiting_sequences: int | None = 4096
    """Sequences waiting for a place in the engine, at most: a request that would pass the bound
    gets a 429 with Retry-After. None: no bound."""
    max_image_bytes: ByteSize = 8 << 20
    """Largest image in a chat request, decoded from its data: URL (400 above). Mind max_body_bytes:
    base64 makes an image a third larger in the body."""
    max_image_pixels: int = 1 << 25
    """Largest image in pixels (width x height), read from its header before anything is decoded, so
    a small file that would decode to a huge image (a decompression bomb) gets a 400."""
    max_images_per_request: int | None = None
    """Images in one chat request, at most (400 above). None, or anything larger: as many as the
    context can hold at the smallest image size ((max_model_len - 1) divided by the tokens of a min_pixels
    image)."""
    retry_after_seconds: int = 1
    """The Retry-After of a 429."""
    seed: int | None = None
    """Draws the seeds of requests that set none. None draws them from OS entropy, so no two
    servers and no restart repeat each other's samples."""
    prepare_workers: int = 4
    """Threads that parse request bodies, render chat templates and tokenise, off the event loop."""
    stall_seconds: float = 120.0
    """/health answers 503 when one engine step has run longer than this."""
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    """uvicorn's log level: critical, error, warning, info, debug or trace."""
    shutdown_timeout: float = 30.0
    """On SIGTERM or Ctrl-C, seconds the requests in flight get to finish; then their connections are
    closed and they are aborted (a client that stops reading cannot hold the server up for ever)."""

    def __post_init__(self):
        for name in ("max_body_bytes", "max_image_bytes"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, parse_size(getattr(self, name)))
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.admin_api_key is None:
            self.admin_api_key = os.environ.get(ADMIN_KEY_ENV) or None
        for name in ("api_key", "admin_api_key"):
            key = getattr(self, name)
            if key is not None and (not isinstance(key, str) or not key.isascii() or not key.isprintable()
                                    or len(key.strip()) != len(key) or not key):
                raise ValueError(f"ServeConfig.{name} must be a non-empty printable ASCII string without spaces "
                                 "at either end")
        positive_ints(self, ("max_body_bytes", "max_sequences_per_request", "prepare_workers", "retry_after_seconds",
                             "max_image_bytes", "max_image_pixels"), "ServeConfig.")
        if isinstance(self.shutdown_timeout, bool) or not isinstance(self.shutdown_timeout, (int, float)) \
                or not self.shutdown_timeout > 0:
            raise ValueError(f"ServeConfig.shutdown_timeout must be a positive number of seconds, got "
                             f"{self.shutdown_timeout!r}")
        if self.max_images_per_request is not None:
            positive_ints(self, ("max_images_per_request",), "ServeConfig.")
        if self.max_waiting_sequences is not None:
            positive_ints(self, ("max_waiting_sequences",), "ServeConfig.")
            if self.max_waiting_sequences < self.max_sequences_per_request:
                raise ValueError(f"ServeConfig.max_waiting_sequences ({self.max_waiting_sequences}) must be at least "
                                 f"max_sequences_per_request ({self.max_sequences_per_request}): the largest request "
                                 "would never fit")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"ServeConfig.port must be in [0, 65535], got {self.port!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"ServeConfig.seed must be a non-negative integer or None, got {self.seed!r}")
        if not isinstance(self.stall_seconds, (int, float)) or not self.stall_seconds > 0:
            raise ValueError(f"ServeConfig.stall_seconds must be positive, got {self.stall_seconds!r}")
        if self.load_weights_dir is not None and not Path(self.load_weights_dir).is_dir():
            raise ValueError(f"ServeConfig.load_weights_dir {self.load_weights_dir!r} is not a directory")

    @property
    def model_name(self) -> str:
        return self.served_model_name or "default"

    @property
    def exposed(self) -> bool:
        """Bound to an address other machines may reach."""
        return self.host not in ("127.0.0.1", "localhost", "::1")
