"""What each stage asks a model, as chat messages. Pure functions of their inputs.

The prompts follow the meaning of SAND-Math's (arXiv 2507.20527; AMD-AGI/sand-pipeline), in our
own words: a novel competition problem in a primary branch with a second branch mixed in, problem
and solution in `<Q>`/`<S>`; step-by-step solutions with a boxed answer; a judge comparing final
answers (`<C>yes</C>`/`<C>no</C>`); a judge for "the same problem, or a paraphrase of it?"; an
AoPS-style 1-10 difficulty rating in half steps (`<D>`); a rewrite that must depend on a given
theorem and concept (`<Q>`/`<S>`).
"""

from __future__ import annotations

Messages = list[dict[str, str]]

SOLVE_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

_FORMAT = (
    "Return the problem between <Q> and </Q>, and a complete solution that ends with the final answer in "
    "\\boxed{} between <S> and </S>. Nothing else is read."
)

TEMPLATES = {
    "aime": (
        "Write one novel mathematics problem at the level of national competitions such as the AIME. Its main "
        "subject is {branch}; weave in ideas from {mix} in a clever way. The problem must have a single numerical "
        "answer, must be solvable without a computer, and must not copy or lightly rephrase a known problem.\n"
        + _FORMAT
    ),
    "aime_hard": (
        "Write one novel problem as hard as AIME problems 11 to 15, whose answer is an integer from 0 to 999. Its "
        "main subject is {branch}; it should also need ideas from {mix}. It must not copy or lightly rephrase a "
        "known problem.\n" + _FORMAT
    ),
    "olympiad_integer": (
        "Write one novel olympiad-level problem with a single integer answer. Its main subject is {branch}; combine "
        "it with {mix}. The answer must be checkable as a number, and the problem must not be a known one.\n"
        + _FORMAT
    ),
    "international_olympiad": (
        "Write one novel problem at the level of the International Mathematical Olympiad, reformulated so that it "
        "has a single numerical answer. Its main subject is {branch}; it should draw on {mix} as well. The problem "
        "must not be a known one.\n" + _FORMAT
    ),
}

RATING_SCALE = """\
1: easy AMC 8 / early AMC 10 problems
1.5-2: harder AMC 10, easy AMC 12
2.5-3: hard AMC 12, AIME problems 1-3
3.5-4: AIME problems 4-9
4.5: AIME problems 10-12
5: AIME problems 11-13, the easiest national olympiad problems
5.5-6: AIME problems 14-15, USAMO/IMO problems 1 and 4
6.5-7: USAMO/IMO problems 2 and 5
7.5-8: USAMO/IMO problems 3 and 6
8.5-9: the hardest olympiad problems
9.5-10: problems hardly anyone solves in competition"""


def generate(template: str, branch: str, mix: str) -> Messages:
    """The template with `{branch}` and `{mix}` filled in (other braces, as in \\boxed{}, stay)."""
    return [{"role": "user", "content": template.replace("{branch}", branch).replace("{mix}", mix)}]


def solve(problem: str, system: str | None) -> Messages:
    messages = [{"role": "user", "content": problem}]
    return ([{"role": "system", "content": system}] if system else []) + messages


def same_answer(problem: str, reference: str, solution: str) -> Messages:
    text = (
        "Two solutions to the same problem are given. Compare only their FINAL answers: are they the same value "
        "(equal numbers, equivalent expressions, the same set), whatever the working or the notation?\n\n"
        f"Problem:\n{problem}\n\nEnd of the first solution:\n{reference}\n\nEnd of the second solution:\n{solution}\n\n"
        "Reply with <C>yes</C> if the final answers agree, <C>no</C> otherwise."
    )
    return [{"role": "user", "content": text}]


def same_problem(candidate: str, known: str) -> Messages:
    text = (
        "Is the candidate problem the same problem as the known one: identical, or a paraphrase that asks the "
        "same question about the same data (renamed variables, reworded, reordered)? A problem on the same topic "
        "that asks something else is not the same problem.\n\n"
        f"Candidate problem:\n{candidate}\n\nKnown problem (from an evaluation set):\n{known}\n\n"
        "Reply with <C>yes</C> or <C>no</C>."
    )
    return [{"role": "user", "content": text}]


def rate(problem: str, solution: str) -> Messages:
    text = (
        "Rate the difficulty of this competition mathematics problem on the following scale (1 to 10, in steps of "
        f"0.5), judging how hard it is to find the solution, not how long it is to write:\n{RATING_SCALE}\n\n"
        f"Problem:\n{problem}\n\nA solution:\n{solution}\n\n"
        "Reply with a one-sentence summary of the key idea in <S></S>, the rating in <D></D> (a number such as "
        "4.5), and a short justification in <R></R>."
    )
    return [{"role": "user", "content": text}]


def hike(problem: str, solution: str, theorem: str, concept: str, rating: float | None) -> Messages:
    rated = f" It is currently rated {rating:g} on a 1-10 difficulty scale." if rating is not None else ""
    text = (
        "Rewrite the problem below into a much harder, olympiad-level problem (IMO Shortlist level) whose solution "
        f"critically depends on this central theorem: {theorem}, supported by this concept or tool: {concept}. "
        "Do not name the theorem in the problem. The solver should need at least two or three non-trivial "
        "intermediate steps; generalise or parameterise the original where that makes it deeper. The new problem "
        f"must still have a single numerical answer.{rated}\n\n"
        f"Original problem:\n{problem}\n\nIts solution:\n{solution}\n\n" + _FORMAT
    )
    return [{"role": "user", "content": text}]
