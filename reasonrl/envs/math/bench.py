"""Math reward throughput: judgements/s of `MathVerifier` on a realistic RL mix.

The mix imitates GRPO groups of 8 samples on MATH-style problems with a policy near 50%
accuracy. Proportions are our guess, not measured from a model or a dataset. References are
integers, fractions, radicals, pi expressions, intervals/sets and polynomials. Samples are
correct in the reference's form, correct in another form (1/2, 0.5, \\frac{1}{2};
2\\sqrt{2} vs \\sqrt{8}), wrong (a group's favourite wrong answers repeat, as they do in
training), without an answer, or malformed/hostile but cheap to reject (200 kB strings, brace
floods, deep nesting, control bytes). The numbers are random, so across groups nothing
repeats.

A second pass judges a fresh mix plus `hangs` power towers that SymPy evaluates for minutes:
each one costs a worker `timeout` seconds, and the pass reports the timeouts it counted and its
own rate. Every reward is checked against its label (`wrong_rewards`).

Wired as `reasonrl bench math` by the CLI; callable directly:
    python -c "import json; from reasonrl.envs.math.bench import benchmark; print(json.dumps(benchmark()))"
"""

from __future__ import annotations

from dataclasses import dataclass

import os
import random
import time

from .verifier import MathVerifier


def hang_response(i: int = 0) -> str:
    """A power tower SymPy evaluates in verify() for minutes; `i` makes each one distinct."""
    return f"\\boxed{{9^{{9^{{9^{{9}}}}}} + {i}}}"


# Reference makers: (reference, other forms of the same value, plausible wrong answers). The
# weights in REFERENCES are our guess at how often each kind appears in a MATH-style set.
def _integer(rng):
    v = rng.randint(-50, 2000)
    return str(v), [f"{v}.0", f"x = {v}", f"\\frac{{{2 * v}}}{{2}}"], [str(v + d) for d in (-2, -1, 1, 3, 10)]


def _fraction(rng):
    b = rng.choice([3, 7, 9, 11, 13])
    a = rng.choice([k for k in range(1, 60) if k % b])  # in lowest terms, never an integer
    return f"\\frac{{{a}}}{{{b}}}", [f"{a}/{b}", f"\\dfrac{{{a}}}{{{b}}}", f"\\frac{{{2 * a}}}{{{2 * b}}}"], [
        f"\\frac{{{a + 1}}}{{{b}}}", f"\\frac{{{a}}}{{{b + 1}}}", f"{a}/{b + 2}", str(a), f"{a / b:.2f}"]


def _radical(rng):
    a, r = rng.randint(2, 12), rng.choice([2, 3, 5, 6, 7])
    return f"{a}\\sqrt{{{r}}}", [f"\\sqrt{{{a * a * r}}}", f"{a} \\sqrt{r}"], [
        f"{a + 1}\\sqrt{{{r}}}", f"\\sqrt{{{a * r}}}", f"{a}\\sqrt{{{r + 1}}}", str(a * r)]


def _pi(rng):
    a, b = rng.randint(1, 20), rng.choice([2, 3, 4, 6])
    return f"\\frac{{{a}\\pi}}{{{b}}}", [f"\\frac{{{a}}}{{{b}}}\\pi", f"{a}\\pi/{b}"], [
        f"\\frac{{{a + 1}\\pi}}{{{b}}}", f"{a}\\pi", f"\\frac{{\\pi}}{{{b}}}"]


def _interval_or_set(rng):
    a, b = sorted(rng.sample(range(-20, 40), 2))
    if rng.random() < 0.5:
        return f"[{a}, {b})", [f"[{a},{b})", f"\\left[{a}, {b}\\right)"], [
            f"({a}, {b})", f"[{a}, {b}]", f"[{a + 1}, {b})"]
    return f"\\{{{a}, {b}\\}}", [f"\\{{{b}, {a}\\}}", f"{a}, {b}"], [
        f"\\{{{a}\\}}", f"\\{{{a}, {b + 1}\\}}", f"\\{{{a}, {b}, {b + 1}\\}}"]


def _polynomial(rng):
    b = rng.randint(1, 9)
    c = rng.choice([k for k in range(1, 10) if b * k != b + k])  # else a "wrong" answer is right
    return f"x^2+{b + c}x+{b * c}", [f"(x+{b})(x+{c})", f"x^2 + {b + c}x + {b * c}"], [
        f"x^2+{b * c}x+{b + c}", f"(x+{b})(x-{c})", f"x^2+{b + c}x"]


REFERENCES = [
    (_integer, 0.60), (_fraction, 0.12), (_radical, 0.08), (_pi, 0.04), (_interval_or_set, 0.06), (_polynomial, 0.10),
]

# What one sample of a group does, with its probability: a policy near 50% accuracy that
# mostly writes the reference's form, repeats its favourite wrong answers, and sometimes
# stops without an answer or emits junk.
OUTCOMES = [
    ("correct_same_form", 0.42), ("correct_other_form", 0.08), ("wrong_common", 0.28),
    ("wrong_rare", 0.08), ("no_answer", 0.10), ("malformed_or_adversarial", 0.04),
]

MALFORMED = [
    "\\boxed{\\frac{}{}}", "\\boxed{)(}", "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "\\boxed{" * 20_000,
    "x" * 200_000, "\\boxed{\x00\x07\ud800}", "\\boxed{" + "1+" * 600 + "1}", "Answer: \u2203\u2200\u221e\u2205",
]


def _respond(rng, outcome: str, gold: str, forms: list[str], wrong: list[str]) -> tuple[str, float]:
    if outcome == "no_answer":
        return rng.choice(["Let me keep going: so x = 4 and then", "Therefore \\boxed{12", "I am not sure."]), 0.0
    if outcome == "malformed_or_adversarial":
        return rng.choice(MALFORMED), 0.0
    if outcome == "correct_same_form":
        answer, reward = gold, 1.0
    elif outcome == "correct_other_form":
        answer, reward = rng.choice(forms), 1.0
    elif outcome == "wrong_common":
        answer, reward = rng.choice(wrong[:2]), 0.0  # a group's favourite wrong answers repeat
    else:
        answer, reward = rng.choice(wrong[2:]), 0.0
    if rng.random() < 0.2:
        return f"Putting it together, the answer is {answer}", reward
    return f"We simplify step by step and get \\boxed{{{answer}}}.", reward


def make_mix(n: int, seed: int = 0, group: int = 8) -> list[tuple[str, str, str, float]]:
    """`n` (outcome, response, reference, expected reward) items, in GRPO groups of `group`."""
    rng = random.Random(seed)
    makers, kind_weights = zip(*REFERENCES)
    outcomes, outcome_weights = zip(*OUTCOMES)
    items = []
    while len(items) < n:
        gold, forms, wrong = rng.choices(makers, kind_weights)[0](rng)
        for outcome in rng.choices(outcomes, outcome_weights, k=min(group, n - len(items))):
            response, reward = _respond(rng, outcome, gold, forms, wrong)
            items.append((outcome, response, gold, reward))
    return items


def _timed(verifier: MathVerifier, items, batch: int) -> tuple[float, float, list[float]]:
    """(wall seconds, CPU seconds of this process and the workers, scores)."""
    wall, cpu, scores = time.perf_counter(), _cpu_seconds(verifier), []
    for i in range(0, len(items), batch):
        scores += verifier.judge_many([(response, gold) for _, response, gold, _ in items[i:i + batch]])
    return time.perf_counter() - wall, _cpu_seconds(verifier) - cpu, scores


def _cpu_seconds(verifier: MathVerifier) -> float:
    """CPU time of this process, its reaped children (killed workers) and its live workers
    (read from Linux /proc; elsewhere live workers are missed)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + children.ru_utime + children.ru_stime
    for pid in verifier.worker_pids():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total


@dataclass
class MathBenchConfig:
    n: int = 2000
    """Judgements in the realistic mix."""
    workers: int = 2
    """Verifier worker processes."""
    hangs: int = 2
    """Adversarial items that hang (each must time out, not stall the rest)."""
    timeout: float = 5.0
    """Seconds per judgement before its worker is killed."""
    batch: int = 512
    """Judgements sent to the pool at once."""


def benchmark(cfg: MathBenchConfig = MathBenchConfig()) -> dict:
    """Judgements/s on the mix, then on the mix plus `hangs` hanging items; see module doc.

    `cpu_seconds` (trainer process + workers) and the load average at the start are reported
    because a shared machine's other jobs change the wall-clock rate, not the work done."""
    import torch

    from reasonrl.bench.common import device_name

    n, workers, hangs, timeout, batch = cfg.n, cfg.workers, cfg.hangs, cfg.timeout, cfg.batch
    items = make_mix(n)
    with MathVerifier(workers=workers, timeout=timeout) as verifier:
        start = time.perf_counter()
        verifier.judge_many([("\\boxed{1/3}", "0.5")])  # wait for the workers: start-up is not throughput
        startup = time.perf_counter() - start
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        seconds, cpu, scores = _timed(verifier, items, batch)
        stats = dict(verifier.stats)
        result = {
            "device": device_name(torch.device("cpu")), "n": n, "workers": workers, "timeout_s": timeout,
            "batch": batch, "load_average_1min": load, "startup_s": round(startup, 2), "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu, 3), "judgements_per_s": round(n / seconds, 1),
            "judgements_per_cpu_s": round(n / cpu, 1),
            "mix": {name: sum(item[0] == name for item in items) for name, _ in OUTCOMES},
            "quick": stats["quick"], "no_answer": stats["no_answer"], "pooled": stats["pooled"] - 1,
            "timeouts": stats["timeouts"], "wrong_rewards": _wrong(scores, items),
        }
        if hangs:
            with_hangs = make_mix(n, seed=1) + [("hang", hang_response(i), "1", 0.0) for i in range(hangs)]
            random.Random(1).shuffle(with_hangs)
            before = verifier.stats["timeouts"]
            seconds, _, scores = _timed(verifier, with_hangs, batch)
            result.update({
                "hangs": hangs, "hang_pass_seconds": round(seconds, 3),
                "hang_pass_judgements_per_s": round(len(with_hangs) / seconds, 1),
                "hang_pass_timeouts": verifier.stats["timeouts"] - before,
                "hang_pass_wrong_rewards": _wrong(scores, with_hangs),
            })
    return result


def _wrong(scores: list[float], items) -> int:
    return sum(score != expected for score, (*_, expected) in zip(scores, items))


if __name__ == "__main__":
    import json

    print(json.dumps(benchmark(), indent=2))
