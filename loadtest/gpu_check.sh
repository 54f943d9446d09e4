#!/usr/bin/env bash
# GPU check: the figures docs/performance.md lists as GPU figures, on a machine with an NVIDIA GPU,
# in under ten minutes. Each step writes its JSON under $OUT as soon as it ends; a failed step is
# recorded (rc and the end of its log) and the next one still runs. The last line says what was written.
#
#   bash loadtest/gpu_check.sh                 # from the repository root, after `make install`
#   PY=python3 OUT=dir TAGS=100000 TRAIN_USERS=1024 bash loadtest/gpu_check.sh
#
# 0. installs the `gpu` extra (onnxruntime-gpu, faiss-gpu) in place of the CPU wheels, unless
#    both already offer CUDA (a provisioned image, or a PYTHONPATH prepared by the caller);
# 1. `utpm bench model --preset industrial`: ONNX Runtime's CUDA provider against PyTorch on CUDA;
# 2. `utpm bench index --tags 1000000 --kind ivf`: exact search on the CPU and on the GPU, and IVF
#    tuned to recall@50 >= 0.95 on the GPU, over 1M x 128 structured tags;
#    `python -m loadtest.gpu_exact`: the same exact search with PyTorch on the GPU (a reference for
#    when the faiss build has no kernels for the GPU, as faiss-gpu-cu12 1.14.1 on an H200; see
#    `python -m loadtest.gpu_archs WHEEL` for what a wheel carries);
# 3. the benchmark bundle of $MODEL at $TAGS tags (trained on $TRAIN_USERS users: what a request costs does
#    not depend on how long the model trained), then `utpm bench serve` on it at 16 and 64 users,
#    with ONNX Runtime on the GPU and then on the CPU cores.
# Benchmark commands never edit the docs: `utpm bench report` renders gpu_check.json into them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-artifacts/gpu_check}
TAGS=${TAGS:-100000}
INDEX_TAGS=${INDEX_TAGS:-1000000}
TRAIN_USERS=${TRAIN_USERS:-1024}
MODEL=${MODEL:-utpm-hist}  # the benchmark bundle's model: utpm-hist (the default) or utpm (the paper's)
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
ROOT=${ROOT:-artifacts/bench-gpu}
STEPS=" ${STEPS:-model index exact-torch bundle serve serve-cpu} "  # a subset reruns only those
mkdir -p "$OUT" "$ROOT"
UTPM=("$PY" -m utpm_cli.main)
export PYTHONUNBUFFERED=1

has_cuda() {
  "$PY" - <<'EOF'
import sys
import faiss
import onnxruntime as ort
ok = "CUDAExecutionProvider" in ort.get_available_providers() and getattr(faiss, "get_num_gpus", lambda: 0)() > 0
sys.exit(0 if ok else 1)
EOF
}
if [ -z "${NO_INSTALL:-}" ] && ! has_cuda; then
  echo "installing the gpu extra (onnxruntime-gpu, faiss-gpu) in place of the CPU wheels" >&2
  "$PY" -m pip uninstall --yes --quiet onnxruntime faiss-cpu
  "$PY" -m pip install --quiet -e '.[gpu]'
  has_cuda || echo "warning: CUDA is not offered by both onnxruntime and faiss; the steps say which ran where" >&2
fi

# What this machine offers, as the steps will see it.
"$PY" - >"$OUT/environment.json" <<'EOF'
import json, os, shutil, subprocess
import faiss, numpy, onnxruntime as ort
smi = "no nvidia-smi"
if shutil.which("nvidia-smi"):
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
print(json.dumps({"gpu": smi, "cpus": os.cpu_count(), "onnxruntime": ort.__version__,
                  "onnxruntime_providers": ort.get_available_providers(), "faiss": faiss.__version__,
                  "faiss_gpus": getattr(faiss, "get_num_gpus", lambda: 0)(), "numpy": numpy.__version__}, indent=2))
EOF
cat "$OUT/environment.json" >&2

STATUS=()
step() {  # step NAME TIMEOUT_S STDOUT_FILE COMMAND...: stderr appended to $OUT/steps.log
  local name=$1 limit=$2 stdout=$3
  shift 3
  [[ $STEPS == *" $name "* ]] || return 0
  echo "[$(date +%T)] $name: $*" | tee -a "$OUT/steps.log" >&2
  timeout "$limit" "$@" >"$stdout" 2>>"$OUT/steps.log"
  local rc=$?
  STATUS+=("$name=$rc")
  echo "[$(date +%T)] $name: exit $rc" | tee -a "$OUT/steps.log" >&2
}

step model 90 "$OUT/model.json" "${UTPM[@]}" bench model --preset industrial --iters 200 --json
step index 150 "$OUT/index.json" "${UTPM[@]}" bench index --tags "$INDEX_TAGS" --dim 128 --queries 2000 --kind ivf --no-peers --json
step exact-torch 60 "$OUT/exact-torch.json" "$PY" -m loadtest.gpu_exact
step bundle 180 "$OUT/bundle.json" "$PY" -c "
import dataclasses, json, sys
from pathlib import Path
from loadtest.bundle import Recipe, prepare_bench_bundle
Path('$ROOT/built.txt').unlink(missing_ok=True)
recipe = dataclasses.replace(Recipe.for_tags($TAGS, model='$MODEL'), train_users=$TRAIN_USERS)
b = prepare_bench_bundle(recipe, Path('$ROOT'), progress=lambda m: print(m, file=sys.stderr, flush=True))
Path('$ROOT/built.txt').write_text(f'{b.bundle} {b.payloads}\\n')
print(json.dumps(b.info))
"
read -r BUNDLE PAYLOADS <"$ROOT/built.txt" 2>/dev/null || BUNDLE=none PAYLOADS=none
step serve 240 /dev/null "${UTPM[@]}" bench serve --bundle "$BUNDLE" --payloads "$PAYLOADS" \
  --root "$ROOT" --users 16,64 --duration "$SECONDS_PER_RUN" --no-peers --no-profile --json "$OUT/serve.json"
# The same runs with ONNX Runtime on the CPU cores: what the GPU adds to the service, on one machine.
step serve-cpu 240 /dev/null "${UTPM[@]}" bench serve --bundle "$BUNDLE" --payloads "$PAYLOADS" \
  --root "$ROOT" --users 16,64 --duration "$SECONDS_PER_RUN" --no-peers --no-profile --set device=cpu \
  --json "$OUT/serve-cpu.json"

"$PY" - "$OUT" "${STATUS[@]}" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
status = dict(s.split("=") for s in sys.argv[2:])

def read(name):
    try:
        return json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None

report = {
    "kind": "gpu_check",
    "environment": read("environment"),
    "exit_codes": {k: int(v) for k, v in status.items()},
    "model": read("model"),
    "index": read("index"),
    "bundle": read("bundle"),
    "exact_torch": read("exact-torch"),
    "serve": read("serve"),
    "serve_cpu": read("serve-cpu"),
}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
ok = [k for k, v in report["exit_codes"].items() if v == 0]
print(f"gpu check: {len(ok)}/{len(status)} steps ran ({', '.join(ok) or 'none'}); wrote {out / 'gpu_check.json'}")
EOF
