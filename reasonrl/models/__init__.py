"""Decoder LMs (Llama, Qwen2, Qwen3 families), Hugging Face checkpoint I/O and tokenizer."""

from reasonrl.models.config import ConfigError, ModelConfig
from reasonrl.models.loader import CheckpointError, load_model, save_model
from reasonrl.models.model import CausalAttention, DecoderLM
from reasonrl.models.tokenizer import IncrementalDecoder, Tokenizer

__all__ = ["CausalAttention", "CheckpointError", "ConfigError", "DecoderLM", "IncrementalDecoder",
           "ModelConfig", "Tokenizer", "load_model", "save_model"]
