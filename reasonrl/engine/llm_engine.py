"""`LLMEngine`: requests in, tokens and their log-probs out, one `step()` at a time.

    engine.add_request("r0", prompt_ids, SamplingParams(max_tokens=64))  # or a MultimodalPrompt
    while engine.has_unfinished():
        for out in engine.step(): ...
    engine.abort("r0")  # -> the partial output, blocks freed

A request may be resumed: submit its prompt with the tokens it already produced and their
log-probs (`output_ids`, `output_logprobs`); they are re-prefilled, kept as they are, and count
towards `max_tokens`. With the seed the first run reported (`CompletionOutput.seed`), the resumed
run continues exactly as the uninterrupted one would have.

A prompt may be a `MultimodalPrompt` (token ids with images, models/qwen2_5_vl/prompt.py) on a
vision-language checkpoint; engine/images.py runs its vision tower and M-RoPE positions. Resume
one by submitting the same prompt with the partial tokens.
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from reasonrl.engine.admission import as_token_ids, check_request
from reasonrl.engine.block_manager import BlockManager
from reasonrl.engine.compiled import FastDecode, bucket_sizes
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.cpu_forward import CPUForward
from reasonrl.engine.cuda_graphs import GraphPool
from reasonrl.engine.eviction import EvictionConfig, Evictor
from reasonrl.engine.grammar import Grammars
from reasonrl.engine.images import Images
from reasonrl.engine.isolation import run_isolated
from reasonrl.engine.kv import get_format
from reasonrl.engine.latent import SCALE_KEY, LatentConfig, LatentReasoning, Latents
from reasonrl.engine.model_runner import ModelRunner, Sampled, StepResult
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.scheduler import Scheduler
from reasonrl.engine.sequence import RequestOutput, Sequence
from reasonrl.engine.spec.adaptive import AdaptiveConfig
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.engine.spec.grow import DraftGraphs
from reasonrl.engine.spec.speculator import SpecConfig, Speculator
from reasonrl.engine.weight_layout import runs_linear_kernel, small_products, store_wide_weights_column_major
from reasonrl.models.model import DecoderLM
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.models.tokenizer import IncrementalDecoder, Tokenizer


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    seqs: list[Sequence]
    stream: bool

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)

    def output(self) -> RequestOutput:
        first = self.seqs[0]
        return RequestOutput(self.request_id, self.prompt_ids, [s.output() for s in self.seqs], self.finished,
                             first.prompt_cached or 0, _copy(first.prompt_logprobs), _copy(first.prompt_top_logprobs),
                             _copy(first.prompt_ranks))


def _copy(values: list | None) -> list | None:
    return None if values is None else list(values)


def default_kv_budget(config: EngineConfig, device: torch.device) -> int:
    """The KV cache's bytes when `kv_cache_memory` is unset: on CUDA `gpu_memory_utilization` of the
    device less what is in use now, else 1 GiB."""
    if device.type != "cuda":
        return 1 << 30
    free, total = torch.cuda.mem_get_info(device)
    return int(total * config.gpu_memory_utilization) - (total - free)


class LLMEngine:
    def __init__(self, model: DecoderLM, tokenizer: Tokenizer | None = None, config: EngineConfig | None = None,
                 draft: DraftHead | None = None, latent: LatentConfig | None = None):
        """`draft` (or `config.draft`, a checkpoint path) turns on speculative decoding; `latent`,
        LVR's latent mode (engine/latent.py)."""
        self.model, self.tokenizer = model, tokenizer
        self.config = cfg = config or EngineConfig()
        mcfg = model.config
        self.column_major_bytes = self._cpu_linear(model)  # before any compile traces the weights
        self.max_model_len = cfg.max_model_len or mcfg.max_position_embeddings
        self.eos_ids = set(tokenizer.eos_token_ids if tokenizer else mcfg.stop_token_ids)
        fmt = get_format(cfg.kv_format)
        fmt.check_options(cfg.kv_options)
        fixed = fmt.fixed_bytes(mcfg, cfg.block_size, model.dtype, cfg.max_num_seqs, **cfg.kv_options)
        num_blocks = self._num_blocks(fmt.bytes_per_block(mcfg, cfg.block_size, model.dtype, **cfg.kv_options), fixed)
        self.kv = fmt(mcfg, num_blocks, cfg.block_size, model.device, model.dtype, cfg.max_num_seqs, **cfg.kv_options)
        self.kv.cpu_kernel = cfg.cpu_decode_kernel
        self.kv.allocate()
        self.block_manager = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching, self.kv.free_blocks)
        self.evictor = self._evictor()
        self.scheduler = Scheduler(self.block_manager, cfg.max_num_seqs, cfg.max_num_batched_tokens)
        self.images = Images(model) if getattr(model, "vlm_config", None) is not None else None
        self.grammars = Grammars(tokenizer, mcfg.vocab_size, self.eos_ids)  # structured outputs (engine/grammar.py)
        latent = latent or self._latent_config(tokenizer)
        self.latents = LatentReasoning(latent, model, self.images) if latent is not None else None
        fast = None
        if self.evictor is None:  # eviction decodes eager
            # compiled or captured decode if asked for, else on CPU the C++ forward, which also takes
            # an image model's text steps and a latent engine's token steps (it declines steps with
            # image rows, latent inputs or M-RoPE positions)
            if self.images is None and self.latents is None:
                fast = FastDecode.build(model, self.kv, cfg, self.max_model_len)
            fast = fast or CPUForward.build(model, self.kv, cfg)
        self.runner = ModelRunner(model, self.kv, cfg.block_size, self.evictor, self.images, self.eos_ids,
                                  grammars=self.grammars, latents=self.latents, fast=fast)
        self.speculator = self._speculator(draft)
        if self.latents is not None and (self.speculator is not None or self.evictor is not None):
            raise ValueError("latent mode cannot be combined with speculative decoding (draft) or token eviction (evict_budget)")
        self.requests: dict[str, Request] = {}
        self._done_at_add: list[RequestOutput] = []
        self._next_seq_id = 0
        self._rng = random.Random(cfg.seed)
        self.num_generated_tokens = 0

    def _latent_config(self, tokenizer: Tokenizer | None) -> LatentConfig | None:
        """`config.latent_steps` turns latent mode on with the tokenizer's LVR tokens."""
        cfg = self.config
        if cfg.latent_steps is None:
            raw = getattr(getattr(self.model, "vlm_config", None), "raw", None) or {}
            if SCALE_KEY in raw:  # its answers were trained after latent spans: without them they are worse
                warnings.warn("this checkpoint was trained for LVR latent reasoning (its config.json has "
                              f"{SCALE_KEY}), but latent mode is off: set EngineConfig.latent_steps (--latent-steps 8 "
                              "on the command line) to run it as trained", stacklevel=3)
            return None
        if tokenizer is None:
            raise ValueError("EngineConfig.latent_steps needs the checkpoint's tokenizer (for the LVR token ids)")
        return LatentConfig.for_model(self.model, tokenizer, steps=cfg.latent_steps, exit=cfg.latent_exit,
                                    feedback=cfg.latent_feedback)

    def _evictor(self) -> Evictor | None:
        cfg = self.config
        if cfg.evict_budget is None:
            return None
        if not self.kv.supports_eviction:
            raise ValueError(f"token eviction (evict_budget) needs kv_format dense or spark, not {cfg.kv_format!r}")
        return Evictor(EvictionConfig(cfg.evict_budget, cfg.evict_window), self.kv, self.block_manager)

    def _speculator(self, draft: DraftHead | None) -> Speculator | None:
        cfg = self.config
        if draft is None and cfg.draft is None:
            if changed := [f.name for f in fields(cfg) if f.name.startswith("draft_") and getattr(cfg, f.name) != f.default]:
                warnings.warn(f"{', '.join(changed)} set without a draft: decoding is not speculative (give "
                              "EngineConfig.draft, --draft)", stacklevel=3)
            return None
        if self.evictor is not None:
            raise ValueError("speculative decoding cannot be combined with token eviction (evict_budget)")
        if not self.kv.supports_speculation:
            raise ValueError(f"speculative decoding needs a KV format that can move cache slots; "
                             f"kv_format {cfg.kv_format!r} cannot (use dense)")
        draft = draft or DraftHead.load(cfg.draft, self.model)
        self.column_major_bytes += self._cpu_linear(draft)
        adaptive = AdaptiveConfig(cfg.draft_adaptive, cfg.draft_max_batch, cfg.draft_explore_every, margin=cfg.draft_margin)
        spec = SpecConfig(top_k=cfg.draft_top_k, depth=cfg.draft_depth, num_nodes=cfg.draft_tokens, adaptive=adaptive,
                          compile=cfg.draft_compile, native=cfg.cpu_draft_kernel)
        graphs = None
        if cfg.cuda_graphs and self.model.device.type == "cuda":
            graphs = DraftGraphs(draft.config, bucket_sizes(cfg.max_num_seqs, cfg.max_decode_bucket), self.max_model_len,
                                self.model.config.vocab_size, GraphPool(self.model.device, cfg.cuda_graph_memory))
        return Speculator(draft, self.kv, self.block_manager, spec, self.max_model_len, self.images, graphs)

    def _cpu_linear(self, model: torch.nn.Module) -> int:
        """On CPU, `config.column_major_weights`: wide weights re-stored column-major (the bytes moved
        are returned); `config.cpu_linear_kernel` / `split_small_matmuls`: linear layers spread small
        products over threads."""
        cfg = self.config
        if next(model.parameters()).device.type != "cpu":
            return 0
        if cfg.cpu_linear_kernel or cfg.split_small_matmuls:
            small_products(model, kernel=cfg.cpu_linear_kernel, split=cfg.split_small_matmuls)
        return store_wide_weights_column_major(model) if cfg.column_major_weights else 0

    @classmethod
    def from_pretrained(cls, path: str | Path, device=None, dtype=None, latent: LatentConfig | None = None,
                        tokenizer: Tokenizer | None = None, **engine_kwargs) -> LLMEngine:
        """An engine on the checkpoint at `path`, with its tokenizer unless `tokenizer` is given (the
        engine's end-of-sequence ids, structured outputs and detokenizing all follow the one it gets)."""
        from reasonrl.models.loader import load_model

        config = EngineConfig.from_kwargs(**engine_kwargs).for_checkpoint(path)
        model = load_model(path, device, dtype, max_len=config.max_model_len)
        if tokenizer is None and (Path(path) / "tokenizer.json").is_file():
            tokenizer = Tokenizer.from_dir(path)
        return cls(model, tokenizer, config, latent=latent)

    def _num_blocks(self, bytes_per_block: int, fixed_bytes: int = 0) -> int:
        """Blocks that fit the KV budget once the format's fixed buffers are taken out of it."""
        budget = self.config.kv_cache_memory or default_kv_budget(self.config, self.model.device)
        num_blocks = max(budget - fixed_bytes, 0) // bytes_per_block
        needed = -(-self.max_model_len // self.config.block_size)
        if num_blocks < needed:
            raise ValueError(
                f"the KV cache ({budget} bytes, {fixed_bytes} of them for the format's fixed buffers; {num_blocks} blocks "
                f"of {self.config.block_size} tokens) cannot hold one sequence of max_model_len={self.max_model_len} "
                "tokens: raise kv_cache_memory or lower max_model_len (or max_num_seqs, which sizes staging buffers)")
        return num_blocks

    # ---- requests -------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: list[int] | MultimodalPrompt, params: SamplingParams | None = None,
                    output_ids: list[int] | None = None, output_logprobs: list[float] | None = None,
                    stream: bool = False, output_latents: Latents | None = None) -> None:
        """`prompt`: token ids, or a `MultimodalPrompt` (a vision-language model's prompt with images).
        `output_latents`: a resumed output's latents (its `CompletionOutput.latents`), in latent mode."""
        params = params or SamplingParams()
        if not self.kv.storage():
            raise RuntimeError(f"request {request_id!r}: the engine is asleep (its KV cache is freed); call wake() first")
        mm = prompt if isinstance(prompt, MultimodalPrompt) and prompt.num_images else None
        prompt_ids = as_token_ids(request_id, "prompt", prompt.input_ids if isinstance(prompt, MultimodalPrompt) else prompt)
        output_ids = as_token_ids(request_id, "output_ids", output_ids)
        self._validate(request_id, prompt_ids, params, output_ids, output_logprobs)
        if mm is not None:
            self._check_images(request_id, mm)
        elif self.images is not None and self.model.vlm_config.image_token_id in prompt_ids:
            raise ValueError(f"request {request_id!r}: the prompt holds image placeholder tokens "
                             f"({self.model.vlm_config.image_token_id}) but no images; pass a MultimodalPrompt")
        if self.images is not None and self.model.vlm_config.video_token_id in prompt_ids:
            raise ValueError(f"request {request_id!r}: the prompt holds video placeholder tokens "
                             f"({self.model.vlm_config.video_token_id}); videos are not supported")
        if params.structured is not None:
            self.grammars.compile(params.structured)  # a ParamError before anything is admitted
        if output_latents is not None and self.latents is None:
            raise ValueError(f"request {request_id!r}: output_latents given, but this engine runs no latent mode")
        base_seed = params.seed if params.seed is not None else self._rng.randrange(1 << 62)
        seqs = []
        for i in range(params.n):
            seq = Sequence(self._next_seq_id, request_id, i, prompt_ids, params, base_seed + i, output_ids, output_logprobs)
            self._next_seq_id += 1
            if self.tokenizer is not None and params.detokenize:
                seq.decoder = IncrementalDecoder(self.tokenizer, seq.prompt_ids, params.skip_special_tokens)
                seq.text = seq.decoder.push(seq.output_ids) if seq.output_ids else ""
            if params.structured is not None:  # a resumed request's matcher is rebuilt from its tokens
                seq.guide = self.grammars.guide(params.structured, seq.output_ids)
            if self.evictor is not None:
                self.evictor.prepare(seq)
            if self.latents is not None:
                self.latents.admit(seq, output_latents)
            seqs.append(seq)
        request = Request(request_id, list(prompt_ids), seqs, stream)
        if seqs[0].num_resumed >= params.max_tokens or seqs[0].num_tokens >= self.max_model_len:
            if params.prompt_logprobs is not None:  # they come from a forward this request will not run
                raise ValueError(f"request {request_id!r} already holds all the tokens it may have (max_tokens or "
                                 "the context): nothing runs, so prompt_logprobs cannot be computed; leave it out")
            seqs[0].finish("length")
            if seqs[0].decoder is not None:  # the text of a character cut at the end, as _append gives it
                seqs[0].text += seqs[0].decoder.push([], final=True)
            self._done_at_add.append(request.output())
            return
        self.requests[request_id] = request
        if mm is not None:
            self.images.admit(request_id, mm, seqs)
        for seq in seqs:
            self.scheduler.add(seq)

    def _validate(self, request_id, prompt_ids, params, output_ids, output_logprobs) -> None:
        if request_id in self.requests or any(out.request_id == request_id for out in self._done_at_add):
            raise ValueError(f"request id {request_id!r} is already running")
        check_request(request_id, prompt_ids, params, output_ids, output_logprobs, self.model.config.vocab_size,
                      self.max_model_len)
        if params.stop and (self.tokenizer is None or not params.detokenize):
            raise ValueError(f"request {request_id!r}: stop strings {params.stop!r} need the output text, but "
                             + ("this engine has no tokenizer" if self.tokenizer is None else "detokenize=False")
                             + " (stop_token_ids work on token ids)")

    def _check_images(self, request_id: str, mm: MultimodalPrompt) -> None:
        if self.images is None:
            raise ValueError(f"request {request_id!r}: this model takes no images (it is not a vision-language model)")
        self.images.check(request_id, mm, {"token eviction (evict_budget)": self.evictor is not None})

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now; returns its partial output (None if unknown or already finished)."""
        return self._end(request_id, "abort")

    def fail(self, request_id: str, error: str) -> RequestOutput | None:
        """End a request the engine could not run: finish_reason "error", `error` says why, blocks freed."""
        out = self._end(request_id, "error")
        if out is not None:
            out.error = f"request {request_id!r} failed: {error}"
        return out

    def _end(self, request_id: str, reason: str) -> RequestOutput | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        self._release(request_id)
        for seq in request.seqs:
            if not seq.finished:
                seq.finish(reason)
            self._drop(seq)
        return request.output()

    def abort_all(self) -> list[RequestOutput]:
        return [out for rid in list(self.requests) if (out := self.abort(rid)) is not None]

    def has_unfinished(self) -> bool:
        return bool(self.requests or self._done_at_add)

    def drain(self) -> dict[str, RequestOutput]:
        """Step until every request has finished; their outputs by request id."""
        done: dict[str, RequestOutput] = {}
        while self.has_unfinished():
            done.update((out.request_id, out) for out in self.step() if out.finished)
        return done

    # ---- the loop ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one batch; returns the requests that finished (and, for streams, progressed)."""
        outputs, self._done_at_add = self._done_at_add, []
        scheduled = self.scheduler.schedule()
        if scheduled:
            trees, start = {}, time.perf_counter()
            if self.speculator is not None:
                spare = self.config.max_num_batched_tokens - sum(n for _, n in scheduled)
                trees = self.speculator.propose(scheduled, spare)
            outputs += run_isolated(self, scheduled, trees)  # a request whose step raises fails alone
            if self.speculator is not None:  # the step's tokens are on the host: its time is over
                self.speculator.step_done(scheduled, time.perf_counter() - start)
        return outputs

    def _collect_features(self, scheduled: list[tuple[Sequence, int]], result: StepResult) -> None:
        """Hand the draft the target's hidden states of the tokens that stay in the cache (where
        the adaptive policy may draft from them); where it may not, only the features of prompts'
        full blocks, kept for the prefix cache's later hits (`Speculator.keep_prompt_blocks`)."""
        starts, kept = result.batch.meta.query_start, None
        if not self.speculator.collecting:
            if starts[-1] == len(scheduled):  # one row each: decode steps, no prompt chunk to keep
                return
            for b, (seq, n) in enumerate(scheduled):
                self._keep_prompt_blocks(seq, n, result.hidden[starts[b]: starts[b + 1]])
            return
        for b, (seq, n) in enumerate(scheduled):
            if not self.speculator.wants(seq):  # its prompt's blocks still serve later requests' prefix hits
                self._keep_prompt_blocks(seq, n, result.hidden[starts[b]: starts[b + 1]])
                continue
            verdict = result.verdicts.get(seq.seq_id)
            if verdict is None and starts[b + 1] - starts[b] == 1:  # a decode step without a tree
                if kept is None:  # one copy per step: a captured graph's output buffer is rewritten by the next replay
                    kept = result.hidden.detach().clone()
                self.speculator.observe_row(seq, seq.num_computed, kept, starts[b])
                continue
            rows = range(starts[b], starts[b + 1]) if verdict is None else [starts[b] + r for r in verdict.rows]
            self.speculator.observe(seq, seq.num_computed, result.hidden[list(rows)])

    def _keep_prompt_blocks(self, seq: Sequence, n: int, hidden) -> None:
        if seq.num_computed + n <= len(seq.prompt_ids) and n >= self.block_manager.block_size:
            self.speculator.keep_prompt_blocks(seq, seq.num_computed, hidden)

    def _postprocess(self, scheduled: list[tuple[Sequence, int]], result: StepResult) -> list[RequestOutput]:
        touched: dict[str, Request] = {}
        for seq, n in scheduled:
            verdict = result.verdicts.get(seq.seq_id)
            if verdict is not None:
                used = 0
                for i, token in enumerate(verdict.tokens):
                    self._append(seq, Sampled(token, verdict.logprobs[i], verdict.top[i] if verdict.top else None))
                    used += 1
                    if seq.finished:
                        break
                self.speculator.record(seq, verdict, used)
                if not seq.finished:
                    self.speculator.settle(seq, verdict)
                seq.num_computed += len(verdict.rows)
            else:
                if (pl := result.prompt.get(seq.seq_id)) is not None:
                    seq.prompt_logprobs[pl.first: pl.first + len(pl.logprobs)] = pl.logprobs
                    seq.prompt_ranks[pl.first: pl.first + len(pl.ranks)] = pl.ranks
                    if pl.top is not None:
                        seq.prompt_top_logprobs[pl.first: pl.first + len(pl.top)] = pl.top
                seq.num_computed += n
                if self.evictor is not None:
                    self.evictor.after_step(seq)
                s = result.sampled.get(seq.seq_id)
                if s is None:
                    continue
                if self.latents is not None:
                    s = self.latents.intercept(seq, s, result)
                self._append(seq, s)
            touched[seq.request_id] = self.requests[seq.request_id]
            if seq.finished:
                self._drop(seq)
        outputs = []
        for request in touched.values():
            if request.finished:
                del self.requests[request.request_id]
                self._release(request.request_id)
            if request.finished or request.stream:
                outputs.append(request.output())
        return outputs

    def _release(self, request_id: str) -> None:
        if self.images is not None:
            self.images.release(request_id)

    def _drop(self, seq: Sequence) -> None:
        self.scheduler.remove(seq)
        if self.evictor is not None:
            self.evictor.forget(seq)
        if self.speculator is not None:
            self.speculator.forget(seq)

    def _append(self, seq: Sequence, s: Sampled) -> None:
        seq.output_ids.append(s.token)
        seq.output_logprobs.append(s.logprob)
        if seq.top_logprobs is not None:
            seq.top_logprobs.append(s.top or {})
        self.num_generated_tokens += 1
        p = seq.params
        stop_token = s.token in p.stop_token_ids or (s.token in self.eos_ids and (not p.ignore_eos or seq.guide is not None))
        # a stop token's id stays in the output, its text (say <|im_end|>) only on request, as a stop string's
        shown = seq.decoder is not None and not (stop_token and not p.include_stop_str_in_output)
        piece = seq.decoder.push([s.token]) if shown else ""
        seq.text += piece
        if seq.guide is not None:
            seq.guide.advance(s.token)  # the mask allowed it; after the grammar's end only EOS is allowed
        if stop_token:  # stop_reason: the stop token's id, None for end-of-sequence (as vLLM reports them)
            seq.finish("stop", s.token if s.token in p.stop_token_ids else None)
        elif p.stop and piece and len(seq.output_ids) >= p.min_tokens and self._stop_string(seq, len(piece)):
            pass
        elif len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish("length")
        if seq.finished and seq.decoder is not None and seq.stop_reason not in p.stop:
            seq.text += seq.decoder.push([], final=True)

    @staticmethod
    def _stop_string(seq: Sequence, new_chars: int) -> bool:
        """Cut at the earliest stop string in the text (whatever their order in the list; the
        shortest of those starting there), if one ends in the new text."""
        found = []
        for stop in seq.params.stop:
            # only a match that ends in the new text is new
            start = max(0, len(seq.text) - new_chars - len(stop) + 1)
            at = seq.text.find(stop, start)
            if at >= 0:
                found.append((at, len(stop), stop))
        if not found:
            return False
        at, length, stop = min(found)
        seq.text = seq.text[: at + length if seq.params.include_stop_str_in_output else at]
        seq.finish("stop", stop)
        return True

    # ---- memory -------------------------------------------------------------------------------
    def reset_prefix_cache(self) -> None:
        """Call after the weights change: cached keys and values belong to the old weights."""
        self.block_manager.reset_prefix_cache()
        if self.speculator is not None:
            self.speculator.reset()

    def load_weights(self, path: str | Path) -> None:
        """Replace the weights with a checkpoint's (same architecture); no request may be in flight."""
        from reasonrl.models.loader import load_weights

        if self.requests:
            raise RuntimeError(f"cannot load weights with {len(self.requests)} requests in flight; abort them first")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"checkpoint directory {path} does not exist")
        load_weights(self.model, path)
        self.reset_prefix_cache()

    def set_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy a state dict of the same architecture into the served model (e.g. a trainer's policy
        held elsewhere); every tensor is checked before any is written. No request may be in flight."""
        if self.requests:
            raise RuntimeError(f"cannot change weights with {len(self.requests)} requests in flight; abort them first")
        own = self.model.state_dict()
        bad = sorted(n for n in own if n not in tensors or tensors[n].shape != own[n].shape)
        if bad:
            raise ValueError(f"the new weights lack or misshape {len(bad)} tensors of the served model, e.g. {bad[:3]}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(tensors[name])
        self.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the KV cache (e.g. for a training phase). No request may be in flight."""
        if self.requests:
            raise RuntimeError(f"cannot sleep with {len(self.requests)} requests in flight; abort them first")
        self.kv.release()
        self.block_manager.reset_prefix_cache()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()

    def wake(self) -> None:
        if not self.kv.storage():
            self.kv.allocate()

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue exactly: the RNG that draws unseeded requests' seeds."""
        return {"seed_rng": self._rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["seed_rng"]
        self._rng.setstate((version, tuple(internal), gauss))

    def stats(self) -> dict[str, float]:
        bm = self.block_manager
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_blocks_used": len(bm.blocks) - bm.num_free, "kv_blocks_total": len(bm.blocks),
                "kv_capacity_tokens": len(bm.blocks) * bm.block_size,  # tokens the KV budget holds in this format
                "kv_bytes_per_token": self.kv.bytes_per_token, "kv_allocated_bytes": self.kv.allocated_bytes,
                "preemptions": self.scheduler.num_preemptions,
                "generated_tokens": self.num_generated_tokens, **(self.speculator.stats() if self.speculator else {}),
                **(self.evictor.stats() if self.evictor else {}), **(self.images.stats() if self.images else {}),
                "column_major_weight_bytes": self.column_major_bytes, "cpu_decode_kernel": self.kv.on_cpu_kernel,
                "cpu_linear_kernel": runs_linear_kernel(self.model),
                **(self.runner.fast.stats() if self.runner.fast else {})}
