"""Math environments: answer extraction, math-verify equivalence behind a hard-timeout pool."""

from .environment import MATH_SYSTEM_PROMPT, MathEnvironment, arithmetic_problems
from .extract import extract_answer
from .quick import normalize
from .verifier import MathVerifier

__all__ = [
    "MATH_SYSTEM_PROMPT", "MathEnvironment", "MathVerifier", "arithmetic_problems", "extract_answer", "normalize",
]
