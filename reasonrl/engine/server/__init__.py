"""The OpenAI-compatible server (`reasonrl serve`): see app.py for the endpoints and errors."""

from reasonrl.engine.server.app import create_app
from reasonrl.engine.server.config import ServeConfig
from reasonrl.engine.server.main import banner, serve

__all__ = ["ServeConfig", "banner", "create_app", "serve"]
