#!/usr/bin/env bash
# Train the joint (question + image) query encoder into CLIP space — a thin recipe over `vlt5r train`.
#
#   bash scripts/train_joint_encoder.sh                      # the demo data (runs/demo), tiny random-init encoder
#   bash scripts/train_joint_encoder.sh --epochs 5 --lr-head 3e-3          # any flag of vlt5r train overrides
#   KB=kb.jsonl TRAIN=... KB_FEATURES=kb.h5 QUERY_FEATURES=q.h5 OUT=runs/mine \
#       bash scripts/train_joint_encoder.sh --init vlt5:Epoch30.pth --tokenizer t5-base/ --method houlsby
#   NPROC=4 bash scripts/train_joint_encoder.sh             # torchrun DDP (negatives gathered across ranks)
#
# Paths come from environment variables (defaults: the layout `vlt5r demo prepare --out runs/demo`
# writes, which this script runs when the demo data are missing): DEMO, DATA, FEATURES, KB, TRAIN, DEV, TEST,
# KB_FEATURES, KB_SIDE (image|text|mean), KB_TEXT_FEATURES, QUERY_FEATURES, QUESTION_FEATURES, TOKENIZER, OUT (default $DEMO/train).
# Flags given on the command line ("$@") come last and win. See docs/training.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

DEMO=${DEMO:-runs/demo}
DATA=${DATA:-$DEMO/data}
FEATURES=${FEATURES:-$DEMO/features}
KB=${KB:-$DATA/kb.jsonl}
TRAIN=${TRAIN:-$DATA/queries.train.jsonl}
DEV=${DEV:-$DATA/queries.dev.jsonl}
TEST=${TEST:-$DATA/queries.test.jsonl}
KB_FEATURES=${KB_FEATURES:-$FEATURES/kb_image.h5}
KB_TEXT_FEATURES=${KB_TEXT_FEATURES:-$FEATURES/kb_text.h5}
QUERY_FEATURES=${QUERY_FEATURES:-$FEATURES/scenes.h5}
QUESTION_FEATURES=${QUESTION_FEATURES:-$FEATURES/questions.h5}
TOKENIZER=${TOKENIZER:-$DEMO/tokenizer}
OUT=${OUT:-$DEMO/train}
NPROC=${NPROC:-1}
KB_SIDE=${KB_SIDE:-image}

if [[ ! -f "$KB" || ! -f "$QUERY_FEATURES" ]]; then
  if [[ "$KB" == "$DEMO/data/kb.jsonl" && "$QUERY_FEATURES" == "$DEMO/features/scenes.h5" ]]; then
    echo "demo data missing: vlt5r demo prepare --out $DEMO"
    "$PYTHON" -m vlt5r demo prepare --out "$DEMO"
  else
    echo "error: no data at $KB / $QUERY_FEATURES; run 'make demo' first or set DEMO / DATA / KB / ..." >&2
    exit 2
  fi
fi
if [[ ! -d "$TOKENIZER" ]]; then  # a random init needs a tokenizer: train a small one on the task's text
  "$PYTHON" -m vlt5r tokenizer --texts "$TRAIN" "$KB" --out "$TOKENIZER"
fi

args=(--kb "$KB" --kb-features "$KB_FEATURES" --train-queries "$TRAIN" --query-features "$QUERY_FEATURES"
      --tokenizer "$TOKENIZER" --out "$OUT")
[[ -f "$DEV" ]] && args+=(--dev-queries "$DEV")
[[ -f "$TEST" ]] && args+=(--test-queries "$TEST")
[[ -f "$QUESTION_FEATURES" ]] && args+=(--question-features "$QUESTION_FEATURES")
# KB side: the CLIP image embeddings of the entries (KB_SIDE=text|mean also use the passages' text embeddings).
if [[ "$KB_SIDE" != image ]]; then args+=(--kb-text-features "$KB_TEXT_FEATURES" --kb-side "$KB_SIDE"); fi
# The shipped random-init recipe (configs/joint_random_small.json: d 128, 2 layers, attention pooling, the fc
# token, grid-cell boxes, KB-wide negatives, LR 1e-3 for every group, learned temperature; docs/training.md §10
# measures it). Every value can be overridden by "$@". The demo CLIP's grid is 2x2 (one token per quadrant).
args+=(--config configs/joint_random_small.json --epochs 4)

echo "training: outputs under $OUT (config.json, log.jsonl, init/ best/ last/, comparison.json)"
if [[ "$NPROC" -gt 1 ]]; then
  "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" -m vlt5r train "${args[@]}" "$@"
else
  "$PYTHON" -m vlt5r train "${args[@]}" "$@"
fi
echo "best encoder: $OUT/best   test table: $OUT/comparison.json   log: $OUT/log.jsonl"
