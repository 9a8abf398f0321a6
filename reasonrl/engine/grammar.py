"""Structured outputs in the engine: one grammar matcher per sequence masks the logits to the tokens
its constraint (engine/structured.py) allows, and advances on each token the sequence keeps.

    mask:    logit[t] = -inf for every token t the matcher does not allow next      (before sampling)
    advance: matcher.consume(token)                                                  (engine._append)

The library is llguidance (guidance-ai; Rust with Python bindings), chosen over xgrammar and
outlines-core on three counts:
- speed where a server needs it: the mask is computed lazily each step by walking the token trie
  against an Earley parser over a lexer, with no per-grammar precompilation, so a request's fresh
  JSON schema (every tool list, every `response_format`) costs nothing up front; outlines-core
  builds a regex index over the vocabulary per schema and xgrammar precompiles per grammar
  (cached, but paid by every new schema). Its authors report ~50 us of CPU per mask on a 128k
  vocabulary; what it costs per decode step here is measured by `reasonrl bench structured`
  (docs/benchmarks.md).
- maintenance: released often (1.9 in 2026), and it is a structured-output backend of vLLM,
  SGLang and llama.cpp, so its JSON-schema coverage is what those users already get.
- footprint: one wheel with no Python dependencies (xgrammar requires torch, transformers, triton
  and a TVM FFI runtime, and would tie our install to a torch version). It takes JSON schema, regex,
  and Lark or GBNF grammars that may embed `%json {schema}` (the tool-call grammar uses that).

It is the optional extra `reasonrl[structured]`; without it a constrained request fails with an
error naming the extra, and nothing else changes.

A step's masks are filled by llguidance's thread pool (`Grammars.mask_threads`), all sequences at
once, then unpacked and applied on the logits' device in one operation.

The matcher lives on the sequence, so the mask works under continuous batching (each row its own)
and through preemption (a recomputed sequence keeps its tokens and its matcher). A resumed request
(abort/resume) rebuilds its matcher from the tokens it brings. Constrained requests do not
speculate (SamplingParams.adjusts_logits): the verifier would need a matcher state per node of the
draft tree (forks of the matcher along every branch, plus masked draft and target distributions
to keep the output distribution exact), which is more mask work per step than the draft saves on
the short outputs constraints usually have. Speculation is lossless, so turning it off changes
the speed of these requests only, never their output; the other requests in the batch still
speculate.

Numerics: the sampled token and its reported log-prob come from the masked logits (the
distribution the request asked to sample from), as for the penalties. Whitespace in JSON is fixed
to json.dumps' separators (", " and ": ", no other whitespace) unless the schema's "x-guidance"
says otherwise: what models are trained on, and it keeps every output finite under a bounded schema.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict

import torch

from reasonrl.engine.sampling_params import ParamError
from reasonrl.engine.structured import JSON_OPTIONS, StructuredOutput

EXTRA = "structured"
MAX_CACHED = 256  # compiled grammars kept (by their constraint's text)


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise ImportError(f"structured outputs (json, regex, choice, grammar, tools) need the llguidance package: "
                          f"pip install 'reasonrl[{EXTRA}]'") from None
    return llguidance


class Guide:
    """One sequence's matcher: which tokens may come next, and the tokens kept so far."""

    def __init__(self, matcher):
        self.matcher = matcher

    def advance(self, token: int) -> bool:
        """Consume a token the sequence keeps; False when the constraint does not allow it."""
        return self.matcher.consume_token(token)

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed-next-token bits (bit t%32 of word t//32) into `bitmask[row]`."""
        v = bitmask[row]
        self.matcher.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())

    @property
    def failed(self) -> bool:
        return self.matcher.is_error()


class Grammars:
    """Compiles constraints for one tokenizer and vocabulary; a `Guide` per sequence. A compiled
    constraint is kept as a fresh matcher that each sequence's guide copies (a copy costs about a
    microsecond; building one can take milliseconds), so the engine's thread never compiles what
    the server's workers already did."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int], mask_threads: int | None = None):
        """`mask_threads`: threads that fill a step's masks in parallel (default: min(8, CPU cores))."""
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, sorted(eos_ids)
        self.mask_threads = mask_threads or min(8, os.cpu_count() or 1)
        self._lltok = self._executor = None
        self._cache: OrderedDict[str, object] = OrderedDict()  # constraint text -> a fresh LLMatcher
        self._lock = threading.Lock()  # the server compiles in worker threads, the engine in its own

    @property
    def lltok(self):
        with self._lock:
            if self._lltok is None:
                if self.tokenizer is None:
                    raise ParamError("structured", "structured outputs need the model's tokenizer (tokenizer.json)")
                self._lltok = _llguidance().LLTokenizer(self.tokenizer.tok.to_str(), n_vocab=self.vocab_size,
                                                        eos_token=self.eos_ids)
            return self._lltok

    @property
    def executor(self):
        """llguidance's thread pool for filling many sequences' masks at once."""
        if self._executor is None:
            self._executor = _llguidance().LLExecutor(self.mask_threads)
        return self._executor

    def compile(self, spec: StructuredOutput):
        """A fresh matcher of `spec` (not to be advanced: copy it); a ParamError naming the field when
        the constraint is not valid."""
        key = spec.key()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        llg = _llguidance()
        matcher = llg.LLMatcher(self.lltok, _grammar(llg, spec), log_level=0)
        if matcher.is_error():
            raise ParamError(f"structured.{spec.kind}",
                             f"structured.{spec.kind} cannot be compiled: {matcher.get_error().strip()[:500]}")
        first, probe = torch.zeros(1, (self.vocab_size + 31) // 32, dtype=torch.int32), Guide(matcher.deep_copy())
        probe.fill(first, 0)
        if probe.failed or not bool(first.any()):  # its first mask found no way on: no output satisfies it
            raise ParamError(f"structured.{spec.kind}", f"structured.{spec.kind} admits no output (no first token "
                                                        "and no empty output); check it")
        with self._lock:
            self._cache[key] = matcher
            if len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return matcher

    def guide(self, spec: StructuredOutput, tokens: list[int] = ()) -> Guide:
        """A fresh matcher for `spec`, advanced over `tokens` (a resumed request's output so far)."""
        guide = Guide(self.compile(spec).deep_copy())
        if tokens and not guide.matcher.consume_tokens(list(tokens)):
            raise ParamError("structured", f"the resumed tokens do not match the constraint: "
                                           f"{guide.matcher.get_error()[:300]}")
        return guide


def _grammar(llg, spec: StructuredOutput) -> str:
    kind = spec.kind
    try:
        if kind == "json":
            return llg.LLMatcher.grammar_from_json_schema(spec.json, defaults=JSON_OPTIONS)
        if kind == "regex":
            return llg.LLMatcher.grammar_from_regex(spec.regex)
        if kind == "choice":  # a Lark alternation of JSON-quoted literals
            return llg.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.choice))
        return llg.grammar_from("grammar", spec.grammar)  # Lark, or GBNF converted to Lark
    except ValueError as exc:
        raise ParamError(f"structured.{kind}", f"structured.{kind} is not valid: {str(exc)[:500]}") from None


def mask_logits(logits: torch.Tensor, seqs, eos_ids: set[int], grammars: Grammars | None = None) -> torch.Tensor:
    """logits (S, V) of `seqs`' next tokens -> with -inf where a sequence's matcher forbids a token
    (a copy when any sequence has one). A row whose matcher allows nothing (it failed) may only end.
    With `grammars`, several sequences' masks are filled in parallel by its executor."""
    rows = [i for i, s in enumerate(seqs) if s.guide is not None]
    if not rows:
        return logits
    vocab = logits.shape[1]
    bitmask = torch.zeros(len(rows), (vocab + 31) // 32, dtype=torch.int32)
    if grammars is not None and len(rows) > 1:
        grammars.executor.unsafe_compute_mask_ptr([(seqs[i].guide.matcher, k) for k, i in enumerate(rows)],
                                                  bitmask.data_ptr(), bitmask.shape[1] * 4, len(rows))
    else:
        for k, i in enumerate(rows):
            seqs[i].guide.fill(bitmask, k)
    allowed = unpack(bitmask, vocab)  # (R, V) bool
    dead = ~allowed.any(-1)
    if bool(dead.any()):
        ends = torch.tensor([t for t in eos_ids if t < vocab], dtype=torch.long)
        allowed[dead.nonzero()[:, 0][:, None], ends[None, :]] = True
    logits = logits.float().clone()
    index = torch.tensor(rows, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed.to(logits.device), float("-inf"))
    return logits


def unpack(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """(R, W) int32 words -> (R, vocab) bool, token t at bit t % 32 of word t // 32."""
    shifts = torch.arange(32, dtype=torch.int32)
    bits = (bitmask[:, :, None] >> shifts) & 1  # (R, W, 32)
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab].bool()
