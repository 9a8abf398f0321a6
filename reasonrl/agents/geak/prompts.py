"""The agent's prompts: knowledge notes, the generator (first try, repair, optimize, restart) and
the reflector. Our own wording of GEAK's prompt roles (geak.md §1.2-1.3), not its text.

Every text from the evaluator or the model that goes into a prompt is already truncated (the
sandbox truncates output, `Verdict.feedback` caps its length, reflections are cut here).
"""

from __future__ import annotations

from reasonrl.envs.kernels.prompt import SYSTEM_PROMPT, without_thinking

from .memory import Attempt, Trajectory

MAX_REFLECTION = 2000

KNOWLEDGE = """Triton notes:
- Launch with kernel[grid](...); grid is a tuple of program counts, e.g. (triton.cdiv(n, BLOCK),).
- Block sizes are tl.constexpr powers of two; sizes that are not multiples of a block need masks on
  every tl.load (with `other=`) and tl.store. Use tl.constexpr only for block sizes and flags.
- Compute reductions, softmax and norms in fp32 (x.to(tl.float32)) and cast the result to the output's
  element type (out_ptr.dtype.element_ty) when storing.
- tl.dot needs both operands of at least 16 x 16; accumulate in fp32; for fp32 inputs pass
  input_precision="ieee" so the result does not depend on TF32.
- Pointer arithmetic is in elements: row * stride + col. Use int64 offsets for large tensors.
- Allocate outputs with torch.empty(..., device=x.device, dtype=...) and never write into the inputs.
- Prefer plain tl.load/tl.store with masks; avoid libdevice functions and block pointers, which not
  every backend (or Triton's CPU interpreter) supports."""


def system_prompt(knowledge: bool) -> str:
    return f"{SYSTEM_PROMPT}\n\n{KNOWLEDGE}" if knowledge else SYSTEM_PROMPT


def generation(trajectory: Trajectory, example: tuple[str, str] | None, knowledge: bool,
               optimize: bool, ancestors: int) -> list[dict[str, str]]:
    """The generator's messages for the trajectory's next candidate."""
    task = trajectory.task
    parts = [task.prompt_text()]
    if example:
        instruction, code = example
        parts.append(f"For reference, a solved task similar to this one:\n{instruction}\n```python\n{code}```")
    if trajectory.last is not None and not trajectory.last.passed:
        parts.append(_repair_part(trajectory.last))  # a failed line is repaired first, optimized or not
    elif optimize and trajectory.passing:
        parts.append(_optimizer_part(trajectory, ancestors))
    if trajectory.restart_note:  # the debugger dropped the line (last is None then)
        parts.append(trajectory.restart_note)
    parts.append("Answer with the complete module in one ```python block.")
    return [{"role": "system", "content": system_prompt(knowledge)}, {"role": "user", "content": "\n\n".join(parts)}]


def _repair_part(last: Attempt) -> str:
    code = f"```python\n{last.code}```" if last.code else "(your answer had no code block)"
    text = f"Your previous answer:\n{code}\n\nThe evaluator's verdict:\n{last.feedback}"
    if last.reflection:
        text += f"\n\nWhat went wrong, in your own analysis:\n{last.reflection}"
    return text + "\n\nWrite a corrected version."


def _optimizer_part(trajectory: Trajectory, ancestors: int) -> str:
    best = sorted(trajectory.passing, key=lambda a: -(a.speedup or 0.0))[:ancestors]
    listing = "\n\n".join(
        f"Candidate {i + 1}: correct, {a.speedup:.2f}x the PyTorch reference's speed"
        f"{f' ({a.expert_speedup:.2f}x the expert kernel)' if a.expert_speedup else ''}.\n"
        f"```python\n{a.code}```" + (f"\nAnalysis: {a.reflection}" if a.reflection else "")
        for i, a in enumerate(best))
    return (f"These versions of your kernel are correct; their measured speeds follow.\n\n{listing}\n\nCompare "
            "their strategies, choose a better one (tiling, block sizes, fusion, memory access) and write a faster, "
            "still correct kernel.")


def reflection(trajectory: Trajectory, attempt: Attempt, knowledge: bool) -> list[dict[str, str]]:
    """The reflector's messages: the candidate and its verdict, asking why and what to change."""
    task = trajectory.task
    code = f"```python\n{attempt.code}```" if attempt.code else "(the answer had no code block)"
    if attempt.passed:
        ask = ("It is correct. In a few sentences: what limits its speed, and what change would make it faster? "
               "Do not write the whole code.")
    else:
        ask = ("In a few sentences: what is the cause of this failure, and what exactly must change? Keep the "
               "function's name and signature. Do not write the whole code.")
    user = (f"Task:\n{task.prompt_text()}\n\nCandidate:\n{code}\n\nThe evaluator's verdict:\n{attempt.feedback}\n\n"
            f"{ask}")
    return [{"role": "system", "content": system_prompt(knowledge)}, {"role": "user", "content": user}]


def clean_reflection(text: str | None) -> str:
    """The reflection as shown to the generator: reasoning blocks dropped, code fences cut, capped."""
    if not text:
        return ""
    text = without_thinking(text)
    text = text.split("```")[0] if text.count("```") >= 2 and len(text) > MAX_REFLECTION else text
    return text.strip()[:MAX_REFLECTION]
