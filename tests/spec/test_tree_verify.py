"""Draft trees (EAGLE-2 expansion and reranking) and the verification rules, on hand-built numbers."""

import math

import pytest
import torch

from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.spec import tree as tree_module
from reasonrl.engine.spec.tree import DraftTree, TreeSearch
from reasonrl.engine.spec.verify import _sample_row, verify


def logprobs(*probs):
    return torch.tensor([[math.log(p) if p > 0 else float("-inf") for p in row] for row in probs])


def test_expansion_keeps_the_top_k_by_cumulative_value_and_reranks_the_whole_tree():
    # vocab 4, k = 2. Root: token 0 (0.6), token 1 (0.3).
    search = TreeSearch(logprobs([0.6, 0.3, 0.05, 0.05]), top_k=2)
    assert search.frontier_tokens().tolist() == [[0, 1]]
    # children of token 0: 2 (0.9), 3 (0.1); of token 1: 0 (0.6), 3 (0.4)
    slot = search.expand(*logprobs([0.0, 0.0, 0.9, 0.1], [0.6, 0.0, 0.0, 0.4])[None].topk(2))
    # values: 0->2 0.54, 0->3 0.06, 1->0 0.18, 1->3 0.12: the frontier is 0->2 and 1->0
    assert search.frontier_tokens().tolist() == [[2, 0]]
    assert slot.tolist() == [[0, 1]]
    tree = search.select([7], num_nodes=3, max_depth=[2])[0]
    # top 3 values: 0 (0.6), 0->2 (0.54), 1 (0.3); 1->0 (0.18) and the rest are cut
    assert tree.tokens == [7, 0, 1, 2] and tree.parents == [-1, 0, 0, 1] and tree.depths == [0, 1, 1, 2]


def test_selection_respects_each_sequence_depth_limit_and_is_connected():
    torch.manual_seed(0)
    search = TreeSearch(torch.randn(2, 16).log_softmax(-1), top_k=3)
    for _ in range(3):
        search.expand(*torch.randn(2, 3, 16).log_softmax(-1).topk(3))
    shallow, deep = search.select([1, 2], num_nodes=20, max_depth=[1, 4])
    assert max(shallow.depths) == 1 and shallow.size == 4  # only the root's 3 children
    assert max(deep.depths) <= 4 and deep.size == 21
    for tree in (shallow, deep):
        for row in range(1, tree.size):
            assert tree.parents[row] < row and tree.depths[row] == tree.depths[tree.parents[row]] + 1


def _coarse_search(gen: torch.Generator, b: int, k: int, depth: int) -> tuple[TreeSearch, list[torch.Tensor]]:
    """A search whose values are sums of log-probs 0, -1 or -2 (ties within and across depths);
    candidate i of depth d (1-based) drafts token 100 d + i."""
    tokens, scores, parents, frontier = [], [], [], []
    for d in range(depth):
        n = k if d == 0 else k * k
        step = -torch.randint(0, 3, (b, n), generator=gen).float()
        par = torch.full((b, n), -1) if d == 0 else frontier[-1].repeat_interleave(k, dim=1)
        scores.append(step if d == 0 else scores[-1].gather(1, par) + step)
        tokens.append(torch.arange(n).expand(b, n) + 100 * (d + 1))
        parents.append(par)
        frontier.append(torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(b)]))
    return TreeSearch.of_tensors(k, (*tokens, *scores, *parents, *frontier), b), scores


@pytest.mark.parametrize("host_ranking", [10 ** 9, 0], ids=["python", "tensor"])
def test_selection_takes_the_top_values_with_ties_to_the_shallower_then_earlier_candidate(host_ranking, monkeypatch):
    monkeypatch.setattr(tree_module, "HOST_RANKING", host_ranking)
    gen = torch.Generator().manual_seed(1)
    for trial in range(60):
        k, depth, m = 1 + trial % 3, 2 + trial % 4, 1 + trial % 7
        search, scores = _coarse_search(gen, 2, k, depth)
        if trial % 5 == 0:  # a broken draft's leaves: never chosen
            scores[-1][0, 0], scores[-1][0, -1] = float("nan"), float("-inf")  # leaves of row 0 (row 1 stops short)
        limits = [depth, max(1, depth - 1)]
        for row, tree in enumerate(search.select([0, 0], m, limits)):
            # the oracle: every candidate within the depth limit by value, then depth, then index
            ranked = sorted((-scores[d][row, i].item(), d + 1, i) for d in range(limits[row])
                            for i in range(scores[d].shape[1]) if scores[d][row, i] > float("-inf"))[:m]
            got = [(tree.depths[r], tree.tokens[r] - 100 * tree.depths[r]) for r in range(1, tree.size)]
            assert got == [(d, i) for _, d, i in sorted(ranked, key=lambda x: x[1])]  # by depth, then value order
            for r in range(1, tree.size):
                assert tree.parents[r] < r and tree.depths[r] == tree.depths[tree.parents[r]] + 1
                parent = tree.parents[r]
                if parent:  # the drafted parent is the candidate the search recorded
                    d, i = got[r - 1]
                    assert search.parents[d - 1][row, i].item() == got[parent - 1][1]


def test_tree_mask_is_ancestors_and_self():
    tree = DraftTree([5, 1, 2, 3], [-1, 0, 0, 1], [0, 1, 1, 2])
    assert tree.mask().int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    assert tree.children() == [[1, 2], [3], [], []]


def test_greedy_verification_walks_the_target_argmax_and_adds_its_own_token():
    tree = DraftTree([5, 1, 2, 3], [-1, 0, 0, 1], [0, 1, 1, 2])
    logits = torch.full((4, 6), -5.0)
    logits[0, 1] = 3  # root: target picks 1 = row 1 -> accepted
    logits[1, 4] = 3  # row 1: target picks 4, its child drafted 3 -> rejected, 4 is the bonus
    v = verify(tree, logits, SamplingParams(temperature=0), seed=0, step=0)
    assert v.tokens == [1, 4] and v.rows == [0, 1]
    expected = logits.log_softmax(-1)
    assert v.logprobs == pytest.approx([expected[0, 1].item(), expected[1, 4].item()])
    logits[1, 3] = 4  # now the child is the argmax too: two accepted drafts and the bonus from row 3
    v = verify(tree, logits, SamplingParams(temperature=0), seed=0, step=0)
    assert v.tokens[:2] == [1, 3] and v.rows == [0, 1, 3] and len(v.tokens) == 3


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of `counts` against `probs`; cells expecting fewer than
    5 counts are pooled into one (the test's approximation needs it)."""
    n = counts.sum()
    big = probs * n >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    expected = torch.cat([probs[big], probs[~big].sum()[None]]) * n
    keep = expected > 0
    observed, expected = observed[keep], expected[keep]
    stat = float(((observed - expected) ** 2 / expected).sum())
    dof = int(keep.sum()) - 1
    # Wilson-Hilferty approximation of the chi-square upper tail
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_sibling_acceptance_with_residual_renormalisation_draws_from_the_target():
    p = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    counts = torch.zeros(5)
    for seed in range(20000):
        counts[_sample_row(p, [3, 1, 4], seed, step=2)] += 1
    assert chi_square_p(counts, p) > 0.01
    # a rule that trusted the draft (always accepting its first candidate) would fail the same test
    assert counts[3] / counts.sum() == pytest.approx(0.3, abs=0.02)
