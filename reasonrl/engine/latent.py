"""Latent visual reasoning in the engine: LVR's latent mode (Li et al., arXiv 2509.24251).

Once a sequence's last token is `start_id` (`<|lvr_start|>`), it is in latent mode: the next
positions take no sampled token; each one's input embedding is the final hidden state the
previous position produced (the model's last-norm output, what `compute_logits` reads and what
LVR's SFT regresses onto the region's visual tokens), and its token id is the placeholder
`latent_id` (`<|lvr|>`), as in LVR's training format (times `scale`: see LatentConfig). Latent mode ends with `end_id`
(`<|lvr_end|>`), after which the sequence samples as usual:

- exit "steps" (LVR's default and most stable strategy): after `steps` latents, `end_id` is forced;
- exit "end_token": the model leaves when the token sampled from a latent position's logits is
  `end_id` (LVR's strategy (i)), and at the latest after `steps` latents. The token sampled right
  after `start_id` counts too (an end there: a span of no latents), so the model must have been
  trained to predict `latent_id` while a span goes on (LVR SFT with exit "end_token",
  vision/lvr/sft.py; LVR's CE leaves those targets out, and a model trained so leaves at once).
  A checkpoint trained for it records `lvr_latent_exit` (`EXIT_KEY`).

A forced token (each placeholder, and `end_id` forced at the quota) is not sampled: its log-prob
is reported as 0.0. LVR masks the whole `<|lvr_start|>` .. `<|lvr_end|>` span out of the policy
loss, so these values are never trained on.

How it runs in the engine:

- each latent is kept on its sequence (`LatentTrack`) with its index in the output, and is
  reported with the output (`CompletionOutput.latents`, a `Latents`), so training can replay it;
- every step, the rows of latent positions among the scheduled tokens take their recorded vector
  as input embedding (`step_inputs`, through the model's row-override arguments, as images do);
  this is what makes a decode batch mixing latent and ordinary sequences, recompute after
  preemption and re-prefill after resume (`add_request(..., output_latents=...)`) exact;
- the prefix cache keys a latent position by a digest of its vector (`Sequence.content_keys`), so
  a block is shared only when its latents are equal.

Departures from LVR's code: no learned `lvr_latent_end_emb` exit (strategy (ii), which collapsed in
the paper); spans inside a prompt are ordinary tokens (a prompt may end with `start_id`, then the
output begins in latent mode); the placeholder's id is kept in the token ids (LVR's rollout keeps
only the hidden states); the state fed back may be scaled (`LatentConfig.scale`, a checkpoint's
`lvr_latent_scale`: a final RMS norm cannot reach visual tokens of another scale; vision/lvr/sft.py).
`EngineConfig.latent_steps` turns the mode on from a checkpoint's tokenizer. Speculative decoding
and token eviction do not take latent mode.

Feedback "image_token" (`LatentConfig.feedback`, not in the paper; a checkpoint trained for it records
`lvr_latent_feedback`): the latent fed back is not the state itself but the merged image token of the
request's prompt nearest to it by cosine. A latent is then always a real visual token, the kind the
model was teacher-forced on, so a model that points at the right region reads at inference exactly
what it read in training (with "state" it reads its imperfect reconstruction: exposure bias;
vision/lvr/sft.py's pointer loss trains the choice). A request without an image is fed its state.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Literal

import torch

from reasonrl.engine.sequence import Sequence


SCALE_KEY = "lvr_latent_scale"  # config.json key of a checkpoint's LatentConfig.scale
FEEDBACK_KEY = "lvr_latent_feedback"  # config.json key of a checkpoint's LatentConfig.feedback
FEEDBACKS = ("state", "image_token")
EXIT_KEY = "lvr_latent_exit"  # config.json key of a checkpoint's LatentConfig.exit
EXITS = ("steps", "end_token")


@dataclass
class LatentConfig:
    start_id: int
    """Token that opens latent mode (LVR's `<|lvr_start|>`)."""
    latent_id: int
    """Placeholder id each latent position carries in the token ids (LVR's `<|lvr|>`)."""
    end_id: int
    """Token that closes latent mode (LVR's `<|lvr_end|>`)."""
    steps: int = 8
    """Latents per span: exactly this many with exit "steps", at most with "end_token" (LVR: 8)."""
    exit: Literal["steps", "end_token"] = "steps"
    """"steps": a fixed quota; "end_token": leave when end_id is sampled at a latent position."""
    scale: float = 1.0
    """The latent fed back is scale x the final hidden state; a checkpoint trained by LVR SFT records
    it as `lvr_latent_scale` in config.json (vision/lvr/sft.py: the region tokens' scale over the
    final norm's)."""
    feedback: Literal["state", "image_token"] = "state"
    """What a latent position is fed: "state" (scale x the final hidden state, LVR) or "image_token"
    (the prompt's merged image token nearest to it by cosine; module docstring)."""

    def __post_init__(self):
        ids = (self.start_id, self.latent_id, self.end_id)
        if any(not isinstance(i, int) or i < 0 for i in ids) or len(set(ids)) != 3:
            raise ValueError(f"LatentConfig: start_id, latent_id and end_id must be three different token ids, got {ids}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"LatentConfig.steps must be a positive integer, got {self.steps!r}")
        if self.exit not in EXITS:
            raise ValueError(f"LatentConfig.exit must be one of {', '.join(EXITS)}, got {self.exit!r}")
        if not self.scale > 0:
            raise ValueError(f"LatentConfig.scale must be > 0, got {self.scale!r}")
        if self.feedback not in FEEDBACKS:
            raise ValueError(f"LatentConfig.feedback must be one of {', '.join(FEEDBACKS)}, got {self.feedback!r}")

    @classmethod
    def from_tokenizer(cls, tokenizer, start: str = "<|lvr_start|>", latent: str = "<|lvr|>",
                       end: str = "<|lvr_end|>", **options) -> LatentConfig:
        """The ids of the three special tokens in `tokenizer` (a `Tokenizer`); ValueError naming a missing one."""
        ids = {name: tokenizer.tok.token_to_id(name) for name in (start, latent, end)}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"the tokenizer has no token {', '.join(missing)}; add LVR's special tokens to it")
        return cls(ids[start], ids[latent], ids[end], **options)

    @classmethod
    def for_model(cls, model, tokenizer, **options) -> LatentConfig:
        """`from_tokenizer`, with the latent scale, feedback and exit the checkpoint records (1.0, "state"
        and "steps" when none); an option given as None takes the checkpoint's."""
        raw = getattr(getattr(model, "vlm_config", None), "raw", None) or {}
        recorded = {"scale": float(raw.get(SCALE_KEY, 1.0)), "feedback": raw.get(FEEDBACK_KEY, "state"),
                    "exit": raw.get(EXIT_KEY, "steps")}
        return cls.from_tokenizer(tokenizer, **{**recorded, **{k: v for k, v in options.items() if v is not None}})


@dataclass
class Latents:
    """A sample's latents: `vectors[k]` is the input embedding at output token `positions[k]`."""

    positions: list[int]  # indices into the output's token ids, each holding latent_id
    vectors: torch.Tensor  # (K, hidden) float32 on the CPU


@dataclass
class LatentTrack:
    """One sequence's latents, and how many its open span holds (None: not in latent mode)."""

    positions: list[int] = field(default_factory=list)  # output indices, ascending
    vectors: list[torch.Tensor] = field(default_factory=list)  # (hidden,) each, model device and dtype
    open: int | None = None
    hidden_size: int = 0

    def output(self) -> Latents:
        vectors = torch.stack(self.vectors).float().cpu() if self.vectors else torch.zeros(0, self.hidden_size)
        return Latents(list(self.positions), vectors)


class LatentReasoning:
    def __init__(self, config: LatentConfig, model, images=None):
        """`images`: the engine's `Images` (engine/images.py), which feedback "image_token" reads."""
        if getattr(model, "vlm_config", None) is None:
            raise ValueError("latent mode needs a vision-language model (Qwen2.5-VL), whose forward takes "
                             "input-embedding rows (image_embeds, image_rows)")
        if config.feedback == "image_token" and images is None:
            raise ValueError("latent feedback image_token needs the engine's images (engine/images.py)")
        self.config, self.model, self.images = config, model, images
        self.hidden_size = model.config.hidden_size

    # ---- admission ---------------------------------------------------------------------------
    def admit(self, seq: Sequence, latents: Latents | None) -> None:
        """Give `seq` its track: the latents of a resumed output (checked against its tokens), and
        whether it is in latent mode now. ValueError naming the mismatch."""
        cfg, where = self.config, f"request {seq.request_id!r}"
        track = LatentTrack(open=0 if seq.prompt_ids and seq.prompt_ids[-1] == cfg.start_id else None,
                            hidden_size=self.hidden_size)
        for i, token in enumerate(seq.output_ids):
            track.open = self._scan(track, i, token, where)
        given = latents or Latents([], torch.zeros(0, self.hidden_size))
        if list(given.positions) != track.positions:
            raise ValueError(f"{where}: output_latents positions {list(given.positions)} do not match the latent "
                             f"positions of output_ids {track.positions}")
        if track.positions and tuple(given.vectors.shape) != (len(track.positions), self.hidden_size):
            raise ValueError(f"{where}: output_latents vectors must be ({len(track.positions)}, {self.hidden_size}), "
                             f"got {tuple(given.vectors.shape)}")
        track.vectors = [v.to(self.model.device, self.model.dtype) for v in given.vectors] if track.positions else []
        seq.latent = track
        for p, v in zip(track.positions, track.vectors):
            self._key(seq, p, v)

    def _scan(self, track: LatentTrack, i: int, token: int, where: str) -> int | None:
        """The open count after output token i (a resumed output replayed through the rules)."""
        cfg = self.config
        if track.open is None:
            return 0 if token == cfg.start_id else None
        if token == cfg.end_id:
            return None
        if token != cfg.latent_id or track.open >= cfg.steps:
            raise ValueError(f"{where}: output_ids[{i}] = {token} inside a latent span, where only "
                             f"{cfg.latent_id} (at most {cfg.steps}) and then {cfg.end_id} can be")
        track.positions.append(i)
        return track.open + 1

    # ---- a step ------------------------------------------------------------------------------
    def step_inputs(self, scheduled: list[tuple[Sequence, int]], query_start: list[int], model_inputs: dict) -> dict:
        """The step's row overrides: the scheduled latent positions' vectors, added to the images'."""
        rows, embeds = [], []
        for b, (seq, n) in enumerate(scheduled):
            track, first = seq.latent, len(seq.prompt_ids)
            if track is None or not track.positions:
                continue
            lo, hi = seq.num_computed - first, seq.num_computed + n - first  # output indices of the new tokens
            for k in range(bisect_left(track.positions, lo), bisect_left(track.positions, hi)):
                rows.append(query_start[b] + track.positions[k] - lo)
                embeds.append(track.vectors[k])
        if not rows:
            return model_inputs
        rows_t = torch.tensor(rows, dtype=torch.long, device=self.model.device)
        embeds_t = torch.stack(embeds)
        if "image_embeds" in model_inputs:
            rows_t = torch.cat([model_inputs["image_rows"], rows_t])
            embeds_t = torch.cat([model_inputs["image_embeds"].to(embeds_t.dtype), embeds_t])
        return {**model_inputs, "image_embeds": embeds_t, "image_rows": rows_t}

    def intercept(self, seq: Sequence, sampled, result):
        """What `seq` appends instead of the token `sampled` (a `Sampled`) of the step `result` (a
        `StepResult`): a latent placeholder (its vector, from the final hidden state of the sequence's
        last row (`feed`), recorded), a forced end, or `sampled` itself."""
        cfg, track = self.config, seq.latent
        if track.open is None:
            if sampled.token == cfg.start_id:
                track.open = 0
            return sampled
        top = {} if sampled.top is not None else None
        if track.open >= cfg.steps or (cfg.exit == "end_token" and sampled.token == cfg.end_id):
            forced = track.open >= cfg.steps
            track.open = None
            return type(sampled)(cfg.end_id, 0.0, top) if forced else sampled
        position, batch = len(seq.output_ids), result.batch
        track.positions.append(position)
        track.vectors.append(self.feed(seq, result.hidden[batch.sample_rows[batch.sample_seqs.index(seq)]].detach()))
        track.open += 1
        self._key(seq, position, track.vectors[-1])
        return type(sampled)(cfg.latent_id, 0.0, top)

    def feed(self, seq: Sequence, hidden: torch.Tensor) -> torch.Tensor:
        """The latent a final hidden state (hidden,) becomes: scale x it, or with feedback "image_token"
        the prompt's image token nearest to that (a prompt without an image: scale x it)."""
        state = hidden * self.config.scale
        if self.config.feedback == "state" or seq.mm is None:
            return state
        return nearest_token(state[None], self.images.embeds_of(seq))[0].to(state.dtype)

    def _key(self, seq: Sequence, position: int, vector: torch.Tensor) -> None:
        """Prefix-cache key of the latent's token: a digest of its vector (a new list: the samples
        of one request share the images' list)."""
        at = len(seq.prompt_ids) + position
        digest = hashlib.blake2b(vector.float().cpu().numpy().tobytes(), digest_size=16).digest()
        seq.content_keys = seq.content_keys + [(at, at + 1, digest)]


def nearest_token(states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(K, hidden): for each state (K, hidden), the row of `tokens` (M, hidden) nearest by cosine (the first on ties)."""
    scores = torch.nn.functional.normalize(states.float(), dim=-1) @ torch.nn.functional.normalize(tokens.float(), dim=-1).T
    return tokens[scores.argmax(-1)]
