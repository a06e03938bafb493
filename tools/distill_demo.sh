#!/usr/bin/env bash
# Distills the embedded demo cascade (docs/distillation.md): the base stage by guidance
# distillation and then progressive rounds, the three SR stages by progressive rounds.
#
#   nohup tools/distill_demo.sh /tmp/shapes_distill > /tmp/shapes_distill.log 2>&1 &
#   tools/distill_demo.sh ROOT [extra t2v-distill flags]   # smoke run: STEPS=3
#
# Rounds, each a resumable `t2v-distill` run in ROOT/<run> (rerunning the same command
# continues where it stopped; a finished round trains no further step):
#   round 0: base_g      guidance-distilled base (one model call per step), 32 steps
#   round 1: base_p16    from base_g;      tsr_p8, ssr_p8, ssr2_p8 from the teacher pipeline
#   round 2: base_p8     from base_p16;    tsr_p4, ssr_p4, ssr2_p4 from round 1's students
# The base's rounds run in one process and the SR stages' in another (as tools/train_demo.sh
# does; the SR stages read no text, so they need no base). After each round the cascade so far
# is written as a pipeline, ROOT/cascade_r<k>, to judge with tools/eval_shapes.py: round 0
# replaces only the base; round k replaces every stage by its round-k student.
# Environment: PYTHON (default: python), TEACHER (default: shapes, the undistilled cascade),
# ROUNDS (default 2), STEPS (distillation steps per round, default 1000), LR (peak learning
# rate, default 3e-4; each student starts from its teacher's weights), JAX_COMPILATION_CACHE_DIR,
# CHAINS (default "base sr"). Split over sessions: `CHAINS=base` runs only the base's rounds
# (both cores; it exports cascade_r0 alone), `CHAINS=sr` only the SR stages'; a later run with
# both resumes the finished rounds at once and exports every round's cascade.
set -euo pipefail

ROOT=${1:?usage: tools/distill_demo.sh ROOT [extra t2v-distill flags]}
shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
CONFIG="$REPO/configs/shapes.py"
PYTHON=${PYTHON:-python}
TEACHER=${TEACHER:-shapes}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-1000}
LR=${LR:-3e-4}
[[ "$ROUNDS" =~ ^[0-2]$ ]] || { echo "ROUNDS: 0, 1 or 2, got '$ROUNDS'" >&2; exit 2; }
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || { echo "STEPS: a positive integer, got '$STEPS'" >&2; exit 2; }
CHAINS=${CHAINS:-base sr}
bad_chains() { echo "CHAINS: 'base', 'sr' or both, got '$CHAINS'" >&2; exit 2; }
for chain in $CHAINS; do
  [[ "$chain" == base || "$chain" == sr ]] || bad_chains
done
has_chain() { [[ " $CHAINS " == *" $1 "* ]]; }
has_chain base || has_chain sr || bad_chains  # CHAINS held only spaces
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$ROOT/xla_cache}
mkdir -p "$ROOT"

distill() {  # distill STAGE RUN MODE TEACHER [flags]: one round, resumed from ROOT/RUN, timed
  local stage=$1 run=$2 mode=$3 teacher=$4 start
  shift 4
  start=$(date +%s)
  echo "$(date -u +%FT%TZ) distilling $stage ($mode) in $ROOT/$run from $teacher"
  "$PYTHON" -m t2v_jax.cli.distill --config="$CONFIG:$stage" --workdir="$ROOT/$run" \
    --mode="$mode" --teacher="$teacher" --config.train.num_steps="$STEPS" \
    --config.train.learning_rate="$LR" --config.train.warmup_steps=50 "$@"
  echo "$run $(( $(date +%s) - start )) s (this invocation; $(date -u +%FT%TZ))" >> "$ROOT/times.txt"
}

base_rounds() {
  distill base base_g guidance "$TEACHER" --teacher_stage=base "$@"
  (( ROUNDS >= 1 )) && distill base base_p16 progressive "$ROOT/base_g" "$@"
  (( ROUNDS >= 2 )) && distill base base_p8 progressive "$ROOT/base_p16" "$@"
  return 0
}

sr_rounds() {
  local stage
  for stage in tsr ssr ssr2; do
    (( ROUNDS >= 1 )) && distill "$stage" "${stage}_p8" progressive "$TEACHER" \
      --teacher_stage="$stage" "$@"
    (( ROUNDS >= 2 )) && distill "$stage" "${stage}_p4" progressive "$ROOT/${stage}_p8" "$@"
  done
  return 0
}

export_cascade() {  # export_cascade K RUN...: the teacher pipeline with each RUN's student in place
  local k=$1 run
  shift
  local runs=()
  for run in "$@"; do runs+=("$ROOT/$run"); done
  "$PYTHON" "$REPO/tools/export_students.py" --pipeline "$TEACHER" --out "$ROOT/cascade_r$k" \
    --overwrite "${runs[@]}"
}

if has_chain base; then
  base_rounds "$@" >> "$ROOT/base.log" 2>&1 &
  base_pid=$!
fi
has_chain sr && sr_rounds "$@" >> "$ROOT/sr.log" 2>&1
if has_chain base; then
  wait "$base_pid" || { echo "base rounds failed, see $ROOT/base.log" >&2; exit 1; }
  export_cascade 0 base_g
fi
if has_chain base && has_chain sr; then
  (( ROUNDS >= 1 )) && export_cascade 1 base_p16 tsr_p8 ssr_p8 ssr2_p8
  (( ROUNDS >= 2 )) && export_cascade 2 base_p8 tsr_p4 ssr_p4 ssr2_p4
fi
echo "$(date -u +%FT%TZ) done"
