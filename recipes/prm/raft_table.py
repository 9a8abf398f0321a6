"""Held-out accuracy of RAFT runs by samples drawn, averaged over seeds: `reasonrl raft` run directories
named ARM (seed 0) and ARM-sN (seed N), as recipes/prm/reproduce.sh writes them.

    python recipes/prm/raft_table.py runs/prm raft-lenient-outcome raft-lenient-prm raft-hard-outcome
    python recipes/prm/raft_table.py runs/prm raft-lenient-outcome raft-lenient-prm --seeds 5 6 7 8 9

Prints, per arm, the mean accuracy after each round (and every seed's), the mean share of kept
samples the evaluation verifier accepts, and the seeds found (of `--seeds`, when given). With
`--against BASE`, also each arm's per-seed difference from the arm BASE after each round, over the
seeds both ran: the mean in points, its standard error, and how many seeds are ahead.

    python recipes/prm/raft_table.py runs/prm r6e-lenient-mixprm-conf --against r6b-lenient-outcome
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from statistics import mean, stdev


def seeds(root: Path, arm: str, only: list[int] | None = None) -> dict[int, list[dict]]:
    out = {}
    for run in sorted(root.glob(f"{arm}*")):
        match = re.fullmatch(re.escape(arm) + r"(?:-s(\d+))?", run.name)
        if match and (run / "metrics.jsonl").is_file() and (only is None or int(match.group(1) or 0) in only):
            out[int(match.group(1) or 0)] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("arms", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: every one found)")
    parser.add_argument("--against", help="an arm to difference every arm against, seed by seed")
    args = parser.parse_args()
    base = seeds(args.root, args.against, args.seeds) if args.against else None
    for arm in args.arms:
        runs = seeds(args.root, arm, args.seeds)
        rounds = min((len(h) for h in runs.values()), default=0)
        if not rounds:
            print(f"{arm}: no runs under {args.root}")
            continue
        accuracy = [mean(h[r]["accuracy"] for h in runs.values()) for r in range(rounds)]
        kept = [mean(h[r]["kept_correct"] for h in runs.values()) for r in range(1, rounds)]
        samples = [runs[min(runs)][r]["samples"] for r in range(rounds)]
        print(f"{arm} (seeds {sorted(runs)}):")
        print("  samples  " + " ".join(f"{s:>6}" for s in samples))
        print("  accuracy " + " ".join(f"{a:6.3f}" for a in accuracy))
        for seed, h in sorted(runs.items()):
            print(f"    seed {seed} " + " ".join(f"{h[r]['accuracy']:6.3f}" for r in range(rounds)))
        print("  kept right       " + " ".join(f"{k:6.2f}" for k in kept))
        common = sorted(set(runs) & set(base or {}))
        if len(common) > 1:
            cells = []
            for r in range(1, min(rounds, min(len(base[s]) for s in common))):
                d = [runs[s][r]["accuracy"] - base[s][r]["accuracy"] for s in common]
                cells.append(f"{100 * mean(d):+.1f} ({100 * stdev(d) / len(d) ** 0.5:.1f}, {sum(x > 0 for x in d)}/{len(d)})")
            print(f"  against {args.against} (points, standard error, seeds ahead): " + ", ".join(cells))


if __name__ == "__main__":
    main()
