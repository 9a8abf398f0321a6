"""Where a judge's alignment score comes from: the image, or the notes it wrote before it.

    python recipes/imagedoctor/score_sources.py runs/imagedoctor/sft/model

The judge writes its held-out judgements (greedy, the bench's 150 images, seed 0); each judgement's
think block is read for its misalignment notes (sentences "The <object> is <colour>.", "... is drawn
as a <shape>.", "... is missing."; artifact notes excluded), which imply an alignment of 1 - notes /
objects in the caption, as the training targets are built (reward/imagedoctor/data.py). Printed: the
Pearson correlation of the written alignment score with the truth and with the alignment its own
notes imply, and of that implied alignment with the truth (docs/benchmarks.md, ImageDoctor).
"""

from __future__ import annotations

import argparse
import re

from reasonrl.models.loader import MASTER_DTYPE
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.imagedoctor.build import judge_items
from reasonrl.reward.imagedoctor.evaluate import JUDGEMENT_TOKENS, generate_judgements, pearson
from reasonrl.reward.imagedoctor.export import DoctorDataConfig, judge_examples
from reasonrl.reward.imagedoctor.judgement import parse_judgement
from reasonrl.reward.imagedoctor.model import load_doctor

NOTE = re.compile(r"The [^.]*? (?:is missing|is drawn as an? \w+|is \w+)\.")


def implied_alignment(text: str, objects: int) -> float | None:
    """1 - misalignment notes / objects from the think block, or None without one."""
    think = re.search(r"<think>(.*?)</think>", text, re.S)
    if think is None:
        return None
    return max(0.0, 1.0 - len(NOTE.findall(think.group(1))) / objects)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("judge", help="a saved judge (reasonrl bench imagedoctor's OUT/sft/model)")
    parser.add_argument("--n", type=int, default=150, help="held-out images (the bench's eval stream)")
    args = parser.parse_args()
    doctor, tok = load_doctor(args.judge, dtype=MASTER_DTYPE), Tokenizer.from_dir(args.judge)
    examples = judge_examples(DoctorDataConfig(out="unused", n=args.n, split="eval"))
    items = judge_items(examples, tok, doctor.backbone)
    texts = [tok.decode(r) for r in generate_judgements(doctor, tok, [it.prompt for it in items], JUDGEMENT_TOKENS)]
    rows = []
    for ex, text in zip(examples, texts):
        score, implied = parse_judgement(text).scores["alignment"], implied_alignment(text, len(ex.prompt.objects))
        if score is not None and implied is not None:
            rows.append((score, implied, ex.scores["alignment"], implied_alignment(ex.judgement(), len(ex.prompt.objects))))
    if not rows:
        raise SystemExit(f"{args.judge}: no judgement has both a think block and an alignment score (a cold-start "
                         "judge writes the scores alone): nothing to compare")
    written, implied, truth, from_true_notes = (list(col) for col in zip(*rows))
    print(f"{args.judge}: {len(rows)} of {len(texts)} judgements with a think block and an alignment score")
    print(f"the targets' own notes imply the true alignment: r = {pearson(from_true_notes, truth):.3f}")
    print(f"written score vs truth: r = {pearson(written, truth):.3f}")
    print(f"written score vs its own notes: r = {pearson(written, implied):.3f}")
    print(f"its notes vs truth: r = {pearson(implied, truth):.3f}")
    print(f"notes per judgement: {sum(a < 1 for a in implied)} of {len(rows)} name a misalignment "
          f"(the truth: {sum(a < 1 for a in truth)})")


if __name__ == "__main__":
    main()
