#!/usr/bin/env bash
# Trains the original PAR base model on WikiText-2: builds the data first if needed
# (create_tfrecords.sh), then runs train.py with the base configuration:
#   d_model 128, 4 heads, d_ffn 512, 6 layers, mem_len 16, dropout 0.1, cutoffs 250 and 2500,
#   proj_factor 4, max_lr 1e-4, warmup 4000, tau 1.0 -> 0.1, Adam, 20 epochs.
#
# Every setting can be overridden through the environment, e.g.
#   EPOCHS=5 MODEL_NAME=short ./base_model.sh
#   RESUME=1 ./base_model.sh                  # continue after Ctrl-C (which saves a checkpoint)
#   SMOKE=1 ./base_model.sh                   # tiny model, 20 steps: checks the whole chain
# Variables: D_MODEL NUM_HEADS D_FFN NUM_LAYERS MEM_LEN DROPOUT_RATE CUTOFFS ("250 2500")
# PROJ_FACTOR MAX_LR WARMUP_STEPS TAU_START TAU_END OPT_NAME EPOCHS MAX_STEPS MODEL_NAME LOG_DIR
# EVAL_STEPS (valid evaluations besides the epoch ends; default the steps of the original's
# published table, "2700 8500 14100 28300 48100"; "" for none)
# RESUME JIT_COMPILE (true/false; default: on with a GPU), EXTRA_FLAGS (passed as they
# are), and create_tfrecords.sh's DATA_DIR WIKITEXT2_DIR VOCAB_SIZE BATCH_SIZE SEQ_LEN PYTHON.
# Data already built with other settings (e.g. BATCH_SIZE=8 on data built with 32) stop it
# before training, naming the difference: REBUILD=1 builds them again.
set -euo pipefail

REPO=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
export PYTHON
DATA_DIR=${DATA_DIR:-$REPO/data}
export DATA_DIR

if [ "${SMOKE:-0}" = 1 ]; then  # the tiny preset's shape
  D_MODEL=${D_MODEL:-32}
  NUM_HEADS=${NUM_HEADS:-2}
  D_FFN=${D_FFN:-64}
  NUM_LAYERS=${NUM_LAYERS:-3}
  MEM_LEN=${MEM_LEN:-8}
  CUTOFFS=${CUTOFFS:-"20 80"}
  EPOCHS=${EPOCHS:-1}
  MAX_STEPS=${MAX_STEPS:-20}
  WARMUP_STEPS=${WARMUP_STEPS:-10}
  MAX_LR=${MAX_LR:-1e-3}
  MODEL_NAME=${MODEL_NAME:-smoke}
fi

bash "$REPO/create_tfrecords.sh"

TFRECORDS_DIR=${TFRECORDS_DIR:-$DATA_DIR/tfrecords}
SP_MODEL_PREFIX=${SP_MODEL_PREFIX:-$DATA_DIR/sp12k}
cutoff_flags=()
for cutoff in ${CUTOFFS:-250 2500}; do
  cutoff_flags+=("--cutoffs=$cutoff")
done
optional=()
for step in ${EVAL_STEPS-2700 8500 14100 28300 48100}; do
  optional+=("--eval_steps=$step")
done
[ "${RESUME:-0}" = 1 ] && optional+=(--resume)
[ -n "${JIT_COMPILE:-}" ] && optional+=("--jit_compile=$JIT_COMPILE")

# shellcheck disable=SC2086  # EXTRA_FLAGS is split into flags on purpose
exec "$PYTHON" "$REPO/train.py" \
  --train_directory="$TFRECORDS_DIR/train" \
  --valid_directory="$TFRECORDS_DIR/valid" \
  --test_directory="$TFRECORDS_DIR/test" \
  --sp_model_prefix="$SP_MODEL_PREFIX" \
  --d_model="${D_MODEL:-128}" --num_heads="${NUM_HEADS:-4}" --d_ffn="${D_FFN:-512}" \
  --num_layers="${NUM_LAYERS:-6}" --mem_len="${MEM_LEN:-16}" \
  --dropout_rate="${DROPOUT_RATE:-0.1}" "${cutoff_flags[@]}" --proj_factor="${PROJ_FACTOR:-4}" \
  --max_lr="${MAX_LR:-1e-4}" --warmup_steps="${WARMUP_STEPS:-4000}" \
  --tau_start="${TAU_START:-1.0}" --tau_end="${TAU_END:-0.1}" --opt_name="${OPT_NAME:-adam}" \
  --epochs="${EPOCHS:-20}" --max_steps="${MAX_STEPS:-0}" \
  --model_name="${MODEL_NAME:-base}" --log_dir="${LOG_DIR:-$REPO/runs}" \
  "${optional[@]}" ${EXTRA_FLAGS:-}
