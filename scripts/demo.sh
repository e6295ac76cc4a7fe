#!/usr/bin/env bash
# The whole pipeline on the embedded demo task (`make demo` runs this after building .venv):
#   demo data -> tiny CLIP (pre-trained by clip_family's trainer, exported to an OpenAI .pt) -> CLIP features (HDF5)
#   -> baselines + training of the joint encoder -> test-split comparison -> faiss index over the KB -> one search
#   from the CLI.
# Everything goes under $DEMO (default runs/demo); a rerun resumes or reuses what is already complete.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
VLT5R=${VLT5R:-$( [[ -x "$(dirname "$PYTHON")/vlt5r" ]] && echo "$(dirname "$PYTHON")/vlt5r" || echo "$PYTHON -m vlt5r")}
export PYTHON HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
DEMO=${DEMO:-runs/demo}
start=$(date +%s)
step() { printf '\n== %s  (%ds)\n' "$1" $(( $(date +%s) - start )); }

step "1/5 demo data, tiny CLIP, CLIP features"
$VLT5R demo prepare --out "$DEMO"

step "2/5 baselines + training the joint encoder (scripts/train_joint_encoder.sh)"
DEMO="$DEMO" bash scripts/train_joint_encoder.sh
cp "$DEMO/train/comparison.json" "$DEMO/comparison.json"

step "3/5 test-split comparison ($DEMO/comparison.json)"
$VLT5R demo report --comparison "$DEMO/comparison.json"

step "4/5 faiss index over the knowledge base's CLIP image embeddings"
$VLT5R build-index --features "$DEMO/features/kb_image.h5" --out "$DEMO/index" --factory Flat --overwrite

step "5/5 one test query from the search CLI"
IFS=$'\t' read -r QUESTION IMAGE POSITIVE < <($VLT5R demo example "$DEMO/data/queries.test.jsonl")
echo "question: $QUESTION"
echo "image:    $DEMO/data/$IMAGE   (expected answer: $POSITIVE)"
$VLT5R search --index "$DEMO/index" --kb "$DEMO/data/kb.jsonl" --encoder "$DEMO/train/best" \
  --question "$QUESTION" --image "$DEMO/data/$IMAGE" -k 5

cat <<EOF

== done in $(( $(date +%s) - start ))s. Everything is under $DEMO/:
  data/            kb.jsonl, queries.{train,dev,test}.jsonl, images/
  clip/            pairs/ (entity renders + captions), train/ (the clip-train run), demo_clip.pt (its OpenAI export)
  features/        scenes.h5 (fc + grid), kb_image.h5, kb_text.h5, questions.h5
  train/           best/ last/ init/ encoders, log.jsonl, config.json
  comparison.json  test-split MRR@10 / recall of CLIP image-only, text-only, untrained and trained joint encoder
  index/           faiss index (index.faiss, ids.npy, index.json)
Try the server:  $VLT5R serve --index $DEMO/index --encoder $DEMO/train/best \\
                   --kb $DEMO/data/kb.jsonl --images $DEMO/data      # then open http://127.0.0.1:8000/
EOF
