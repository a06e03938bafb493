#!/usr/bin/env bash
# Distills the embedded demo cascade (docs/distillation.md): the base stage by guidance
# distillation and then progressive rounds, the three SR stages by progressive rounds.
#
#   KEEP=runs/distill nohup tools/distill_demo.sh /tmp/distill > /tmp/distill.log 2>&1 &
#   tools/distill_demo.sh ROOT [extra t2v-distill flags]   # smoke run: STEPS=3
#
# Rounds, each a resumable `t2v-distill` run in ROOT/<run> (rerunning the same command
# continues where it stopped; a round whose workdir holds the checkpoint of step STEPS is done
# and not started again):
#   round 0: base_g      guidance-distilled base (one model call per step), 32 steps
#   round 1: base_p16    from base_g;      tsr_p8, ssr_p8, ssr2_p8 from the teacher pipeline
#   round 2: base_p8     from base_p16;    tsr_p4, ssr_p4, ssr2_p4 from round 1's students
#   round 3:                               <stage>_p2 from <stage>_p4 for the SR stages in
#                                          ROUND3_STAGES (default: ssr2, the costliest stage)
# The base's rounds run in one process and the SR stages' in another (as tools/train_demo.sh
# does; the SR stages read no text, so they need no base). After each round the cascade so far
# is written as a pipeline, ROOT/cascade_r<k>, to judge with tools/eval_shapes.py: round 0
# replaces only the base; round k replaces every stage by its round-k student (round 3: the
# round-3 students of ROUND3_STAGES, the other stages' round-2 students).
# Environment: PYTHON (default: python), TEACHER (default: shapes_teacher, the undistilled
# cascade), ROUNDS (default 2; 3 adds round 3), STEPS (distillation steps per round, default
# 1000), LR (peak learning rate, default 3e-4; each student starts from its teacher's weights),
# JAX_COMPILATION_CACHE_DIR, CHAINS (default "base sr"). Split over sessions: `CHAINS=base`
# runs only the base's rounds (both cores; it exports cascade_r0 alone), `CHAINS=sr` only the SR
# stages'; a later run with both resumes the finished rounds at once and exports every round's
# cascade. SR_STAGES (default "tsr ssr ssr2"): the SR stages the sr chain distills, one after
# another; with KEEP, `CHAINS=sr SR_STAGES=tsr` and `CHAINS=sr SR_STAGES=ssr` can run side by
# side (one ROOT each).
# KEEP (a folder, e.g. runs/distill): each finished round's student is also written there as a
# pipeline, KEEP/<run> (the teacher with that one stage replaced; commit it). A later run whose
# ROOT lost the round's workdir (a new machine) takes the round as done, distills the next
# round from KEEP/<run> and exports the cascades from it.
set -euo pipefail

ROOT=${1:?usage: tools/distill_demo.sh ROOT [extra t2v-distill flags]}
shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
CONFIG="$REPO/configs/shapes.py"
PYTHON=${PYTHON:-python}
TEACHER=${TEACHER:-shapes_teacher}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-1000}
LR=${LR:-3e-4}
KEEP=${KEEP:-}
# The range the base's guidance weight w is drawn from in every round: the guidance round's
# default [1, 2w] for the demo's w = 1.5, given explicitly so a round distilled from a kept
# pipeline (which does not record it) draws w as its teacher's round did.
GUIDANCE_MIN=${GUIDANCE_MIN:-1}
GUIDANCE_MAX=${GUIDANCE_MAX:-3}
[[ "$ROUNDS" =~ ^[0-3]$ ]] || { echo "ROUNDS: 0, 1, 2 or 3, got '$ROUNDS'" >&2; exit 2; }
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || { echo "STEPS: a positive integer, got '$STEPS'" >&2; exit 2; }
CHAINS=${CHAINS:-base sr}
bad_chains() { echo "CHAINS: 'base', 'sr' or both, got '$CHAINS'" >&2; exit 2; }
for chain in $CHAINS; do
  [[ "$chain" == base || "$chain" == sr ]] || bad_chains
done
has_chain() { [[ " $CHAINS " == *" $1 "* ]]; }
has_chain base || has_chain sr || bad_chains  # CHAINS held only spaces
check_sr_stages() {  # check_sr_stages NAME: every word of $NAME is an SR stage
  local stage
  for stage in ${!1}; do
    [[ "$stage" == tsr || "$stage" == ssr || "$stage" == ssr2 ]] \
      || { echo "$1: some of 'tsr ssr ssr2', got '${!1}'" >&2; exit 2; }
  done
}
SR_STAGES=${SR_STAGES:-tsr ssr ssr2}
check_sr_stages SR_STAGES
ROUND3_STAGES=${ROUND3_STAGES:-ssr2}
check_sr_stages ROUND3_STAGES
in_round3() { [[ " $ROUND3_STAGES " == *" $1 "* ]]; }
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$ROOT/xla_cache}
mkdir -p "$ROOT"

has_checkpoint() { compgen -G "$ROOT/$1/checkpoints/[0-9]*" > /dev/null; }
kept() { [[ -n "$KEEP" && -f "$KEEP/$1/pipeline.json" ]] && ! has_checkpoint "$1"; }
stage_of() { echo "${1%_*}"; }  # base_p16 -> base, ssr2_p4 -> ssr2

as_teacher() {  # as_teacher RUN: TEACHER_FLAGS := the flags that name RUN's student as a teacher
  if kept "$1"; then
    TEACHER_FLAGS=(--teacher="$KEEP/$1" --teacher_stage="$(stage_of "$1")")
  else
    TEACHER_FLAGS=(--teacher="$ROOT/$1")
  fi
}

distill() {  # distill RUN MODE [flags]: one round, resumed from ROOT/RUN, timed, kept
  local run=$1 mode=$2 stage start
  stage=$(stage_of "$run")
  shift 2
  if kept "$run"; then
    echo "$(date -u +%FT%TZ) $run: kept as $KEEP/$run, not distilled again"
    return 0
  fi
  if [[ -d "$ROOT/$run/checkpoints/$STEPS" ]]; then
    # Finished: rerunning it would load the teacher and the checkpoint only to train nothing
    # (about 10 minutes for the demo's base on this CPU).
    echo "$(date -u +%FT%TZ) $run: finished at step $STEPS in $ROOT/$run"
  else
    start=$(date +%s)
    echo "$(date -u +%FT%TZ) distilling $stage ($mode) in $ROOT/$run: $*"
    "$PYTHON" -m t2v_jax.cli.distill --config="$CONFIG:$stage" --workdir="$ROOT/$run" \
      --mode="$mode" --config.train.num_steps="$STEPS" \
      --config.train.learning_rate="$LR" --config.train.warmup_steps=50 "$@"
    echo "$run $(( $(date +%s) - start )) s (this invocation; $(date -u +%FT%TZ))" \
      >> "$ROOT/times.txt"
  fi
  if [[ -n "$KEEP" && ! -f "$KEEP/$run/pipeline.json" ]]; then
    "$PYTHON" "$REPO/tools/export_students.py" --pipeline "$TEACHER" --out "$KEEP/$run" \
      --overwrite "$ROOT/$run"
  fi
}

base_rounds() {
  local guidance=(--guidance_min="$GUIDANCE_MIN" --guidance_max="$GUIDANCE_MAX")
  distill base_g guidance --teacher="$TEACHER" --teacher_stage=base "${guidance[@]}" "$@"
  (( ROUNDS >= 1 )) || return 0
  as_teacher base_g
  distill base_p16 progressive "${TEACHER_FLAGS[@]}" "${guidance[@]}" "$@"
  (( ROUNDS >= 2 )) || return 0
  as_teacher base_p16
  distill base_p8 progressive "${TEACHER_FLAGS[@]}" "${guidance[@]}" "$@"
}

sr_rounds() {
  local stage
  for stage in $SR_STAGES; do
    (( ROUNDS >= 1 )) || return 0
    distill "${stage}_p8" progressive --teacher="$TEACHER" --teacher_stage="$stage" "$@"
    (( ROUNDS >= 2 )) || continue
    as_teacher "${stage}_p8"
    distill "${stage}_p4" progressive "${TEACHER_FLAGS[@]}" "$@"
    (( ROUNDS >= 3 )) && in_round3 "$stage" || continue
    as_teacher "${stage}_p4"
    distill "${stage}_p2" progressive "${TEACHER_FLAGS[@]}" "$@"
  done
  return 0
}

export_cascade() {  # export_cascade K RUN...: the teacher pipeline with each RUN's student in place
  local k=$1 run
  shift
  local from=() runs=()
  for run in "$@"; do
    if kept "$run"; then
      from+=(--stage-from "$(stage_of "$run")=$KEEP/$run")
    else
      runs+=("$ROOT/$run")
    fi
  done
  "$PYTHON" "$REPO/tools/export_students.py" --pipeline "$TEACHER" --out "$ROOT/cascade_r$k" \
    "${from[@]}" --overwrite "${runs[@]}"
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
  if (( ROUNDS >= 3 )); then
    runs=(base_p8)
    for stage in tsr ssr ssr2; do
      if in_round3 "$stage"; then runs+=("${stage}_p2"); else runs+=("${stage}_p4"); fi
    done
    export_cascade 3 "${runs[@]}"
  fi
fi
echo "$(date -u +%FT%TZ) done"
