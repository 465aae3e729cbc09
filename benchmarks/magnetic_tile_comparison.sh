#!/usr/bin/env bash
# Magnetic Tile through the deployment commands: each run scored (vqfast score, the first
# with --maps tiff in MVTec's layout), reported (per-defect-class metrics) and all compared
# on one page (vqfast report --scores ... --out); reproduces the comparison rows of
# benchmarks/RESULTS.md.
#
#   bash benchmarks/magnetic_tile_comparison.sh OUT RUN:SCORER [RUN:SCORER ...]
#
# The runs come from magnetic_tile_features.py (sgfr, feature-ae), magnetic_tile_vq.py
# (regenerative) or vqfast train dsr on the same data. --threshold 0: the metrics need no
# decision threshold, and runs trained on every image hold no validation images for auto.
set -euo pipefail
out=$1; shift
data="$(cd "$(dirname "$0")/../.." && pwd)/shared/data/magnetic_tile"
folders=()
maps=tiff
for spec in "$@"; do
  run=${spec%%:*}; scorer=${spec##*:}
  folder="$out/$(basename "$run")_$scorer"
  vqfast score "$scorer" --run "$run" --data "$data" --format mtd --threshold 0 --maps "$maps" --out "$folder"
  vqfast report --scores "$folder"
  folders+=("$folder")
  maps=npy
done
vqfast report --scores "${folders[@]}" --out "$out/comparison"
python - "$out/comparison/comparison.json" "${folders[@]}" <<'PY'
import json, sys
for name, m in json.load(open(sys.argv[1])).items():
    print(f"{name}: image AUROC {m['image_auroc']:.3f}, pixel AUROC {m['pixel_auroc']:.3f}, AUPRO {m['aupro']:.3f}, "
          f"{m['ms_per_image']:.1f} ms an image")
for folder in sys.argv[2:]:
    per_class = json.load(open(f"{folder}/metrics.json"))["per_class"]
    print(folder, "; ".join(f"{c} ({v['images']}): {v['image_auroc']:.3f} / {v['pixel_auroc']:.3f} / {v['aupro']:.3f}"
                           for c, v in per_class.items()))
PY
