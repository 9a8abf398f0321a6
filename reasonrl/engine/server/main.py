"""`serve`: run the app with uvicorn, with a banner that says what is served, where, and how safely."""

from __future__ import annotations

import sys

import uvicorn

from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.server.app import create_app
from reasonrl.engine.server.config import ServeConfig
from reasonrl.engine.server.images import ChatImages
from reasonrl.models.qwen2_5_vl.config import ARCHITECTURE as VLM_ARCHITECTURE


def banner(engine: LLMEngine, cfg: ServeConfig, port: int | None = None) -> str:
    stats, model = engine.stats(), engine.model
    architecture = VLM_ARCHITECTURE if getattr(model, "vlm_config", None) is not None else model.config.architecture
    lines = [f"reasonrl serve: model {cfg.model_name!r} ({architecture}) on {model.device}, "
             f"{str(model.dtype).removeprefix('torch.')}, context {engine.max_model_len} tokens",
             f"  KV cache: {engine.config.kv_format}, {stats['kv_capacity_tokens']} tokens "
             f"({stats['kv_blocks_total']} blocks of {engine.config.block_size})"
             + (", speculative decoding on" if engine.config.draft or "spec_rounds" in stats else ""),
             f"  listening on http://{cfg.host}:{cfg.port if port is None else port}",
             f"  auth: {'API key required' if cfg.api_key else 'NONE'}; admin routes: "
             + ("off" if not cfg.admin_routes else "own key" if cfg.admin_api_key else "API key" if cfg.api_key else "open")
             + (f", load_weights confined to {cfg.load_weights_dir}" if cfg.load_weights_dir else ""),
             f"  unseeded requests draw from {'seed ' + str(cfg.seed) if cfg.seed is not None else 'OS entropy'}"]
    if engine.images is not None:
        images = ChatImages(model, cfg, engine.max_model_len)
        lines.append(f"  images: data: URLs (PNG, JPEG), up to {images.max_images} per request, "
                     f"{cfg.max_image_bytes} bytes and {cfg.max_image_pixels} pixels each")
    if cfg.exposed and not cfg.api_key:
        lines.append(f"  WARNING: bound to {cfg.host} without an API key: anyone who can reach this port can "
                     "generate, abort every request and load weights. Set --api-key (or REASONRL_API_KEY).")
    return "\n".join(lines)


def serve(engine: LLMEngine, config: ServeConfig | None = None) -> None:
    """Serve until interrupted."""
    cfg = config or ServeConfig()
    _Server(uvicorn_config(create_app(engine, cfg), cfg), lambda port: banner(engine, cfg, port)).run()


class _Server(uvicorn.Server):
    """uvicorn's server, printing the banner once it listens: with the port bound (the one --port 0 picked)."""

    def __init__(self, config: uvicorn.Config, banner_for_port):
        super().__init__(config)
        self.banner_for_port = banner_for_port

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self.banner_for_port(self.servers[0].sockets[0].getsockname()[1]), file=sys.stderr, flush=True)


def uvicorn_config(app, cfg: ServeConfig, **overrides):
    """How uvicorn runs the app: where it listens, its log level, and how long a shutdown waits on the
    requests in flight (uvicorn's own default waits for ever, e.g. on a client that stopped reading)."""
    return uvicorn.Config(app, **{"host": cfg.host, "port": cfg.port, "log_level": cfg.log_level,
                                  "timeout_graceful_shutdown": cfg.shutdown_timeout, **overrides})
