"""`reasonrl train-image ...` (the image models, each a resumable run) and `reasonrl generate-image`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from reasonrl.cli import Command
from reasonrl.cli.flags import add_flags, values
from reasonrl.config import to_dict
from reasonrl.progress import EVERY, check_interval

TRAINERS = {
    "tokenizer": Command("binary (or VQ) image tokenizer on shapes-world images", "reasonrl.cli.image:tokenizer"),
    "text": Command("the small language model that conditions the generators", "reasonrl.cli.image:text"),
    "generator": Command("AR or Bernoulli-diffusion generator over a tokenizer's bits", "reasonrl.cli.image:generator"),
    "smarli": Command("SMARLI-mini layout-to-image (structured mask or an ablation)", "reasonrl.cli.image:smarli"),
    "realism": Command("realism classifier (the quality reward of layout GRPO)", "reasonrl.cli.image:realism"),
    "layout-grpo": Command("layout GRPO of a SMARLI model", "reasonrl.cli.image:layout_grpo"),
}


def _run_flags(parser) -> None:
    from reasonrl.rl.train import RunControl
    from reasonrl.vision.gen.run import RunSettings

    add_flags(parser, RunSettings, title="run")
    add_flags(parser, RunControl, title="run directory")


def _launch(args, job, config: dict) -> int:
    from reasonrl.rl.train import RunControl
    from reasonrl.vision.gen.run import RunSettings, run_job

    run = RunSettings(**values(args, RunSettings))
    return run_job(job, run, {"run": to_dict(run), **config}, RunControl(**values(args, RunControl)))


def _images(args, side: int):
    from reasonrl.vision.gen.images import ImageConfig

    return ImageConfig(**{**values(args, ImageConfig), "side": side})


def tokenizer(parser: argparse.ArgumentParser):
    from reasonrl.vision.binary.tokenizer import TokenizerConfig
    from reasonrl.vision.binary.train_tokenizer import TokenizerTrainConfig
    from reasonrl.vision.gen.images import ImageConfig

    _run_flags(parser)
    add_flags(parser, TokenizerConfig, title="model (TokenizerConfig)")
    add_flags(parser, TokenizerTrainConfig, title="training")
    add_flags(parser, ImageConfig, exclude=("side",), title="images (ImageConfig; side = image_size)")

    def run(args) -> int:
        from reasonrl.vision.binary.train_tokenizer import TokenizerJob

        model = TokenizerConfig(**values(args, TokenizerConfig))
        train, images = TokenizerTrainConfig(**values(args, TokenizerTrainConfig)), _images(args, model.image_size)
        return _launch(args, TokenizerJob(model, train, images),
                       {"model": to_dict(model), "train": to_dict(train), "images": to_dict(images)})

    return run


def text(parser: argparse.ArgumentParser):
    from reasonrl.vision.binary.conditioner import TextTrainConfig
    from reasonrl.vision.gen.images import ImageConfig

    _run_flags(parser)
    add_flags(parser, TextTrainConfig, title="training")
    add_flags(parser, ImageConfig, title="scenes of the prompts (ImageConfig)")

    def run(args) -> int:
        from reasonrl.vision.binary.conditioner import TextJob

        train, images = TextTrainConfig(**values(args, TextTrainConfig)), ImageConfig(**values(args, ImageConfig))
        return _launch(args, TextJob(train, images), {"train": to_dict(train), "images": to_dict(images)})

    return run


def generator(parser: argparse.ArgumentParser):
    from reasonrl.vision.binary.train_generator import GeneratorTrainConfig
    from reasonrl.vision.gen.images import ImageConfig

    _run_flags(parser)
    add_flags(parser, GeneratorTrainConfig, title="training")
    add_flags(parser, ImageConfig, title="images (ImageConfig)")

    def run(args) -> int:
        from reasonrl.vision.binary.train_generator import GeneratorJob

        train, images = GeneratorTrainConfig(**values(args, GeneratorTrainConfig)), ImageConfig(**values(args, ImageConfig))
        return _launch(args, GeneratorJob(train, images), {"train": to_dict(train), "images": to_dict(images)})

    return run


def smarli(parser: argparse.ArgumentParser):
    from reasonrl.vision.smarli.train import SmarliTrainConfig

    _run_flags(parser)
    add_flags(parser, SmarliTrainConfig, title="training")

    def run(args) -> int:
        from reasonrl.vision.smarli.train import SmarliJob

        train = SmarliTrainConfig(**values(args, SmarliTrainConfig))
        return _launch(args, SmarliJob(train), {"train": to_dict(train)})

    return run


def realism(parser: argparse.ArgumentParser):
    from reasonrl.vision.smarli.realism import RealismTrainConfig

    _run_flags(parser)
    add_flags(parser, RealismTrainConfig, title="training")

    def run(args) -> int:
        from reasonrl.vision.smarli.realism import RealismJob

        train = RealismTrainConfig(**values(args, RealismTrainConfig))
        return _launch(args, RealismJob(train), {"train": to_dict(train)})

    return run


@dataclass
class PolicyLoss:
    loss: str = "grpo"
    """Policy loss, a key of reasonrl's loss registry (grpo, dapo, gspo, gspo_token)."""


def layout_grpo(parser: argparse.ArgumentParser):
    from reasonrl.rl.advantages import AdvantageConfig
    from reasonrl.rl.config import OptimSection
    from reasonrl.rl.losses import LossConfig
    from reasonrl.vision.smarli.grpo import LayoutGRPOConfig

    _run_flags(parser)
    add_flags(parser, LayoutGRPOConfig, title="layout GRPO")
    add_flags(parser, PolicyLoss, title="loss")
    add_flags(parser, LossConfig, exclude=("name", "off_policy", "tis_cap", "decoupled_cap"), title="loss (LossConfig)")
    add_flags(parser, AdvantageConfig, exclude=("name",), title="advantage")
    add_flags(parser, OptimSection, exclude=("max_tokens_per_microbatch",), title="optimizer",
              defaults={"lr": 1e-4})

    def run(args) -> int:
        from reasonrl.vision.smarli.grpo import LayoutGRPOJob

        grpo = LayoutGRPOConfig(**values(args, LayoutGRPOConfig))
        loss = LossConfig(name=PolicyLoss(**values(args, PolicyLoss)).loss, **values(args, LossConfig))
        adv, optim = AdvantageConfig(**values(args, AdvantageConfig)), OptimSection(**values(args, OptimSection))
        return _launch(args, LayoutGRPOJob(grpo, loss, adv, optim),
                       {"grpo": to_dict(grpo), "loss": to_dict(loss), "advantage": to_dict(adv), "optim": to_dict(optim)})

    return run


@dataclass
class GenerateImageJob:
    prompts: list[str] | None = None
    """Prompts (default: read one per line from stdin), e.g. "a large red circle at the top left"."""
    model: str = ""
    """A generator directory (`reasonrl train-image generator`); default: the shipped diffusion model."""
    out: str = "images"
    """Directory for the PNGs (NNNN.png, in prompt order) and prompts.jsonl."""
    per_prompt: int = 1
    """Images per prompt."""
    grid: bool = False
    """Also write grid.png, all images in one picture (upscaled 2x)."""
    overwrite: bool = False
    """Delete an earlier run's NNNN.png, grid.png and prompts.jsonl in `out` first (without it they are refused)."""
    progress_every: float = EVERY
    """Seconds between progress lines on stderr (`generate-image: 64/500 images done (12.3 s)`, after each
    batch; none for a job quicker than that; 0: after every batch, inf: none)."""

    def __post_init__(self):
        if not isinstance(self.per_prompt, int) or self.per_prompt < 1:
            raise ValueError(f"per_prompt must be >= 1, got {self.per_prompt!r}")
        self.progress_every = check_interval(self.progress_every)


def generate_image(parser: argparse.ArgumentParser):
    from reasonrl.vision.binary.sample import SampleConfig

    add_flags(parser, GenerateImageJob, title="job")
    add_flags(parser, SampleConfig, title="sampling (SampleConfig)")

    def run(args) -> int:
        from reasonrl.cli.engine import read_prompts
        from reasonrl.vision.binary.generate_images import generate_images

        job = GenerateImageJob(**values(args, GenerateImageJob))
        prompts = [p.strip() for p in read_prompts(job.prompts)]
        if not prompts:
            raise ValueError("no prompts: give them as --prompts or one per line on stdin")
        written = generate_images(replace(job, prompts=prompts), SampleConfig(**values(args, SampleConfig)),
                                  progress=job.progress_every)
        print(f"wrote {len(written)} images to {Path(job.out)}")
        return 0

    return run


