"""GEAK (arXiv 2507.23194): an LLM agent that writes Triton kernels, with reasonrl's evaluator.

config.py (AgentConfig) · agent.py (the loop) · prompts.py (generator, reflector, optimizer,
knowledge) · memory.py (trajectories, the debugger) · retrieval.py (BM25 one-shot) · llm.py
(OpenAI-compatible endpoints) · log.py (the run directory, resume) · metrics.py · report.py.
"""

from .agent import run_agent
from .config import AgentConfig
from .llm import Call, EndpointLLM, Reply

__all__ = ["AgentConfig", "Call", "EndpointLLM", "Reply", "run_agent"]
