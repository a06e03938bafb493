#!/usr/bin/env bash
# Trains the embedded demo cascade (configs/shapes.py: base -> tsr -> ssr -> ssr2) and exports it.
#
#   nohup tools/train_demo.sh /tmp/shapes_demo > /tmp/shapes_demo.log 2>&1 &
#   tools/train_demo.sh ROOT [extra t2v-train flags, e.g. --config.train.num_steps=3]
#
# Every stage trains in ROOT/<stage> and resumes from there, so rerunning the same command after
# a restart continues where it stopped (finished stages return at once). Each SR stage trains in
# two runs: from scratch in ROOT/<stage>_scratch (the config's schedule), then continued in
# ROOT/<stage> from that run's weights (a warm start: fresh AdamW, $SR_CONTINUE_STEPS more steps
# at peak lr 5e-4 after 50 warmup steps, cosine to 5%), which kept the squares' corners and the
# colours the first run's weights lost (docs/demo.md); a ROOT whose SR runs were made the other
# way (one run per stage, or SR_CONTINUE_STEPS=0 over two-run stages) stops before training.
# The SR stages read no text, so they do not wait for the base stage's jointly trained T5: the
# base stage trains in one process while TSR, SSR and then SSR2 train in another (each then gets
# about one core; the base alone uses both: 0.77 steps/s vs 0.37 beside another job; logs in
# ROOT/<stage>.log, which a rerun appends to). Finally the EMA params of all stages are saved as
# a pipeline (bf16) in $OUT (default: t2v_jax/assets/shapes_teacher, the package's built-in
# "shapes_teacher" pipeline, which tools/distill_demo.sh distills into "shapes"). Wall times of
# each finished stage invocation go to ROOT/times.txt.
# Split over sessions (each stage must finish within one, and only the repository survives):
#   SR_ONLY=1 OUT=runs/sr tools/train_demo.sh ROOT   # TSR, SSR, SSR2 only -> an SR-only pipeline
#   SR_FROM=runs/sr tools/train_demo.sh ROOT         # the base alone (both cores), then the
#                                                    # export joins it to SR_FROM's stages
# Environment: PYTHON (default: python), OUT, JAX_COMPILATION_CACHE_DIR, SR_ONLY, SR_FROM,
# SR_CONTINUE_STEPS (default 1000; 0 skips the continued runs and exports the scratch ones).
set -euo pipefail

ROOT=${1:?usage: tools/train_demo.sh ROOT [extra t2v-train flags]}
shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
CONFIG="$REPO/configs/shapes.py"
PYTHON=${PYTHON:-python}
OUT=${OUT:-$REPO/t2v_jax/assets/shapes_teacher}
SR_CONTINUE_STEPS=${SR_CONTINUE_STEPS:-1000}
[[ "$SR_CONTINUE_STEPS" =~ ^[0-9]+$ ]] || { echo "SR_CONTINUE_STEPS: a count >= 0, got '$SR_CONTINUE_STEPS'" >&2; exit 2; }
# Compiles of the train step take minutes on a small CPU; a restarted stage reuses them.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$ROOT/xla_cache}
mkdir -p "$ROOT"

train_stage() {  # train_stage STAGE RUN [flags]: one stage, resumed from ROOT/RUN, timed
  local stage=$1 run=$2 start
  shift 2
  start=$(date +%s)
  echo "$(date -u +%FT%TZ) training $stage in $ROOT/$run"
  "$PYTHON" -m t2v_jax.cli.train --config="$CONFIG:$stage" --workdir="$ROOT/$run" "$@"
  echo "$run $(( $(date +%s) - start )) s (this invocation; $(date -u +%FT%TZ))" >> "$ROOT/times.txt"
}

export_pipeline() {
  "$PYTHON" "$REPO/tools/export_pipeline.py" --config "$CONFIG" --workdir "$ROOT" --overwrite "$@"
}

check_sr_runs() {  # before anything trains: ROOT's SR runs were made by this recipe
  local stage
  for stage in tsr ssr ssr2; do
    if (( SR_CONTINUE_STEPS > 0 )) && [[ -d "$ROOT/$stage" && ! -d "$ROOT/${stage}_scratch" ]]; then
      # Resumed as the continuation, the one-run recipe's run would train on at lr 5e-4.
      echo "$ROOT/$stage: a one-run SR run (no $ROOT/${stage}_scratch); move it to" \
        "$ROOT/${stage}_scratch to continue it, or set SR_CONTINUE_STEPS=0" >&2
      exit 2
    elif (( SR_CONTINUE_STEPS == 0 )) && [[ -d "$ROOT/${stage}_scratch" ]]; then
      # ROOT/<stage> is then the continued run, which the one-run recipe would train further.
      echo "SR_CONTINUE_STEPS=0 but $ROOT/${stage}_scratch exists: ROOT holds two-run SR" \
        "stages; use another ROOT or the default SR_CONTINUE_STEPS" >&2
      exit 2
    fi
  done
}

train_sr_stages() {
  local stage
  for stage in tsr ssr ssr2; do
    if (( SR_CONTINUE_STEPS == 0 )); then
      train_stage "$stage" "$stage" "$@" >> "$ROOT/$stage.log" 2>&1
      continue
    fi
    train_stage "$stage" "${stage}_scratch" "$@" >> "$ROOT/$stage.log" 2>&1
    # The user's flags last, so that a smoke run's --config.train.num_steps=3 also applies here.
    train_stage "$stage" "$stage" --config.train.init_from="$ROOT/${stage}_scratch" \
      --config.train.num_steps="$SR_CONTINUE_STEPS" --config.train.learning_rate=5e-4 \
      --config.train.warmup_steps=50 "$@" >> "$ROOT/$stage.log" 2>&1
  done
}

if [[ -n "${SR_ONLY:-}" && -n "${SR_FROM:-}" ]]; then
  echo "SR_ONLY and SR_FROM: set one of them" >&2
  exit 2
fi
[[ -n "${SR_FROM:-}" ]] || check_sr_runs
if [[ -n "${SR_ONLY:-}" ]]; then
  train_sr_stages "$@"
  export_pipeline --stages tsr ssr ssr2 --out "$OUT" --params-dtype bfloat16
elif [[ -n "${SR_FROM:-}" ]]; then
  [[ -f "$SR_FROM/pipeline.json" ]] || { echo "SR_FROM: no saved pipeline in $SR_FROM" >&2; exit 2; }
  train_stage base base "$@" >> "$ROOT/base.log" 2>&1
  export_pipeline --stages base tsr ssr ssr2 --stage-from "tsr,ssr,ssr2=$SR_FROM" --out "$OUT" \
    --params-dtype bfloat16
else
  train_stage base base "$@" >> "$ROOT/base.log" 2>&1 &
  base_pid=$!
  train_sr_stages "$@"
  wait "$base_pid" || { echo "base stage failed, see $ROOT/base.log" >&2; exit 1; }
  export_pipeline --stages base tsr ssr ssr2 --out "$OUT" --params-dtype bfloat16
fi
echo "$(date -u +%FT%TZ) done: pipeline in $OUT"
