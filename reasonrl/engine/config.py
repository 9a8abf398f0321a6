"""`EngineConfig`: the engine's knobs, validated on construction; errors name the field."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from reasonrl.config import ByteSize, parse_size, positive_ints


@dataclass(slots=True)
class EngineConfig:
    max_num_seqs: int = 256
    """Sequences decoded together at most."""
    max_num_batched_tokens: int = 4096
    """Tokens (prefill chunks plus decode tokens) one step may process; longer prompts are chunked."""
    max_model_len: int | None = None
    """Longest prompt plus response; None takes the model's max_position_embeddings."""
    block_size: int = 16
    """Tokens per KV block."""
    kv_cache_memory: ByteSize | None = None
    """Bytes for the KV cache (e.g. 512MiB, 2GiB). None: 1 GiB on CPU; on CUDA,
    gpu_memory_utilization of the device less what is in use."""
    gpu_memory_utilization: float = 0.85
    """CUDA, kv_cache_memory unset: the share of the device's memory the process may fill."""
    enable_prefix_caching: bool = True
    """Share the KV blocks of equal prompt prefixes between requests (e.g. the samples of a group)."""
    kv_format: str = "dense"
    """How keys and values are stored: dense, tada, kivi or spark (docs/kv-formats.md)."""
    kv_options: dict = field(default_factory=dict, metadata={"flag": "kv-option"})
    """The format's parameters (flag: --kv-option bits=4, repeatable); unknown names fail when the engine starts."""
    evict_budget: int | None = None
    """SnapKV token eviction (engine/eviction.py): prompt tokens each KV head keeps per layer besides
    the window; None keeps every token. Needs kv_format dense or spark."""
    evict_window: int = 32
    """SnapKV: the last prompt queries that choose what is kept (always kept themselves)."""
    seed: int = 0
    """Draws the seeds of requests that do not set one."""
    draft: str | None = None
    """A draft-head checkpoint (`reasonrl distill-draft`): turns on speculative decoding."""
    latent_steps: int | None = None
    """LVR latent mode (engine/latent.py; docs/vision.md): latents per `<|lvr_start|>` span. None: off.
    Needs a vision-language checkpoint whose tokenizer has `<|lvr_start|>`, `<|lvr|>` and `<|lvr_end|>`."""
    latent_exit: Literal["steps", "end_token"] | None = None
    """LVR latent mode: "steps" forces `<|lvr_end|>` after latent_steps latents (as LVR does);
    "end_token" leaves when `<|lvr_end|>` is sampled at a latent position, at the latest after latent_steps
    (for a checkpoint trained to choose its span's length; engine/latent.py). None: what the checkpoint was
    trained for ("steps" when it records nothing)."""
    latent_feedback: Literal["state", "image_token"] | None = None
    """LVR latent mode: what a latent position is fed, "state" (the final hidden state, LVR) or "image_token"
    (the prompt's image token nearest to it; engine/latent.py). None: what the checkpoint was trained for.
    Like latent_exit, it does nothing while latent_steps is None."""
    draft_top_k: int = 8
    """Draft tree: children per expanded node and nodes expanded per depth."""
    draft_depth: int = 6
    """Draft tree: deepest draft token."""
    draft_tokens: int = 32
    """Draft tree: draft tokens verified per sequence and step."""
    draft_adaptive: bool = True
    """Choose each step's tree size, down to none, from the batch size and measured acceptance and
    step times (engine/spec/adaptive.py; docs/spec.md); off: every step gets the full tree."""
    draft_max_batch: int | None = None
    """Never speculate with more sequences decoding than this; None: the measurements decide."""
    draft_explore_every: int = 16
    """Adaptive speculation: steps of a batch size between trials of a neighbouring tree size (or of no tree)."""
    draft_margin: float = 0.05
    """Adaptive speculation: a tree is chosen over none only when its estimated rate is this
    fraction higher (keeps timing noise from flipping speculation on and off)."""
    draft_sampling: Literal["coupled", "residual"] = "coupled"
    """How sampled requests accept draft tokens: "coupled" (a draft is accepted when it is the token
    plain sampling draws with the same seed: output token-identical to plain sampling) or "residual"
    (sequential sibling acceptance with residual renormalisation: same distribution, other tokens)."""
    draft_compile: bool = False
    """Speculative decoding: run each depth of draft-tree growth through torch.compile (dynamic
    shapes), compiled at start-up (engine/spec/grow.py; stats report the seconds). Greedy and
    coupled-sampled output is unchanged (the draft only proposes). Off by default: it costs a
    compile at every engine start."""
    cpu_forward_kernel: bool = True
    """CPU, fp32, dense KV: a step whose sequences each have at most 64 rows (a decode row, a draft
    tree to verify, a prompt chunk) runs the model's whole forward in one C++ call
    (engine/cpu_forward.py), where the PyTorch path dispatches every operation of every layer from
    Python; steps with a longer prompt chunk, or one whose rows x context exceed 64 x 128, run
    the PyTorch forward.
    The same model to float rounding (not bit for bit); in a step of up to 4 rows a row's result
    does not depend on the others. `compile_decode`, where on, takes precedence. Ignored on CUDA."""
    cpu_draft_kernel: bool = True
    """Speculative decoding on CPU, fp32: grow each step's draft trees, and catch the draft up over
    the tokens the last verification accepted, in one C++ call each (engine/spec/grow.py), where
    the PyTorch path dispatches every operation of the draft from Python. Takes precedence over
    `draft_compile`. Greedy and coupled-sampled output is unchanged (the draft only proposes).
    Ignored on CUDA."""
    compile_decode: bool = False
    """Compile the forward of all-decode steps with torch.compile (inductor), one static shape per
    batch bucket, at start-up (engine/compiled.py; stats report the seconds). Off by default: on a
    2-core CPU it made no measurable difference, against 40-90 s of compiling (docs/benchmarks.md)."""
    cuda_graphs: bool = True
    """CUDA: capture the forward of all-decode steps in CUDA graphs, one per batch bucket, at
    start-up, and, with a draft, its steps (catch-up and tree growth, engine/spec/grow.py), one graph
    per shape the first time it is needed; larger batches run eager. Ignored on CPU."""
    column_major_weights: bool = True
    """CPU: store the model's (and draft's) wide weight matrices, those with at least as many outputs
    as inputs, column-major, in place: same values and shapes; batch-1 decode 1.27-1.34x faster on
    the CPU measured (engine/weight_layout.py, docs/benchmarks.md). A colocated trainer shares the
    weights, so it sees the layout too. Ignored on CUDA."""
    split_small_matmuls: bool = True
    """CPU with two or more torch threads: a product of at most 4 rows (a decode step of a few
    sequences) that `cpu_linear_kernel` does not take runs as one slice of the weight per thread
    (engine/weight_layout.py), where MKL would use one thread. Same parameters, bit-identical
    results. Ignored on CUDA."""
    cpu_linear_kernel: bool = True
    """CPU, fp32: a product of at most 4 rows runs a C++ kernel that spreads the outputs over the
    threads, each streaming its share of the weight (kernels/cpu_ops.py, built with
    `cpu_decode_kernel`'s library); results agree with `F.linear` to float rounding and a row's do
    not depend on the batch. Falls back to `split_small_matmuls` where it cannot be built. Ignored
    on CUDA."""
    cpu_decode_kernel: bool = True
    """CPU, fp32, dense KV: decode rows, and the rows of draft trees under verification, attend with
    C++ kernels that read the cache blocks in place (kernels/cpu_ops.py; built with the system
    compiler on first use, 20-30 s, then cached), where the PyTorch path gathers each sequence's
    context into a copy first. Falls back to that path, with a warning, where it cannot be built.
    Ignored on CUDA."""
    max_decode_bucket: int = 256
    """Largest padded batch of compiled or captured decode (buckets 1, 2, 4, ... up to it and
    max_num_seqs)."""
    cuda_graph_memory: ByteSize = 1 << 30
    """Device memory the decode graphs' shared pool may take, and the draft's trees' pool too;
    buckets past it run eager."""

    def __post_init__(self):
        if isinstance(self.kv_cache_memory, str):  # "64MiB" from Python as from a recipe or a flag
            self.kv_cache_memory = parse_size(self.kv_cache_memory)
        if isinstance(self.cuda_graph_memory, str):
            self.cuda_graph_memory = parse_size(self.cuda_graph_memory)
        for f in fields(self):  # a switch is true or false: "no" or "off" from Python read as on
            if f.type in (bool, "bool") and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"EngineConfig.{f.name} must be true or false, got {getattr(self, f.name)!r}")
        positive_ints(self, ("max_num_seqs", "max_num_batched_tokens", "block_size", "draft_top_k", "draft_depth",
                             "draft_tokens", "max_decode_bucket", "draft_explore_every"), "EngineConfig.")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise ValueError(f"EngineConfig.max_model_len must be an integer >= 2, got {self.max_model_len!r}")
        if self.kv_cache_memory is not None and (not isinstance(self.kv_cache_memory, int) or self.kv_cache_memory <= 0):
            raise ValueError(f"EngineConfig.kv_cache_memory must be a positive number of bytes, got {self.kv_cache_memory!r}")
        from reasonrl.engine.eviction import EvictionConfig

        EvictionConfig(0 if self.evict_budget is None else self.evict_budget, self.evict_window)  # validates
        if self.evict_budget is not None:
            if self.draft is not None:
                raise ValueError("EngineConfig.evict_budget cannot be combined with speculative decoding (draft): "
                                 "draft trees address the cache by position")
        if self.draft_max_batch is not None and (not isinstance(self.draft_max_batch, int)
                                                 or isinstance(self.draft_max_batch, bool) or self.draft_max_batch < 0):
            raise ValueError(f"EngineConfig.draft_max_batch must be a non-negative integer, got {self.draft_max_batch!r}")
        if not isinstance(self.draft_margin, (int, float)) or not 0 <= self.draft_margin < 1:
            raise ValueError(f"EngineConfig.draft_margin must be in [0, 1), got {self.draft_margin!r}")
        if self.latent_steps is not None and (not isinstance(self.latent_steps, int) or self.latent_steps < 1):
            raise ValueError(f"EngineConfig.latent_steps must be a positive integer or None, got {self.latent_steps!r}")
        if self.latent_exit not in (None, "steps", "end_token"):
            raise ValueError("EngineConfig.latent_exit must be 'steps', 'end_token' or None, got "
                             f"{self.latent_exit!r}")
        if self.latent_feedback not in (None, "state", "image_token"):
            raise ValueError("EngineConfig.latent_feedback must be 'state', 'image_token' or None, got "
                             f"{self.latent_feedback!r}")
        if self.draft_sampling not in ("coupled", "residual"):
            raise ValueError(f"EngineConfig.draft_sampling must be 'coupled' or 'residual', got {self.draft_sampling!r}")
        if not isinstance(self.kv_options, dict):
            raise ValueError(f"EngineConfig.kv_options must be a mapping of format parameters, got {self.kv_options!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"EngineConfig.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")

    def for_checkpoint(self, path: str | Path) -> EngineConfig:
        """This config on the checkpoint at `path`: a TaDA profile given by name (`profile: avg4`) is
        that checkpoint's `kv_profiles/avg4.json` (a path is kept as it is)."""
        profile = self.kv_options.get("profile")
        if not isinstance(profile, str):
            return self
        from reasonrl.engine.kv.calibrate import resolve_profile

        return replace(self, kv_options={**self.kv_options, "profile": resolve_profile(path, profile)})

    @classmethod
    def from_kwargs(cls, **kwargs) -> EngineConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"unknown engine option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return cls(**kwargs)
