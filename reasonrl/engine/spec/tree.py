"""Dynamic draft trees (EAGLE-2, arXiv 2406.16858 §3-4), for many sequences at once.

A node's value is the product of draft probabilities from the root to it (kept as a sum of
log-probs). *Expansion*: at each depth, the top-k nodes by value of the newest layer (the
frontier) go through the draft, and each proposes its top-k children. *Reranking*: the top-m
nodes by value over the whole tree become the draft; ties go to the shallower node. A child is
never worth more than its parent, so the selection is a connected subtree of the root.

Layout of one `TreeSearch` over B sequences: depth-1 candidates are the root's top-k; at depth
d >= 2 the candidates are the k * k children of the k frontier nodes of depth d - 1, child c of
frontier slot c // k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


HOST_RANKING = 1024
"""Most candidate values (sequences x candidates) `TreeSearch.select` ranks as Python lists; above, as
one sorted tensor."""


@dataclass
class DraftTree:
    """One sequence's flattened draft. Row 0 is the root: the last sampled token, whose keys and
    values are not in the cache yet. Rows 1..m are draft tokens, parents before children."""

    tokens: list[int]
    parents: list[int]  # parent row of each row, -1 for the root
    depths: list[int]

    @property
    def size(self) -> int:
        return len(self.tokens)

    def children(self) -> list[list[int]]:
        """Child rows of every row, most valuable first (rows are in value order within a depth)."""
        out: list[list[int]] = [[] for _ in self.tokens]
        for row, parent in enumerate(self.parents):
            if parent >= 0:
                out[parent].append(row)
        return out

    def mask(self, device=None) -> torch.Tensor:
        """(size, size) bool: row i may attend row j iff j is i or an ancestor of i. Built in host
        bytes, a row from its parent's (parents come first), then one tensor: a tree's rows as tensor
        operations cost more than the rest of its step's bookkeeping at batch 1."""
        n = self.size
        m = bytearray(n * n)
        for row, parent in enumerate(self.parents):
            if parent >= 0:
                m[row * n: row * n + n] = m[parent * n: parent * n + n]
            m[row * n + row] = 1
        return torch.frombuffer(m, dtype=torch.bool).view(n, n).to(device)


class TreeSearch:
    def __init__(self, root_logprobs: torch.Tensor, top_k: int):
        """root_logprobs (B, V): the draft's next-token log-probs after each root."""
        self.k = min(top_k, root_logprobs.shape[1])
        lp, tok = root_logprobs.float().topk(self.k, dim=-1)
        self.tokens, self.scores = [tok], [lp]  # per depth: (B, n_d)
        self.parents = [torch.full_like(tok, -1)]  # per depth: index into the previous depth's candidates
        self.frontier = [torch.arange(self.k, device=tok.device).expand_as(tok)]  # per depth: (B, k) candidate indices

    @property
    def depth(self) -> int:
        return len(self.tokens)

    def frontier_tokens(self) -> torch.Tensor:
        """(B, k) tokens of the newest frontier: the next draft forward's inputs."""
        return self.tokens[-1].gather(1, self.frontier[-1])

    def expand(self, child_lp: torch.Tensor, child_tokens: torch.Tensor) -> torch.Tensor:
        """child_lp, child_tokens (B, k, k): the draft's k most likely tokens after each frontier
        node and their log-probs. Adds a depth; returns (B, k) the slot in the previous frontier of
        each new frontier node's parent."""
        b, k = child_lp.shape[:2]
        parent_scores = self.scores[-1].gather(1, self.frontier[-1])  # (B, k)
        scores = (parent_scores[:, :, None] + child_lp.float()).reshape(b, k * self.k)
        self.parents.append(self.frontier[-1].repeat_interleave(self.k, dim=1))
        self.tokens.append(child_tokens.reshape(b, k * self.k))
        self.scores.append(scores)
        self.frontier.append(scores.topk(self.k, dim=-1).indices)
        return self.frontier[-1] // self.k

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Everything the search holds, flat (what a captured tree step outputs)."""
        return (*self.tokens, *self.scores, *self.parents, *self.frontier)

    @classmethod
    def of_tensors(cls, k: int, tensors: tuple[torch.Tensor, ...], rows: int) -> TreeSearch:
        """The search `tensors()` came from, for its first `rows` sequences (a padded batch's real ones)."""
        d = len(tensors) // 4
        search = cls.__new__(cls)
        search.k = k
        padded = tensors[0].shape[0] != rows
        search.tokens, search.scores, search.parents, search.frontier = (
            [t[:rows] if padded else t for t in tensors[i * d:(i + 1) * d]] for i in range(4))
        return search

    def select(self, roots: list[int], num_nodes: int, max_depth: list[int]) -> list[DraftTree]:
        """Each sequence's tree under its root token: the top `num_nodes` nodes by value, no deeper
        than its max_depth; among equal values the shallower node, then the earlier candidate; a
        node valued -inf or NaN never."""
        sizes = [t.shape[1] for t in self.tokens]
        depth_of = [d + 1 for d, n in enumerate(sizes) for _ in range(n)]
        ranked = self._ranked(num_nodes, max_depth, depth_of)
        # one device-to-host copy each, not one per node
        tokens = torch.cat(self.tokens, 1).tolist()
        parents = torch.cat(self.parents, 1).tolist()
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        trees = []
        for b, (root, top) in enumerate(zip(roots, ranked)):
            top.sort(key=depth_of.__getitem__)  # parents before children; within a depth, value order
            row_of = {-1: 0}
            tree = DraftTree([root], [-1], [0])
            for i in top:
                depth, parent = depth_of[i], parents[b][i]
                row_of[i] = tree.size
                tree.tokens.append(tokens[b][i])
                tree.parents.append(row_of[-1 if depth == 1 else offsets[depth - 2] + parent])
                tree.depths.append(depth)
            trees.append(tree)
        return trees

    def _ranked(self, num_nodes: int, max_depth: list[int], depth_of: list[int]) -> list[list[int]]:
        """Per sequence, the candidates it keeps, most valuable first. Candidates are laid out
        shallower depths first, so a stable sort puts the shallower first on ties. A few hundred
        values sort faster as Python lists than through tensor operations (batch 1); more, as one
        sorted tensor."""
        scores = torch.cat(self.scores, 1)
        if scores.numel() <= HOST_RANKING:
            out = []
            for value, limit in zip(scores.tolist(), max_depth):
                live = [i for i, (d, v) in enumerate(zip(depth_of, value)) if d <= limit and v > float("-inf")]
                out.append(sorted(live, key=lambda i: -value[i])[:num_nodes])
            return out
        dev = scores.device
        too_deep = torch.tensor(depth_of, device=dev)[None, :] > torch.tensor(max_depth, device=dev)[:, None]
        scores = scores.masked_fill(too_deep | scores.isnan(), float("-inf"))
        order = scores.sort(dim=1, descending=True, stable=True).indices[:, :num_nodes]
        picked = scores.gather(1, order)
        return [[i for i, v in zip(o, p) if v > float("-inf")] for o, p in zip(order.tolist(), picked.tolist())]
