"""The rollout engine: paged KV cache, continuous batching, abort/resume, per-token log-probs."""

from reasonrl.engine.config import EngineConfig
from reasonrl.engine.llm import LLM
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import CompletionOutput, RequestOutput

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "LLMEngine", "RequestOutput", "SamplingParams"]
