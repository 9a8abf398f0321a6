"""The consistency stage: keep a problem when its independent solutions reach the reference answer.

SAND-Math's `consistencycheck.py` asks Llama-3.3-70B whether the final answer of `solution_1`
matches the generator's reference solution (`<C>yes</C>`/`<C>no</C>`, temperature 0). Here:

1. The reference answer is the seed file's `answer`, else the last `\\boxed{}` (or "Answer:"
   line) of the reference solution after any reasoning block.
2. Each solution's final answer is compared with it by our math verifier (math-verify behind a
   hard timeout, reasonrl/envs/math) first; its verdict is recorded (`verdicts/NAME.jsonl`) so
   that a resumed run decides exactly as before.
3. Only where the verifier cannot decide (an answer it cannot read on either side, a timeout)
   does the LLM judge compare the two solutions' endings, and only while the problem can still
   pass: a problem already short of agreeing solutions costs no judge call.
4. A problem is kept when at least `min_agreeing` solutions agree (default: all of them, the
   README's rule; the released script checks one). A cut-off solution never agrees.

Departures: the verifier replaces the judge wherever it can decide (cheaper, and exact on
numbers); all N solutions are checked, not one; a kept problem must have a readable final answer
(the reference's or an agreeing solution's), so that every accepted problem can be checked by a
verifier downstream (the empirical difficulty, RL rewards).
"""

from __future__ import annotations

from dataclasses import replace

from reasonrl.envs.math.extract import extract_answer

from . import parse, prompts
from .calls import Call, ask, llm_client
from .problem import Problem, Verdict
from .solve import solution_key


def reference_answer(problem: Problem) -> str | None:
    if problem.answer is not None:
        return problem.answer
    final, _ = parse.after_reasoning(problem.solution)
    return extract_answer(final) if final else None


def consistency(ctx, name: str, todo: list[Problem]) -> list[Verdict]:
    refs = {p.id: reference_answer(p) for p in todo}
    checks = verifier_verdicts(ctx, name, todo, refs)
    need = {p.id: ctx.recipe.consistency.min_agreeing or len(p.solutions) for p in todo}
    judged = judge(ctx, name, [(p, j) for p in todo for j in judge_needed(p, checks, need[p.id])], refs)
    return [decide(ctx, p, refs[p.id], checks, judged, need[p.id]) for p in todo]


def verifier_verdicts(ctx, name: str, todo: list[Problem], refs: dict) -> dict[str, dict]:
    """key -> {"status": agree | differ | undecided | truncated | unfinished, "answer"}, recorded."""
    ledger = ctx.ledger("verdicts", name)
    rows, pairs = [], []
    for p in todo:
        for j, sol in enumerate(p.solutions):
            key = solution_key(p.id, j)
            if key in ledger:
                continue
            final, _ = parse.after_reasoning(sol["text"])
            if sol["finish_reason"] == "length":
                rows.append({"key": key, "status": "truncated", "answer": None})
            elif final is None:
                rows.append({"key": key, "status": "unfinished", "answer": None})
            else:
                pairs.append((key, final, refs[p.id]))
    if pairs:
        verdicts = ctx.verifier.decide_many([(final, ref) for _, final, ref in pairs])
        for (key, final, _), verdict in zip(pairs, verdicts):
            status = "undecided" if verdict is None else "agree" if verdict else "differ"
            rows.append({"key": key, "status": status, "answer": ctx.verifier.answer(final)})
    ledger.append(rows)
    return ledger.rows


def judge_needed(problem: Problem, checks: dict, need: int) -> list[int]:
    """Solutions the judge must see: the undecided ones, if the problem can still pass."""
    statuses = [checks[solution_key(problem.id, j)]["status"] for j in range(len(problem.solutions))]
    undecided = [j for j, s in enumerate(statuses) if s == "undecided"]
    return undecided if statuses.count("agree") + len(undecided) >= need else []


def judge(ctx, name: str, items: list[tuple[Problem, int]], refs: dict) -> dict[str, dict]:
    cfg = ctx.recipe.consistency
    if not cfg.judge or not items:
        return {}
    calls = []
    for p, j in items:
        reference = p.solution or f"The final answer is \\boxed{{{refs[p.id]}}}."
        calls.append(Call(solution_key(p.id, j), prompts.same_answer(
            p.problem, reference[-cfg.tail_chars:], p.solutions[j]["text"][-cfg.tail_chars:])))
    return ask(ctx, name, lambda: llm_client(cfg), calls)


def judge_status(answer: dict | None) -> tuple[str, str | None]:
    if answer is None:
        return "undecided (judge off)", None
    if "rejected" in answer:
        return "judge request rejected by the server", answer["rejected"]
    verdict, why = parse.yes_no(answer["text"], answer["finish_reason"])
    if verdict is None:
        return "judge output unreadable", why
    return ("agree", None) if verdict else ("answers differ (judge)", None)


STATUS_REASONS = {"truncated": "solution truncated (max_tokens reached)",
                  "unfinished": "solution never left its reasoning block", "differ": "answers differ (verifier)",
                  "undecided": "not judged (the problem was already short of agreeing solutions)"}


def decide(ctx, p: Problem, ref: str | None, checks: dict, judged: dict, need: int) -> Verdict:
    agreed, first_miss = [], None
    for j in range(len(p.solutions)):
        key = solution_key(p.id, j)
        check = checks[key]
        status, detail = check["status"], f"solution {j}: {check['answer']!r} vs reference {ref!r}"
        if status == "undecided" and (key in judged or not ctx.recipe.consistency.judge):
            status, why = judge_status(judged.get(key))
            detail = f"{detail}; {why}" if why else detail
        if status == "agree":
            agreed.append(j)
        elif first_miss is None:
            first_miss = (STATUS_REASONS.get(status, status), detail)
    if len(agreed) < need:
        return Verdict.drop(p, *(first_miss or ("too few solutions", f"{len(p.solutions)} of {need}")))
    answer = ref or next((checks[solution_key(p.id, j)]["answer"] for j in agreed
                          if checks[solution_key(p.id, j)]["answer"]), None)
    if answer is None:
        return Verdict.drop(p, "no readable final answer", "the judge agreed, but no side boxes an answer")
    return Verdict.keep(replace(p, answer=answer, agreed=agreed))
