#!/usr/bin/env bash
# GPU check: the figures docs/performance.md lists as "not yet measured", on a machine with an
# NVIDIA GPU, in a few minutes. Prints one JSON object (also written to $OUT/gpu_check.json).
#
#   bash loadtest/gpu_check.sh                 # from the repository root, after `make install`
#   PY=/path/to/python OUT=dir TAGS=100000 bash loadtest/gpu_check.sh
#
# 1. installs the `gpu` extra (onnxruntime-gpu, faiss-gpu-cu12) in place of the CPU wheels, which
#    provide the same modules, unless CUDA is already offered by both (a provisioned image);
# 2. `utpm bench model --preset industrial` (ONNX Runtime on CUDA against PyTorch);
# 3. `utpm bench index` at 1M x 128 (the index on the GPU; `auto` picks exact search there);
# 4. a short load run, `utpm bench serve` on a $TAGS-tag bundle (built once, ~2-3 minutes at 100k),
#    10 s per level (benchmark commands never edit the docs; `utpm bench report` does).
# It changes the Python environment it runs in (step 1): use a throwaway one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-artifacts/gpu_check}
TAGS=${TAGS:-100000}
mkdir -p "$OUT"
UTPM=("$PY" -m utpm_cli.main)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/nvidia_smi.txt"

has_cuda() {
  "$PY" - <<'EOF'
import sys
import faiss
import onnxruntime as ort
ok = "CUDAExecutionProvider" in ort.get_available_providers() and getattr(faiss, "get_num_gpus", lambda: 0)() > 0
sys.exit(0 if ok else 1)
EOF
}
if ! has_cuda; then
  echo "installing the gpu extra (onnxruntime-gpu, faiss-gpu-cu12) in place of the CPU wheels" >&2
  "$PY" -m pip uninstall --yes --quiet onnxruntime faiss-cpu
  "$PY" -m pip install --quiet -e '.[gpu]'
  has_cuda || { echo "error: CUDA is still not offered by onnxruntime and faiss; see $OUT" >&2; exit 1; }
fi

echo "[1/3] utpm bench model on CUDA" >&2
"${UTPM[@]}" bench model --preset industrial --json >"$OUT/model.json"
echo "[2/3] utpm bench index on the GPU" >&2
"${UTPM[@]}" bench index --tags 1000000 --json >"$OUT/index.json"
echo "[3/3] utpm bench serve, short run on $TAGS tags" >&2
"${UTPM[@]}" bench serve --tags "$TAGS" --users 1,16,64 --duration 10 \
  --json "$OUT/serve.json" >"$OUT/serve.md"

"$PY" - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
report = {
    "gpu": (out / "nvidia_smi.txt").read_text().strip(),
    "model": json.loads((out / "model.json").read_text()),
    "index": json.loads((out / "index.json").read_text()),
    "serve": json.loads((out / "serve.json").read_text()),
}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
print(f"wrote {out / 'gpu_check.json'}", file=sys.stderr)
EOF
