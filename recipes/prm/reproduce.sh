#!/usr/bin/env bash
# Athena-PRM on `sums`, measured against exact step labels (docs/benchmarks.md, "Process reward models").
# CPU, about an hour on 2 quiet cores (longer on a shared machine). Run from the repository root: bash recipes/prm/reproduce.sh [OUT]
set -euo pipefail
OUT=${1:-runs/prm}
R="python -m reasonrl.cli"
ENGINE="--device cpu --kv-cache-memory 64MiB"
TRAIN="--base reasonrl/demo/policy --eval-data $OUT/heldout.jsonl --delimiter ' ' --epochs 6 --lr 3e-3 --samples-per-step 16 --warmup-steps 5 --device cpu"
mkdir -p "$OUT"
# the weak completer: the demo policy's recipe stopped at 400 SFT steps (the strong one is the shipped 2000-step policy)
[ -f "$OUT/weak/config.json" ] || python -m reasonrl.demo.policy --steps 400 --out "$OUT/weak"
# held-out solutions (exact labels only) and the best-of-N pool on a hard split (7-12 terms), 16 samples per problem
[ -f "$OUT/heldout.jsonl" ] || $R prm label --policy reasonrl/demo/policy --env "sums:" --data-split eval --problems 100 \
  --samples-per-problem 4 --out "$OUT/heldout.jsonl" $ENGINE
[ -f "$OUT/pool.jsonl" ] || $R prm label --policy reasonrl/demo/policy --env "sums:?min_terms=7&max_terms=12" --data-split eval \
  --problems 40 --samples-per-problem 16 --no-distinct --max-tokens 128 --out "$OUT/pool.jsonl" $ENGINE
# training solutions labelled by both completers, 8 continuations per step prefix each
[ -f "$OUT/labels.jsonl" ] || $R prm label --policy reasonrl/demo/policy --weak "$OUT/weak" --strong reasonrl/demo/policy \
  --env "sums:" --problems 150 --samples-per-problem 4 --completions 8 --out "$OUT/labels.jsonl" $ENGINE
train() { name=$1; shift; [ -f "$OUT/$name/train.json" ] || eval $R prm train --data "$OUT/labels.jsonl" --out "$OUT/$name" $TRAIN "$@"; }
variants() {  # $1: suffix, then extra flags (a seed)
  s=$1; shift
  train prm-strong8$s --labels strong --completions 8 "$@"
  train prm-weak8$s --labels weak --completions 8 "$@"
  train prm-consistent4$s --labels consistent --completions 4 "$@"
  train prm-consistent4-orm$s --labels consistent --completions 4 --orm-init-epochs 2 "$@"
  train prm-consistent4-neg$s --labels consistent --completions 4 --negative-upsample 3 "$@"
  train prm-exact$s --labels exact "$@"
}
variants ""
train orm --labels outcome
for prm in prm-consistent4 prm-strong8; do
  [ -f "$OUT/bon-$prm.json" ] || $R prm best-of-n --pool "$OUT/pool.jsonl" --prm "$OUT/$prm" --orm "$OUT/orm" --ns 1 2 4 8 16 --out "$OUT/bon-$prm.json" --device cpu
done
for reward in outcome prm; do
  [ -f "$OUT/raft-$reward/metrics.jsonl" ] || $R raft --policy reasonrl/demo/policy --out "$OUT/raft-$reward" --reward $reward \
    --prm "$OUT/prm-consistent4" --rounds 3 --prompts-per-round 32 --samples-per-prompt 8 --eval-problems 200 --device cpu
done
# RAFT with the learned outcome RM (the ORM above, its last step's score), and all three rewards on the hard split
RAFT="--policy reasonrl/demo/policy --rounds 3 --prompts-per-round 32 --samples-per-prompt 8 --eval-problems 200 --device cpu"
HARD="sums:?min_terms=7&max_terms=12"
[ -f "$OUT/raft-orm/metrics.jsonl" ] || $R raft $RAFT --out "$OUT/raft-orm" --reward prm --prm "$OUT/orm" --aggregation last
[ -f "$OUT/raft-hard-outcome/metrics.jsonl" ] || $R raft $RAFT --env "$HARD" --out "$OUT/raft-hard-outcome" --reward outcome
[ -f "$OUT/raft-hard-prm/metrics.jsonl" ] || $R raft $RAFT --env "$HARD" --out "$OUT/raft-hard-prm" --reward prm --prm "$OUT/prm-consistent4"
[ -f "$OUT/raft-hard-orm/metrics.jsonl" ] || $R raft $RAFT --env "$HARD" --out "$OUT/raft-hard-orm" --reward prm --prm "$OUT/orm" --aggregation last
# a lenient verifier (a box within 2 of the sum passes, so a round-number guess often does), measured exactly, 5 seeds;
# and a PRM trained on the hard split's own solutions
[ -f "$OUT/labels-hard.jsonl" ] || $R prm label --policy reasonrl/demo/policy --weak "$OUT/weak" --strong reasonrl/demo/policy \
  --env "$HARD" --problems 150 --samples-per-problem 4 --completions 8 --max-tokens 128 --out "$OUT/labels-hard.jsonl" $ENGINE
[ -f "$OUT/heldout-hard.jsonl" ] || $R prm label --policy reasonrl/demo/policy --env "$HARD" --data-split eval --problems 100 \
  --samples-per-problem 4 --max-tokens 128 --out "$OUT/heldout-hard.jsonl" $ENGINE
[ -f "$OUT/prm-hard-consistent4/train.json" ] || eval $R prm train --data "$OUT/labels-hard.jsonl" --out "$OUT/prm-hard-consistent4" \
  ${TRAIN/heldout.jsonl/heldout-hard.jsonl} --labels consistent --completions 4
# a PRM trained on the solutions of two policies (the demo policy's labels above and the weak policy's), seed 1 prompts
[ -f "$OUT/labels-weakpolicy.jsonl" ] || $R prm label --policy "$OUT/weak" --weak "$OUT/weak" --strong reasonrl/demo/policy \
  --env "sums:" --problems 150 --samples-per-problem 4 --completions 8 --seed 1 --out "$OUT/labels-weakpolicy.jsonl" $ENGINE
[ -f "$OUT/labels-mix.jsonl" ] || cat "$OUT/labels.jsonl" "$OUT/labels-weakpolicy.jsonl" > "$OUT/labels-mix.jsonl"
[ -f "$OUT/prm-mix-consistent4/train.json" ] || eval $R prm train --data "$OUT/labels-mix.jsonl" --out "$OUT/prm-mix-consistent4" \
  $TRAIN --labels consistent --completions 4
lenient() { name=$1; shift; [ -f "$OUT/$name/model.safetensors" ] || $R raft $RAFT --env "$HARD&tolerance=2" --eval-env "$HARD" \
  --out "$OUT/$name" "$@"; }
for s in 0 1 2 3 4 5 6 7 8 9; do  # seeds 5-9: the arms chosen on seeds 0-4, checked on fresh ones
  x=$([ $s = 0 ] || echo "-s$s")
  [ -f "$OUT/raft-hard-outcome$x/model.safetensors" ] || $R raft $RAFT --env "$HARD" --out "$OUT/raft-hard-outcome$x" --seed $s
  lenient raft-lenient-outcome$x --reward outcome --seed $s
  lenient raft-lenient-mixprm-bar0$x --reward prm --prm "$OUT/prm-mix-consistent4" --min-reward 0 --seed $s
  lenient raft-lenient-outcome-mixprm-bar0$x --reward outcome+prm --prm "$OUT/prm-mix-consistent4" --min-reward 0 --seed $s
  [ $s -gt 4 ] && continue
  lenient raft-lenient-prm$x --reward prm --prm "$OUT/prm-consistent4" --seed $s
  lenient raft-lenient-outcome-prm$x --reward outcome+prm --prm "$OUT/prm-consistent4" --seed $s
  lenient raft-lenient-outcome-prm-bar0$x --reward outcome+prm --prm "$OUT/prm-consistent4" --min-reward 0 --seed $s
  lenient raft-lenient-prm-bar08$x --reward prm --prm "$OUT/prm-consistent4" --min-reward 0.8 --seed $s
  lenient raft-lenient-mixprm$x --reward prm --prm "$OUT/prm-mix-consistent4" --seed $s
  [ $s -gt 2 ] || lenient raft-lenient-hardprm$x --reward prm --prm "$OUT/prm-hard-consistent4" --seed $s
done
ARMS="raft-hard-outcome raft-lenient-outcome raft-lenient-mixprm-bar0 raft-lenient-outcome-mixprm-bar0"
python recipes/prm/raft_table.py "$OUT" $ARMS raft-lenient-prm raft-lenient-outcome-prm raft-lenient-outcome-prm-bar0 \
  raft-lenient-prm-bar08 raft-lenient-mixprm raft-lenient-hardprm --seeds 0 1 2 3 4
python recipes/prm/raft_table.py "$OUT" $ARMS --seeds 5 6 7 8 9
python recipes/prm/raft_table.py "$OUT" $ARMS
# three rounds more: a copy of each run of these arms, resumed with --rounds 6 (a changed config: --accept-changes)
more() { run=$1$2; shift 2; [ -d "$OUT/r6-$run" ] || cp -r "$OUT/$run" "$OUT/r6-$run"
  $R raft $RAFT --rounds 6 --out "$OUT/r6-$run" --accept-changes "$@"; }
MIX="--prm $OUT/prm-mix-consistent4 --min-reward 0"
for s in 0 1 2 3 4 5 6 7 8 9; do
  x=$([ $s = 0 ] || echo "-s$s")
  more raft-hard-outcome "$x" --env "$HARD" --seed $s
  more raft-lenient-outcome "$x" --env "$HARD&tolerance=2" --eval-env "$HARD" --seed $s
  more raft-lenient-mixprm-bar0 "$x" --env "$HARD&tolerance=2" --eval-env "$HARD" --reward prm $MIX --seed $s
  more raft-lenient-outcome-mixprm-bar0 "$x" --env "$HARD&tolerance=2" --eval-env "$HARD" --reward outcome+prm $MIX --seed $s
done
python recipes/prm/raft_table.py "$OUT" $(for a in $ARMS; do echo r6-$a; done)
# the PRM refreshed every round (--prm-refresh): 6 rounds straight, against the same PRM fixed and the lenient
# outcome reward rerun beside it, seeds 0-9, the exact verifier as reference on seeds 0-4; on seed 0, the
# refresh with exact step labels (256 solutions a round, 3 epochs, lr 2e-3); then a PRM trained on exact labels
# of two refreshed runs' solutions, judged on a third's (is it the labels or the PRM?)
R6="--policy reasonrl/demo/policy --rounds 6 --prompts-per-round 32 --samples-per-prompt 8 --eval-problems 200 --device cpu"
r6() { name=$1; shift; [ -f "$OUT/$name/model.safetensors" ] || $R raft $R6 --env "$HARD&tolerance=2" --eval-env "$HARD" \
  --out "$OUT/$name" "$@"; }
for s in 0 1 2 3 4 5 6 7 8 9; do
  x=$([ $s = 0 ] || echo "-s$s")
  [ $s -gt 4 ] || [ -f "$OUT/r6b-exact$x/model.safetensors" ] || $R raft $R6 --env "$HARD" --out "$OUT/r6b-exact$x" --seed $s
  r6 r6b-lenient-outcome$x --seed $s
  r6 r6b-lenient-mixprm-bar0$x --reward prm $MIX --seed $s
  r6 r6c-lenient-mixprm-refresh$x --reward prm $MIX --prm-refresh 64 --refresh-env "$HARD" --seed $s
done
r6 v-refresh256-exact --reward prm $MIX --prm-refresh 256 --refresh-labels exact --refresh-epochs 3 --refresh-lr 2e-3 \
  --refresh-env "$HARD"
python recipes/prm/raft_table.py "$OUT" r6b-exact r6b-lenient-outcome r6b-lenient-mixprm-bar0 r6c-lenient-mixprm-refresh
python recipes/prm/greedy_errors.py "$OUT/r6b-lenient-outcome" "$OUT/r6b-lenient-mixprm-bar0" "$OUT/r6c-lenient-mixprm-refresh"
mkdir -p "$OUT/capacity"
cat "$OUT/r6c-lenient-mixprm-refresh-s2/refresh_labels.jsonl" "$OUT/v-refresh256-exact/refresh_labels.jsonl" > "$OUT/capacity/train.jsonl"
cp "$OUT/r6c-lenient-mixprm-refresh-s1/refresh_labels.jsonl" "$OUT/capacity/heldout.jsonl"
[ -f "$OUT/capacity/prm-exact/train.json" ] || eval $R prm train --data "$OUT/capacity/train.jsonl" --out "$OUT/capacity/prm-exact" \
  ${TRAIN/heldout.jsonl/capacity/heldout.jsonl} --labels exact
$R prm judge --prm "$OUT/prm-mix-consistent4" --data "$OUT/capacity/heldout.jsonl"
# a PRM trained once on many more solutions, exactly labelled: 400 problems x 8 samples of each of ten policies (the
# demo and weak policies, and RAFT policies of the lenient-outcome and fixed-PRM arms after 3 and 6 rounds, seeds 20
# and 21), judged on the solutions of four RAFT policies of seed 22; then RAFT with it (seeds 0-9), and the choice
# RAFT makes with it: which of a problem's solutions each scorer puts first
P="$OUT/pool-policies"; D="$OUT/pool-data"; mkdir -p "$P" "$D"
R3="${R6/--rounds 6/--rounds 3}"
for s in 20 21 22; do
  for arm in outcome mixprm; do
    flags=$([ $arm = outcome ] || echo "--reward prm $MIX")
    [ -f "$P/$arm-r3-s$s/model.safetensors" ] || $R raft $R3 --env "$HARD&tolerance=2" --eval-env "$HARD" --out "$P/$arm-r3-s$s" $flags --seed $s
    [ -d "$P/$arm-r6-s$s" ] || cp -r "$P/$arm-r3-s$s" "$P/$arm-r6-s$s"
    $R raft $R3 --rounds 6 --env "$HARD&tolerance=2" --eval-env "$HARD" --out "$P/$arm-r6-s$s" $flags --seed $s --accept-changes
  done
done
i=0
for pol in reasonrl/demo/policy "$OUT/weak" "$P"/outcome-r{3,6}-s20 "$P"/outcome-r{3,6}-s21 "$P"/mixprm-r{3,6}-s20 "$P"/mixprm-r{3,6}-s21; do
  i=$((i+1))
  [ -f "$D/train-$i.jsonl" ] || $R prm label --policy "$pol" --env "$HARD" --problems 400 --samples-per-problem 8 \
    --data-seed $((100+i)) --seed $((100+i)) --max-tokens 128 --out "$D/train-$i.jsonl" $ENGINE
done
for pol in outcome-r3-s22 outcome-r6-s22 mixprm-r3-s22 mixprm-r6-s22; do
  [ -f "$D/heldout-$pol.jsonl" ] || $R prm label --policy "$P/$pol" --env "$HARD" --data-split eval --problems 100 \
    --samples-per-problem 4 --max-tokens 128 --out "$D/heldout-$pol.jsonl" $ENGINE
done
cat "$D"/train-{1..10}.jsonl > "$D/train-all.jsonl"; cat "$D"/heldout-*-s22.jsonl > "$D/heldout-all.jsonl"
[ -f "$D/train-4k.jsonl" ] || python -c "import random,sys; r=open(sys.argv[1]).read().splitlines(); random.Random(0).shuffle(r); \
open(sys.argv[2],'w').write('\n'.join(r[:4000])+'\n')" "$D/train-all.jsonl" "$D/train-4k.jsonl"
POOL="--base reasonrl/demo/policy --eval-data $D/heldout-all.jsonl --delimiter ' ' --warmup-steps 5 --device cpu --labels exact --lr 3e-3 --samples-per-step 32"
[ -f "$OUT/prm-pool-exact/train.json" ] || eval $R prm train --data "$D/train-all.jsonl" --out "$OUT/prm-pool-exact" $POOL --epochs 2
[ -f "$OUT/prm-pool4k-exact/train.json" ] || eval $R prm train --data "$D/train-4k.jsonl" --out "$OUT/prm-pool4k-exact" $POOL --epochs 6
$R prm judge --prm "$OUT/prm-mix-consistent4" --data "$D/heldout-all.jsonl"
for s in 0 1 2 3 4 5 6 7 8 9; do
  x=$([ $s = 0 ] || echo "-s$s")
  r6 r6d-lenient-poolprm$x --reward prm --prm "$OUT/prm-pool-exact" --min-reward 0 --seed $s
  r6 r6d-lenient-outcome-poolprm$x --reward outcome+prm --prm "$OUT/prm-pool-exact" --min-reward 0 --seed $s
done
python recipes/prm/raft_table.py "$OUT" r6b-lenient-outcome r6b-lenient-mixprm-bar0 r6d-lenient-poolprm r6d-lenient-outcome-poolprm \
  --against r6b-lenient-outcome --seeds $(seq 0 9)
python recipes/prm/select_probe.py "$D/heldout-all.jsonl" --prm "$OUT/prm-mix-consistent4" "$OUT/prm-pool-exact" \
  --policy reasonrl/demo/policy "$P/outcome-r6-s22"
for agg in min mean last; do
  python recipes/prm/select_probe.py "$D/heldout-all.jsonl" --worked --aggregation $agg \
    --prm "$OUT/prm-mix-consistent4" "$OUT/prm-pool-exact" "$OUT/prm-pool4k-exact" --policy reasonrl/demo/policy "$P/outcome-r6-s22"
done
python recipes/prm/select_probe.py "$D/heldout-all.jsonl" --worked --detail --prm "$OUT/prm-pool-exact"
python recipes/prm/select_probe.py "$D/train-8.jsonl" --worked --prm "$OUT/prm-pool-exact" --policy reasonrl/demo/policy
python recipes/prm/select_probe.py "$D/train-4k.jsonl" --worked --prm "$OUT/prm-pool4k-exact"
python recipes/prm/greedy_errors.py "$OUT/r6d-lenient-poolprm"
# does the PRM still judge the RAFT policies' solutions? held-out solutions of each, exactly labelled, judged by it
for reward in outcome prm; do
  [ -f "$OUT/heldout-raft-$reward.jsonl" ] || $R prm label --policy "$OUT/raft-$reward" --env "sums:" --data-split eval \
    --problems 100 --samples-per-problem 4 --out "$OUT/heldout-raft-$reward.jsonl" $ENGINE
  $R prm judge --prm "$OUT/prm-consistent4" --data "$OUT/heldout-raft-$reward.jsonl" > "$OUT/judge-raft-$reward.json"
done
# two more training seeds of every variant (the labels are the same; data order and head initialisation change)
variants -s1 --seed 1
variants -s2 --seed 2
# best-of-N up to 64 on the hard split: 64 samples per problem
[ -f "$OUT/pool64.jsonl" ] || $R prm label --policy reasonrl/demo/policy --env "sums:?min_terms=7&max_terms=12" --data-split eval \
  --problems 40 --samples-per-problem 64 --no-distinct --max-tokens 128 --seed 1 --out "$OUT/pool64.jsonl" $ENGINE
for prm in prm-consistent4 prm-exact; do
  [ -f "$OUT/bon64-$prm.json" ] || $R prm best-of-n --pool "$OUT/pool64.jsonl" --prm "$OUT/$prm" --orm "$OUT/orm" \
    --ns 1 2 4 8 16 32 64 --out "$OUT/bon64-$prm.json" --device cpu
done
# longer training (20 epochs instead of 6) of three label sources: does label quality matter more then?
train prm-strong8-long --labels strong --completions 8 --epochs 20
train prm-consistent4-long --labels consistent --completions 4 --epochs 20
train prm-exact-long --labels exact --epochs 20
# a PRM that reads the policy's confidence (--confidence: the lowest and mean log-probability the frozen base
# model gives each step's tokens): the two-policy PRM's recipe and labels, and the 4,000-solution pool PRM's; their
# choice within a problem; RAFT with them on the lenient verifier (seeds 0-19 for the first, with the lenient
# outcome reward on seeds 10-19 beside it) and, for the first, on the exact verifier (seeds 0-4)
[ -f "$OUT/prm-mix-consistent4-conf/train.json" ] || eval $R prm train --data "$OUT/labels-mix.jsonl" \
  --out "$OUT/prm-mix-consistent4-conf" $TRAIN --labels consistent --completions 4 --confidence
[ -f "$OUT/prm-pool4k-exact-conf/train.json" ] || eval $R prm train --data "$D/train-4k.jsonl" \
  --out "$OUT/prm-pool4k-exact-conf" $POOL --epochs 6 --confidence
$R prm judge --prm "$OUT/prm-mix-consistent4-conf" --data "$D/heldout-all.jsonl"
for w in "" --worked; do
  python recipes/prm/select_probe.py "$D/heldout-all.jsonl" $w --prm "$OUT/prm-mix-consistent4-conf" "$OUT/prm-pool4k-exact-conf"
done
CONF="--reward prm --prm $OUT/prm-mix-consistent4-conf --min-reward 0"
for s in $(seq 0 19); do
  x=$([ $s = 0 ] || echo "-s$s")
  r6 r6b-lenient-outcome$x --seed $s
  r6 r6e-lenient-mixprm-conf$x $CONF --seed $s
  [ $s -gt 9 ] || r6 r6e-lenient-pool4kprm-conf$x --reward prm --prm "$OUT/prm-pool4k-exact-conf" --min-reward 0 --seed $s
  [ $s -gt 4 ] && continue
  [ -f "$OUT/r6b-exact$x/model.safetensors" ] || $R raft $R6 --env "$HARD" --out "$OUT/r6b-exact$x" --seed $s
  [ -f "$OUT/r6e-exact-mixprm-conf$x/model.safetensors" ] || $R raft $R6 --env "$HARD" --out "$OUT/r6e-exact-mixprm-conf$x" \
    $CONF --seed $s
done
python recipes/prm/raft_table.py "$OUT" r6b-lenient-outcome r6b-lenient-mixprm-bar0 r6e-lenient-mixprm-conf --seeds $(seq 0 9) \
  --against r6b-lenient-outcome
python recipes/prm/raft_table.py "$OUT" r6b-lenient-outcome r6e-lenient-mixprm-conf --seeds $(seq 10 19) --against r6b-lenient-outcome
python recipes/prm/raft_table.py "$OUT" r6b-lenient-outcome r6e-lenient-mixprm-conf r6e-lenient-pool4kprm-conf --against r6b-lenient-outcome
python recipes/prm/raft_table.py "$OUT" r6e-lenient-mixprm-conf --against r6b-lenient-mixprm-bar0
python recipes/prm/raft_table.py "$OUT" r6e-lenient-pool4kprm-conf --against r6e-lenient-mixprm-conf
python recipes/prm/raft_table.py "$OUT" r6b-exact r6e-exact-mixprm-conf --against r6b-exact
python recipes/prm/greedy_errors.py "$OUT/r6b-lenient-outcome" "$OUT/r6b-lenient-mixprm-bar0" "$OUT/r6e-lenient-mixprm-conf" \
  "$OUT/r6e-exact-mixprm-conf"
