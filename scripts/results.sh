#!/usr/bin/env bash
# The measured tables of docs/results.md, in order. Each `nepa compare` resumes where it
# stopped (finished runs and evaluations are kept), so this script can be rerun after an
# interruption. Needs NEPA_DATA_DIR (the folder holding cifar10-png.tar.gz).
set -euo pipefail
cd "$(dirname "$0")/.."
NEPA=${NEPA:-.venv/bin/nepa}
OUT=${OUT:-results}
table="${1:-all}"

if [[ $table == all || $table == cifar10 ]]; then
  # ViT-Tiny-class NEPA on CIFAR-10, about 30 minutes of training on 2 CPU cores.
  $NEPA compare recipes.cifar10:tiny --set train.steps=900 \
    --eval knn,linear,attentive --random-init --out "$OUT/cifar10-tiny"
fi
if [[ $table == all || $table == ablations ]]; then
  # The paper's ablations, each one change from nepa_tiny, 2 seeds.
  $NEPA compare recipes.cifar10:nepa_tiny \
    --ablate predictor.attn+eval.attn=bidirectional \
    --ablate objective.shift=false \
    --ablate objective.stop_grad=false \
    --ablate predictor.rope=false \
    --seeds 2 --eval knn,linear --random-init --out "$OUT/ablations"
fi
if [[ $table == all || $table == scans ]]; then
  # Scan orders, 3 seeds each; 400 steps so that the 18 runs fit in 2 hours on 2 cores.
  $NEPA compare recipes.cifar10:nepa_tiny --set train.steps=400 \
    --vary encoder.scan=raster,snake,zigzag,hilbert,spiral,random \
    --seeds 3 --eval knn,linear --out "$OUT/scans"
fi

# The other modalities: each tiny recipe against random init (3 seeds, three protocols) and the
# raw-input kNN floor, then a comparison of scan orders on its grid. Each table fits in under
# two hours on 2 cores.
modality() {  # modality NAME RECIPE [SCAN_RECIPE SCANS]
  local name=$1 recipe=$2 scan_recipe=${3:-} scans=${4:-}
  if [[ $table == all || $table == "$name" ]]; then
    $NEPA compare "$recipe" --seeds 3 --eval knn,linear,attentive --random-init \
      --out "$OUT/$name"
    local first
    first=$(find "$OUT/$name/runs" -mindepth 1 -maxdepth 1 -type d | sort | head -1)
    [[ -f $OUT/$name/raw_input_knn.json ]] ||
      $NEPA eval knn "$first" --raw-pixels --json "$OUT/$name/raw_input_knn.json"
  fi
  if [[ -n $scans && ($table == all || $table == "$name-scans") ]]; then
    $NEPA compare "$scan_recipe" --vary "encoder.scan=$scans" --seeds 3 --eval knn,linear \
      --out "$OUT/$name-scans"
  fi
}
modality hapt recipes/hapt.py:tiny recipes/hapt.py:independent column,raster,snake
modality fsdd recipes/fsdd.py:tiny recipes/fsdd.py:tiny raster,column,snake,hilbert
modality moving-mnist recipes/moving_mnist.py:tiny recipes/moving_mnist.py:tiny \
  raster,snake,hilbert,random
modality basic-motions recipes/hapt.py:basic_motions

# Moving MNIST's other label: the same runs evaluated on the first digit's direction (8 classes).
if [[ $table == all || $table == moving-mnist-direction ]]; then
  dir="$OUT/moving-mnist"
  for run in "$dir"/runs/base-s*; do
    for protocol in knn linear; do
      for init in "" --random-init; do
        json="$run/direction-$protocol${init:+-init}.json"
        [[ -f $json ]] || $NEPA eval "$protocol" "$run" --set data.label=direction $init --json "$json"
      done
    done
  done
  [[ -f $dir/raw_input_knn_direction.json ]] || $NEPA eval knn "$dir/runs/base-s0" --raw-pixels \
    --set data.label=direction --json "$dir/raw_input_knn_direction.json"
  ${PYTHON:-.venv/bin/python} - "$dir" <<'PY' > "$dir/direction.md"
import json, statistics, sys
from pathlib import Path

dir = Path(sys.argv[1])
print("| protocol | pretrained top-1 % | random init top-1 % |\n|---|---|---|")
for protocol in ("knn", "linear"):
    cells = []
    for suffix in ("", "-init"):
        runs = sorted(dir.glob(f"runs/base-s*/direction-{protocol}{suffix}.json"))
        tops = [100 * json.loads(p.read_text())["top1"] for p in runs]
        cells.append(f"{statistics.mean(tops):.2f} ± {statistics.stdev(tops):.2f} ({len(tops)} seeds)")
    print(f"| {protocol} | {cells[0]} | {cells[1]} |")
raw = json.loads((dir / "raw_input_knn_direction.json").read_text())
print(f"\nkNN on the raw pixels: {100 * raw['top1']:.2f}")
PY
fi

# NEPA against JEPA and the discrete next-token baseline at equal training FLOPs (issue 13).
if [[ $table == all || $table == fsdd-objectives ]]; then
  $NEPA compare recipes/fsdd.py:tiny recipes/fsdd.py:jepa_tiny recipes/fsdd.py:token_tiny \
    --equal-flops --seeds 3 --eval knn,linear --random-init --out "$OUT/fsdd-objectives"
fi
if [[ $table == all || $table == cifar10-objectives ]]; then
  $NEPA compare recipes/cifar10.py:nepa_tiny recipes/cifar10.py:jepa_tiny \
    recipes/cifar10.py:token_tiny --equal-flops --seeds 3 --eval knn,linear,attentive \
    --random-init --out "$OUT/cifar10-objectives"
fi
