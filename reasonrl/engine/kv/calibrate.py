"""Per-layer bit-widths for the TaDA KV cache: a search that minimises the output KL against the
dense cache under an average-bit budget, and the profile files that store its result.

TaDA (arXiv 2506.04642) picks each layer's precision in {2, 4, 8} by random search scored on a
small training sample. `random_search` does that; `greedy_search` starts from 8 bits everywhere
and repeatedly lowers the one layer whose lowering raises the KL least, until the average is
within budget. Both also score the best uniform setting within the budget and never return
anything worse than it.

Scoring. A candidate's score is the mean KL(p_dense || p_tada) of the next-token distributions
over the calibration sequences, with the sequences teacher-forced through the KV cache: the
first `prompt_len` tokens prefilled in one step, then every later token decoded one step at a
time, each step writing into and attending over the cache exactly as the engine's model runner
does (`PagedAttention` over a `TadaKV` and its block tables, the same write/attend calls, the
Triton decode kernel on CUDA). This is the engine's prefill + decode minus the scheduler and
sampler; teacher forcing makes the two caches see the same tokens, so the KL at every position
compares like with like (free-running generations diverge after the first different token).

Profiles: `<checkpoint>/kv_profiles/<name>.json` holding {"bits": [...], "avg_bits": ..., "kl": ...,
"method": ...}. The engine takes one as `kv_options={"profile": profile_path(checkpoint, name)}`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from reasonrl.engine.attention import AttentionMetadata, PagedAttention
from reasonrl.engine.kv.dense import DenseKV
from reasonrl.engine.kv.quant import BITS
from reasonrl.engine.kv.tada import TadaKV
from reasonrl.models.model import DecoderLM


@dataclass
class SearchResult:
    bits: list[int]
    avg_bits: float
    kl: float
    method: str
    trials: list[tuple[list[int], float]] = field(default_factory=list)  # every candidate scored
    group_size: int | None = None
    """The quantiser group the bits were scored with (an engine on the profile uses it)."""


class KLScorer:
    """KL of TaDA at given per-layer bits against the dense cache, on teacher-forced sequences."""

    def __init__(self, model: DecoderLM, sequences: list[list[int]], prompt_len: int | None = None,
                 block_size: int = 16, group_size: int | None = None):
        shortest = min(len(s) for s in sequences)
        self.prompt_len = prompt_len or max(1, shortest // 2)
        if not 1 <= self.prompt_len < shortest:
            raise ValueError(f"prompt_len={self.prompt_len} must leave at least one token to decode in every "
                             f"calibration sequence (shortest has {shortest})")
        self.model, self.sequences, self.block_size = model, sequences, block_size
        self.group_size = group_size or model.config.head_dim
        self.options = {"group_size": self.group_size}
        self.reference = teacher_forced_logprobs(model, DenseKV, sequences, self.prompt_len, block_size)
        self.cache: dict[tuple[int, ...], float] = {}

    def __call__(self, bits: list[int]) -> float:
        key = tuple(bits)
        if key not in self.cache:
            logp = teacher_forced_logprobs(self.model, TadaKV, self.sequences, self.prompt_len, self.block_size,
                                           bits=list(bits), **self.options)
            p = self.reference.exp()
            self.cache[key] = float((p * (self.reference - logp)).sum(-1).mean())
        return self.cache[key]


@torch.no_grad()
def teacher_forced_logprobs(model: DecoderLM, fmt, sequences: list[list[int]], prompt_len: int, block_size: int = 16,
                            **options) -> torch.Tensor:
    """Log-probs of every next token after the prompt, (positions, vocab), with the sequences'
    own tokens fed back: one prefill step of `prompt_len` tokens each, then one decode step per token."""
    bs, dev = block_size, model.device
    width = -(-max(len(s) for s in sequences) // bs)
    kv = fmt(model.config, len(sequences) * width, bs, dev, model.dtype, len(sequences), **options)
    kv.allocate()
    tables = torch.arange(len(sequences) * width, dtype=torch.int32, device=dev).view(len(sequences), width)
    out = [step(model, kv, tables, sequences, [0] * len(sequences), [prompt_len] * len(sequences))]
    for pos in range(prompt_len, max(len(s) for s in sequences) - 1):
        rows = [b for b, s in enumerate(sequences) if pos < len(s) - 1]
        starts, ends = [0] * len(sequences), [0] * len(sequences)
        for b in rows:
            starts[b], ends[b] = pos, pos + 1
        out.append(step(model, kv, tables, sequences, starts, ends, rows))
    return torch.cat(out).float().log_softmax(-1)


def step(model, kv, tables, sequences, starts, ends, rows=None) -> torch.Tensor:
    """Computes tokens starts[b]:ends[b] of sequences `rows`; -> the logits of each row's last token."""
    rows = range(len(sequences)) if rows is None else rows
    bs, dev = kv.block_size, model.device
    ids, positions, slots, query_start, lens = [], [], [], [0], []
    for b in rows:
        ids += sequences[b][starts[b]: ends[b]]
        positions += range(starts[b], ends[b])
        slots += [int(tables[b, p // bs]) * bs + p % bs for p in range(starts[b], ends[b])]
        query_start.append(len(ids))
        lens.append(ends[b])
    idx = torch.tensor(list(rows), device=dev)
    meta = AttentionMetadata(torch.tensor(slots, device=dev), query_start, lens, tables[idx],
                             torch.tensor(lens, dtype=torch.int32, device=dev))
    hidden = model(torch.tensor(ids, device=dev), torch.tensor(positions, device=dev), PagedAttention(kv, meta))
    return model.compute_logits(hidden[[q - 1 for q in query_start[1:]]])


# ---- search -------------------------------------------------------------------------------------
def uniform_bits(num_layers: int, avg_bits: float) -> list[int]:
    """The highest single bit-width within the budget, for every layer."""
    return [max(b for b in BITS if b <= avg_bits)] * num_layers


def _check_budget(avg_bits: float) -> None:
    if not min(BITS) <= avg_bits:
        raise ValueError(f"avg_bits={avg_bits} is below the lowest bit-width {min(BITS)}")


def _mean(bits: list[int]) -> float:
    return sum(bits) / len(bits)


def _lower(b: int) -> int:
    return BITS[BITS.index(b) - 1]


def random_search(score: KLScorer, num_layers: int, avg_bits: float, n_trials: int = 16, seed: int = 0) -> SearchResult:
    """Draws per-layer bits uniformly from {2, 4, 8}; a draw over budget has random layers lowered
    one step at a time until it fits. Keeps the lowest KL (the uniform setting is trial zero)."""
    _check_budget(avg_bits)
    rng = random.Random(seed)
    candidates = [uniform_bits(num_layers, avg_bits)]
    for _ in range(n_trials):
        bits = [rng.choice(BITS) for _ in range(num_layers)]
        while _mean(bits) > avg_bits:
            i = rng.choice([j for j, b in enumerate(bits) if b > min(BITS)])
            bits[i] = _lower(bits[i])
        candidates.append(bits)
    return _best(score, candidates, avg_bits, "random")


def greedy_search(score: KLScorer, num_layers: int, avg_bits: float) -> SearchResult:
    """From 8 bits everywhere, lower the layer whose lowering costs the least KL until the average
    bit-width is within budget; then compare with the uniform setting."""
    _check_budget(avg_bits)
    bits, tried = [max(BITS)] * num_layers, []
    while _mean(bits) > avg_bits:
        moves = [bits[:i] + [_lower(b)] + bits[i + 1:] for i, b in enumerate(bits) if b > min(BITS)]
        tried += moves
        bits = min(moves, key=score)
    return _best(score, tried + [bits, uniform_bits(num_layers, avg_bits)], avg_bits, "greedy")


def _best(score: KLScorer, candidates: list[list[int]], avg_bits: float, method: str) -> SearchResult:
    trials = [(c, score(c)) for c in candidates if _mean(c) <= avg_bits]
    bits, kl = min(trials, key=lambda t: t[1])
    return SearchResult(list(bits), _mean(bits), kl, method, trials, score.group_size)


def search_bits(model: DecoderLM, sequences: list[list[int]], avg_bits: float, method: str = "greedy",
                n_trials: int = 16, seed: int = 0, prompt_len: int | None = None, block_size: int = 16,
                group_size: int | None = None) -> SearchResult:
    """Per-layer TaDA bits for `model` within an average of `avg_bits`, by "greedy" or "random" search."""
    score = KLScorer(model, sequences, prompt_len, block_size, group_size)
    layers = model.config.num_layers
    if method == "greedy":
        return greedy_search(score, layers, avg_bits)
    if method == "random":
        return random_search(score, layers, avg_bits, n_trials, seed)
    raise ValueError(f"unknown search method {method!r}; choose greedy or random")


# ---- profiles -----------------------------------------------------------------------------------
def profile_path(checkpoint_dir: str | Path, name: str) -> Path:
    return Path(checkpoint_dir) / "kv_profiles" / f"{name}.json"


def save_profile(checkpoint_dir: str | Path, name: str, result: SearchResult) -> Path:
    path = profile_path(checkpoint_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in asdict(result).items() if k != "trials"}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def resolve_profile(checkpoint_dir: str | Path, profile: str) -> str:
    """A TaDA `profile` option given by name ("avg4", no directory, no suffix) -> the path of that
    profile next to the checkpoint; a path is returned as it is."""
    if Path(profile).name == profile and not Path(profile).suffix:
        return str(profile_path(checkpoint_dir, profile))
    return profile


def profile_group_size(path: str | Path) -> int | None:
    """The quantiser group a profile's bits were searched with (None: not recorded, the head size)."""
    return json.loads(Path(path).read_text()).get("group_size")


def load_profile(checkpoint_dir: str | Path, name: str) -> list[int]:
    return read_profile(profile_path(checkpoint_dir, name))


def read_profile(path: str | Path) -> list[int]:
    """The per-layer bits of a profile file; a missing file names the profiles that do exist."""
    path = Path(path)
    if not path.is_file() and path.name == str(path) and not path.suffix:
        raise FileNotFoundError(f"TaDA bit profile {path!r}: a profile given by name is looked up in a checkpoint's "
                                "kv_profiles/ (reasonrl train, generate and serve, LLMEngine.from_pretrained); an engine "
                                "built on a model object needs the profile file's path")
    if not path.is_file():
        found = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"no TaDA bit profile at {path}; profiles in {path.parent}: "
                                f"{', '.join(found) or 'none'} (write one with calibrate.save_profile)")
    data = json.loads(path.read_text())
    if not isinstance(data.get("bits"), list):
        raise ValueError(f"TaDA bit profile {path} has no 'bits' list")
    bad = [b for b in data["bits"] if isinstance(b, bool) or not isinstance(b, (int, float)) or b != int(b)]
    if bad:  # int() read 4.7 as 4
        raise ValueError(f"TaDA bit profile {path}: bits must be whole numbers, got {bad[0]!r}")
    return [int(b) for b in data["bits"]]
