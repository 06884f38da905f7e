#!/usr/bin/env bash
# Rebuild every shipped model artefact from scratch (CPU, 2 threads). Deterministic seeds.
# Training data is cached under ${INSPECTD_DATA_CACHE:-/tmp/inspectd-data}; held-out sets go to /tmp.
# Outputs go to .. (models/) and ../train/*.pt; set INSPECTD_MODELS_DIR=/some/dir to stage a run elsewhere
# (<dir>/*.onnx, <dir>/train/*.pt; evaluate.py honours it too).
set -euo pipefail
cd "$(dirname "$0")"
OUT="${INSPECTD_MODELS_DIR:-..}"
# surface-defect: arch w (train.py's default for the normal variant)
# stage 1: classifier + auxiliary defect-mask loss on the CAM features (6 epochs, seeds 0..7999)
python train.py --arch w --epochs 6 --lr 2e-3
cp "$OUT/train/surface-defect.pt" /tmp/inspectd-stage1.pt
# stage 2: ok-as-reference head + evidence loss (CAM mass outside the defect cells), 2 epochs
python train.py --arch w --init /tmp/inspectd-stage1.pt --epochs 2 --lr 5e-4 --ok-reference 1 --cam-loss 1 --reset-aux
cp "$OUT/train/surface-defect.pt" /tmp/inspectd-stage2.pt
# stage 3: gentler evidence loss on fresh images (seeds 100000..107999), 2 epochs
python train.py --arch w --init /tmp/inspectd-stage2.pt --epochs 2 --lr 3e-4 --ok-reference 1 --cam-loss 0.3 --train-seed 100000
# int8 (also run at the end of every normal train.py run)
python quantize.py
# shortcut model (f32 only): shortcut variant, no mask supervision, ok-as-reference head
python train.py --variant shortcut --arch s --n-train 3000 --n-val 500 --epochs 6 --threads 1
# samples + held-out sets + metrics
python surfaces.py samples --out ../samples --out-shortcut ../samples-shortcut
python surfaces.py write --out /tmp/heldout --n 2000 --seed 1000000
python surfaces.py write --out /tmp/heldout-shortcut --n 1000 --seed 3000000 --variant shortcut
python evaluate.py --heldout /tmp/heldout --heldout-shortcut /tmp/heldout-shortcut
