"""Verifying a draft tree against the target's logits: greedy and sampled, both lossless.

Greedy: from the root, the target's argmax at a row is emitted; if a child of that row drafted
the same token, the walk moves to the child and goes on, else it stops. Every emitted token is the
target's argmax given all tokens before it, so the output is plain greedy decoding's.

Sampling, rule "coupled" (the default): the same walk with the token plain sampling would draw at
that row, the Gumbel-max argmax(logits / T + g(seed, step)) of `sampler.py` with step = the
response index the row's token would take. Every emitted token is exactly the one plain sampling
draws given the same prefix and seed, so speculative output is token-identical to plain sampled
output (and abort/resume, batching and tree sizes change nothing). A child is accepted with
probability p(child), the same total acceptance sum(p(children)) as the residual rule.

Sampling, rule "residual" (the tree rule of EAGLE-2 and SpecInfer, written out): at a row with target distribution
p (temperature and top-k/top-p/min-p applied), the children x_1, x_2, ... are candidates drafted
deterministically (the draft's top-k), i.e. proposals with q = point mass. Speculative sampling
accepts x_1 with probability min(1, p(x_1) / q(x_1)) = p(x_1); on rejection the next draw must
follow the residual norm(max(0, p - q)) = p with x_1 removed and renormalised. That residual is the
target for x_2, and so on: x_j is accepted with probability r_j(x_j) / sum(r_j), r_1 = p,
r_{j+1} = r_j with x_j zeroed. If every child is rejected (or there is none) the token is drawn
from the last residual. By induction the emitted token follows p exactly; an accepted child
continues the walk. Coins come from `uniform(seed, step, sibling)`; the final draw is Gumbel-max
with the sampler's own noise for (seed, step), so everything is reproducible from the seed (but
not token-identical to non-speculative sampling, which draws differently).

Reported log-probs are the target's, log_softmax(logits / T) of the emitted token, as the plain
sampler reports them, so RL rollouts can train on speculative samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonrl.engine.sampler import SamplingBatch, filter_logits, gumbel_noise, uniform
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.spec.tree import DraftTree


@dataclass
class Verdict:
    tokens: list[int]  # emitted tokens: the accepted draft tokens, then one from the target
    logprobs: list[float]
    rows: list[int]  # tree rows whose keys/values stay in the cache: the root and the accepted drafts
    top: list[dict[int, float]] | None = None


RULES = ("coupled", "residual")


def verify(tree: DraftTree, logits: torch.Tensor, params: SamplingParams, seed: int, step: int,
           rule: str = "coupled") -> Verdict:
    """logits (tree.size, V): the target's logits at every row. `step` is the response index of
    the first token to emit (the sampler's step for the root's row)."""
    logits = logits.float()
    temp = params.temperature if not params.greedy else 1.0
    logprobs = (logits / temp).log_softmax(-1)
    children = tree.children()
    if params.greedy:
        choice = logits.argmax(-1).tolist()
        pick = lambda row, i: choice[row]  # noqa: E731
    elif rule == "coupled":
        n = tree.size
        seeds = torch.full((n,), seed, dtype=torch.long, device=logits.device)
        steps = step + torch.tensor(tree.depths, dtype=torch.long, device=logits.device)
        noise = gumbel_noise(seeds, steps, logits.shape[1])
        choice = (_scaled_logits(logits, params, seed, step) + noise).argmax(-1).tolist()
        pick = lambda row, i: choice[row]  # noqa: E731
    else:
        probs = _scaled_logits(logits, params, seed, step).softmax(-1)
        pick = lambda row, i: _sample_row(probs[row], [tree.tokens[c] for c in children[row]], seed, step + i)  # noqa: E731
    tokens, rows = [], [0]
    row = 0
    while True:
        token = pick(row, len(tokens))
        tokens.append(token)
        child = next((c for c in children[row] if tree.tokens[c] == token), None)
        if child is None:
            break
        rows.append(child)
        row = child
    path = rows[: len(tokens)]  # the row each emitted token was drawn at
    lps = logprobs[path, tokens].tolist()
    top = None
    if params.logprobs:
        vals, ids = logprobs[path].topk(params.logprobs, dim=-1)
        top = [dict(zip(i, v)) for i, v in zip(ids.tolist(), vals.tolist())]
    return Verdict(tokens, lps, rows, top)


def _scaled_logits(logits: torch.Tensor, params: SamplingParams, seed: int, step: int) -> torch.Tensor:
    """logits / T with top-k/top-p/min-p applied (excluded tokens at -inf), as the sampler does."""
    n = logits.shape[0]
    scaled = logits / params.temperature
    if params.top_k > 0 or params.top_p < 1 or params.min_p > 0:
        full = lambda v, dt: torch.full((n,), v, dtype=dt, device=logits.device)  # noqa: E731
        batch = SamplingBatch(full(params.temperature, torch.float32), full(max(params.top_k, 0), torch.long),
                              full(params.top_p, torch.float32), full(params.min_p, torch.float32),
                              full(seed, torch.long), full(step, torch.long), any_filter=True)
        scaled = filter_logits(scaled, batch)
    return scaled


def _sample_row(p: torch.Tensor, candidates: list[int], seed: int, step: int) -> int:
    """One emitted token at a row: sequential sibling acceptance, then the residual (see module doc)."""
    residual = p.double().clone()
    seeds = torch.tensor([seed], dtype=torch.long, device=p.device)
    steps = torch.tensor([step], dtype=torch.long, device=p.device)
    for j, x in enumerate(candidates):
        total = float(residual.sum())
        if total <= 0:
            break
        coin = float(uniform(seeds, steps, salt=j + 1)[0])
        if coin * total < float(residual[x]):
            return x
        residual[x] = 0.0
    noise = gumbel_noise(seeds, steps, p.shape[0])[0].double()
    return int((residual.log() + noise).argmax())
