"""Reproduce the demo's starting policy: `python -m reasonrl.demo.policy --out DIR`.

A 0.8M-parameter Qwen2-architecture model with its own byte-level BPE tokenizer, fine-tuned
(`reasonrl sft`'s training loop) on the `sums` task's deliberately imperfect traces: it works
the sums out on short problems, but on long ones it often skips the work and boxes a guess, as
its traces did. RL has that to fix. The checkpoint shipped in `reasonrl/demo/policy/` was made by
this script with its defaults (about 8 minutes on a 2-core CPU).

The size flags make other targets of the same task: `reasonrl bench spec --model` on a target whose
weights do not fit the CPU's cache (docs/benchmarks.md, "A target whose weights do not fit the
cache") is made with `--steps 500 --lr 1e-3 --hidden-size 384 --num-layers 8 --num-heads 12
--num-kv-heads 4 --intermediate-size 1024`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from reasonrl.envs.sums import SumsEnvironment
from reasonrl.models import load_model
from reasonrl.models.loader import save_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer
from reasonrl.rl.sft import SFTConfig, sft_example, train_sft

SHIPPED = Path(__file__).parent / "policy"
ARCH = dict(family="qwen2", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384,
            max_position_embeddings=512)
SIZES = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
"""The entries of ARCH the script's flags override."""


def make_policy(out: str | Path, steps: int = 2000, num_traces: int = 3000, seed: int = 0, log=None,
                lr: float = 3e-3, **arch) -> Path:
    """`arch`: Qwen2 sizes overriding the demo's (ARCH)."""
    env = SumsEnvironment()
    rows = env.traces(num_traces, seed=seed)
    corpus = [m["content"] for r in rows[:500] for m in r["prompt"]] + [r["response"] for r in rows[:2000]]
    tok = make_tokenizer(corpus, vocab_size=320)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(make_checkpoint(Path(tmp) / "base", tokenizer=tok, seed=seed, **{**ARCH, **arch}))
    cfg = SFTConfig(epochs=steps * 32 / len(rows), lr=lr, samples_per_step=32, warmup_steps=10, seed=seed)
    train_sft(model, [sft_example(r["prompt"], r["response"], tok) for r in rows], cfg, log)
    return save_model(model, out, tok)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(SHIPPED))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: the demo's)")
    for name in SIZES:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=ARCH[name], help=f"default: {ARCH[name]}")
    args = p.parse_args(argv)
    arch = {k: getattr(args, k) for k in SIZES}

    def log(step, steps, loss, seconds):
        if step % 50 == 0 or step == steps:
            print(f"sft {step}/{steps} loss {loss:.3f} ({seconds:.0f}s)", file=sys.stderr, flush=True)

    print(f"saved {make_policy(args.out, args.steps, seed=args.seed, log=log, lr=args.lr, **arch)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
