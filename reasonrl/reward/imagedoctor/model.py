"""`ImageDoctor`: a Qwen2.5-VL judge that scores an image on four aspects and emits flaw heatmaps.

Paper: ImageDoctor (Guo et al., arXiv 2510.01010). The model writes look-think-predict text
(`format.py`); its answer's "Misalignment Locations" and "Artifact Locations" fields hold two
task tokens. The last-layer hidden state of the position that *emits* each task token (the one
before it) goes through `text_hidden_fcs` (MLP h -> h -> C), the merged visual tokens of the image
through `image_hidden_fcs` (same shape); the prompt encoder and the mask decoder (`decoder.py`:
two-way transformer with a learned mask token, four stride-2 transposed convolutions, the mask
token's hypernetwork dotted with every pixel) turn them into one map per task token, then a
sigmoid. Training adds `heatmap_weight` x (MSE of the misalignment map + MSE of the artifact map)
to the LM cross-entropy (`heatmap_loss`).

Checkpoints are Hugging Face directories of the backbone whose safetensors also hold the head
under ImageDoctor's names (`text_hidden_fcs.0.{0,2}`, `image_hidden_fcs.0.{0,2}`,
`prompt_encoder.*`, `heatmap.*`), and whose config.json carries `misalignment_token_id`,
`artifact_token_id` and `heatmap_weight`, as the public checkpoint's does.

Departures from ImageDoctor's code:
- any image size: the merged-token grid is the image's own (ImageDoctor reshapes to 18 x 18, a
  504-px image) and the positional encoding is computed for it; the 16x map is resized
  (bilinearly, before the sigmoid) to the preprocessed image's pixel size unless `native=True`
  (ImageDoctor's 288 x 288 at 504 px);
- a batch of samples, one judged image each (the first of the prompt; ImageDoctor runs one);
- a sample whose text lacks a task token gets an all-zero map for it and `found` False (model
  output is untrusted; ImageDoctor's code assumes both tokens are present);
- the head's width and layer sizes are configurable (`HeatmapConfig`, saved as
  `imagedoctor_heatmap` in config.json) so that tiny models can be tested; the defaults are
  ImageDoctor's, and a config.json without that key gets them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.config import ConfigError, build, coerce
from reasonrl.models.loader import CheckpointError, empty_model, load_state, read_tensors, save_model
from reasonrl.models.qwen2_5_vl.model import Qwen2_5_VL
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.reward.imagedoctor.decoder import HeatmapConfig, MaskDecoder, PromptEncoder

HEAD_PREFIXES = ("text_hidden_fcs.", "image_hidden_fcs.", "prompt_encoder.", "heatmap.", "task_queries")
TASKS = ("misalignment", "artifact")  # the order of the maps


@dataclass
class DoctorConfig:
    misalignment_token_id: int
    """Task token whose emitting hidden state prompts the misalignment map."""
    artifact_token_id: int
    """Task token whose emitting hidden state prompts the artifact map."""
    heatmap_weight: float = 1.0
    """Weight of each heatmap MSE beside the LM cross-entropy."""
    heatmap: HeatmapConfig = field(default_factory=HeatmapConfig)
    """Sizes of the heatmap head (ImageDoctor's by default)."""

    def __post_init__(self):
        ids = (self.misalignment_token_id, self.artifact_token_id)
        if any(not isinstance(i, int) or i < 0 for i in ids) or ids[0] == ids[1]:
            raise ValueError(f"DoctorConfig: the two task token ids must be different non-negative integers, got {ids}")
        if not self.heatmap_weight >= 0:
            raise ValueError(f"DoctorConfig.heatmap_weight must be >= 0, got {self.heatmap_weight!r}")


def projection(hidden: int, out: int) -> nn.ModuleList:
    """ImageDoctor's `*_hidden_fcs`: ModuleList([Linear(h, h), ReLU, Linear(h, C), Dropout(0)])."""
    return nn.ModuleList([nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out), nn.Dropout(0.0))])


@dataclass
class Heatmaps:
    maps: list[torch.Tensor]  # per sample (2, H, W) in [0, 1]: misalignment, artifact
    found: torch.Tensor  # (B, 2) bool: the sample's text held the task token


class ImageDoctor(nn.Module):
    variant = "task_tokens"  # saved with the checkpoint: which class `load_doctor` rebuilds

    def __init__(self, backbone: Qwen2_5_VL, cfg: DoctorConfig):
        super().__init__()
        if getattr(backbone, "vlm_config", None) is None:
            raise ValueError("ImageDoctor needs a Qwen2.5-VL backbone")
        self.backbone, self.cfg = backbone, cfg
        h, c = backbone.config.hidden_size, cfg.heatmap.dim
        self.text_hidden_fcs, self.image_hidden_fcs = projection(h, c), projection(h, c)
        self.prompt_encoder = PromptEncoder(c, cfg.heatmap.mask_in_chans)
        self.heatmap = MaskDecoder(cfg.heatmap)

    def head_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(HEAD_PREFIXES)}

    def forward(self, input_ids: torch.Tensor, prompts: list[MultimodalPrompt], native: bool = False):
        """input_ids (B, T) right-padded, row b beginning with prompts[b] (each with an image) ->
        (hidden (B, T, hidden), Heatmaps)."""
        if len(prompts) != input_ids.shape[0] or any(p is None or not p.num_images for p in prompts):
            raise ValueError("ImageDoctor needs one prompt with an image per row")
        embeds = self.backbone.encode_images(torch.cat([p.pixel_values for p in prompts]),
                                             torch.cat([p.image_grid_thw for p in prompts]))
        hidden = self.backbone.forward_padded(input_ids, prompts, embeds)
        return hidden, self.heatmaps(hidden, input_ids, prompts, embeds, native)

    def heatmaps(self, hidden: torch.Tensor, input_ids: torch.Tensor, prompts: list[MultimodalPrompt],
                 image_embeds: torch.Tensor, native: bool = False) -> Heatmaps:
        """The two maps of every row from its hidden states (B, T, hidden) and its images' merged
        tokens (`encode_images` of the rows' images, row after row)."""
        merge = self.backbone.vlm_config.vision.spatial_merge_size
        maps, found, start = [], [], 0
        for b, prompt in enumerate(prompts):
            grid = prompt.image_grid_thw
            _, gh, gw = (int(x) for x in grid[0])  # patches; the first image is the judged one
            tokens = image_embeds[start: start + (gh // merge) * (gw // merge)]
            start += int(grid.prod(-1).sum()) // merge ** 2
            rows = [emitting_row(input_ids[b], tok) for tok in (self.cfg.misalignment_token_id, self.cfg.artifact_token_id)]
            found.append([r is not None for r in rows])
            size = None if native else (gh * self.backbone.vlm_config.vision.patch_size,
                                        gw * self.backbone.vlm_config.vision.patch_size)
            maps.append(self._decode(hidden[b], rows, tokens, gh // merge, gw // merge, size))
        return Heatmaps(maps, torch.tensor(found, dtype=torch.bool))

    def _decode(self, hidden: torch.Tensor, rows: list[int | None], tokens: torch.Tensor, h: int, w: int,
                size: tuple[int, int] | None) -> torch.Tensor:
        """hidden (T, hidden), image tokens (h*w, hidden) -> (2, H, W) maps; zeros where rows[i] is None."""
        text = self.text_hidden_fcs[0](hidden[[r if r is not None else 0 for r in rows]])  # (2, C)
        image = self.image_hidden_fcs[0](tokens).transpose(0, 1).reshape(1, -1, h, w)  # (1, C, h, w)
        sparse, dense = self.prompt_encoder.encode(text, h, w)
        logits = self.heatmap(image.expand(2, -1, -1, -1), self.prompt_encoder.dense_pe(h, w), sparse, dense)
        if size is not None:
            logits = F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        present = torch.tensor([r is not None for r in rows], device=logits.device)[:, None, None]
        return torch.where(present, torch.sigmoid(logits), torch.zeros_like(logits))


def emitting_row(ids: torch.Tensor, token: int) -> int | None:
    """The position whose hidden state emits the first `token` of `ids` (T,): the one before it."""
    at = torch.nonzero(ids[1:] == token).flatten()
    return int(at[0]) if at.numel() else None


def at_size(m: torch.Tensor, size) -> torch.Tensor:
    """(2, h, w) maps at the preprocessed image's size, resampled (bilinear) to `size`, the image's
    own pixels where the true masks live (the processor resizes a side that is not a multiple of
    its patch: 100 -> 112)."""
    size = tuple(size)
    return m if tuple(m.shape[-2:]) == size else F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0]


def heatmap_loss(maps: Heatmaps, targets: list[torch.Tensor], weight: float) -> torch.Tensor:
    """weight x (MSE misalignment + MSE artifact), averaged over the samples; targets per sample (2, H, W)."""
    per = [((at_size(m, t.shape[-2:]) - t.to(m)) ** 2).mean(dim=(1, 2)).sum() for m, t in zip(maps.maps, targets, strict=True)]
    return weight * torch.stack(per).mean()


# ---- checkpoints --------------------------------------------------------------------------------

def save_doctor(doctor: ImageDoctor, path: str | Path, tokenizer=None) -> Path:
    path = save_model(doctor.backbone, path, tokenizer, extra_tensors=doctor.head_state())
    config = json.loads((path / "config.json").read_text())
    cfg = doctor.cfg
    config.update(misalignment_token_id=cfg.misalignment_token_id, artifact_token_id=cfg.artifact_token_id,
                  heatmap_weight=cfg.heatmap_weight, imagedoctor_heatmap=asdict(cfg.heatmap),
                  imagedoctor_variant=doctor.variant)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def doctor_config(config: dict, file: str | Path = "config.json") -> DoctorConfig:
    """The judge's settings from a checkpoint's config.json (`file`, named in errors); CheckpointError
    naming the file and the key that is missing or malformed."""
    missing = [k for k in ("misalignment_token_id", "artifact_token_id") if not isinstance(config.get(k), int)]
    if missing:
        raise CheckpointError(f"{file} lacks {', '.join(missing)}: not an ImageDoctor checkpoint")
    try:
        sizes = coerce("imagedoctor_heatmap", dict, config.get("imagedoctor_heatmap") or {})
        heatmap = build(HeatmapConfig, sizes, "imagedoctor_heatmap")
        weight = coerce("heatmap_weight", float, config.get("heatmap_weight", 1.0))
    except ConfigError as exc:  # its message starts with the key
        raise CheckpointError(f"{file}: {exc}") from None
    return DoctorConfig(config["misalignment_token_id"], config["artifact_token_id"], weight, heatmap)


VARIANTS = ("task_tokens", "learned_queries")


def variant_class(variant: str) -> type[ImageDoctor]:
    """The judge's class: the paper's (maps prompted by the task tokens' states), or the ablation's
    (build.py's NoTaskTokenDoctor, maps prompted by learned queries)."""
    if variant == "learned_queries":
        from reasonrl.reward.imagedoctor.build import NoTaskTokenDoctor

        return NoTaskTokenDoctor
    return ImageDoctor


def load_doctor(path: str | Path, device=None, dtype=None) -> ImageDoctor:
    """An ImageDoctor directory's model in eval mode; all or nothing, every head tensor checked."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path} (expected an ImageDoctor checkpoint directory)")
    config = json.loads((path / "config.json").read_text())
    cfg, variant = doctor_config(config, path / "config.json"), config.get("imagedoctor_variant", ImageDoctor.variant)
    if variant not in VARIANTS:
        raise CheckpointError(f"{path}: unknown imagedoctor_variant {variant!r}; known: {', '.join(VARIANTS)}")
    backbone = empty_model(path, device, dtype)
    tensors = read_tensors(path)
    doctor = variant_class(variant)(backbone, cfg).to(backbone.device, backbone.dtype)
    expected = {k: tuple(v.shape) for k, v in doctor.head_state().items()}
    head = {n: t for n, t in tensors if n.startswith(HEAD_PREFIXES)}
    wrong = sorted(set(head) ^ set(expected)) + sorted(n for n in set(head) & set(expected)
                                                       if tuple(head[n].shape) != expected[n])
    if wrong:
        raise CheckpointError(f"{path}: the heatmap head's tensors do not match its config, e.g. {wrong[:3]}")
    load_state(backbone, [(n, t) for n, t in tensors if not n.startswith(HEAD_PREFIXES)], path)
    doctor.load_state_dict({k: v.to(backbone.dtype) for k, v in head.items()}, strict=False)
    return doctor.eval()
