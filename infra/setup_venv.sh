#!/usr/bin/env bash
# Create .venv in the repository root with everything the tests need (core + [models,train,cluster,dev]),
# in the install order verified for this environment (docs/ARCHITECTURE.md, "Environment"):
# CPU torch first, then the project under torch/torchvision constraints (also for sdist build
# environments, so sam2's build does not pull CUDA torch), then groundingdino-py without its deps
# (they would add opencv-python next to opencv-python-headless).
# Re-running is a no-op while .venv is newer than pyproject.toml.
#
# The container images (infra/Dockerfile) run this same script with
#   PAIRMINE_EXTRAS   the extras to install (default: models,train,cluster,dev; images: models,train,cluster)
#   TORCH_INDEX_URL   where torch comes from (default: the configured index, which gives the CPU build
#                     here; the CUDA image: https://download.pytorch.org/whl/cu130)
#   PAIRMINE_VENV     where the venv goes (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PAIRMINE_VENV:-.venv}
extras=${PAIRMINE_EXTRAS:-models,train,cluster,dev}
stamp=$venv/.pairmine-installed
if [[ -f $stamp && $stamp -nt pyproject.toml && $stamp -nt infra/constraints.txt ]]; then
    exit 0
fi
python=${PYTHON:-python3.11}
echo "setting up $venv with $($python --version) (about 3 minutes the first time)"
"$python" -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip install -q -U "pip==26.3"
pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL" "torchvision==0.28.0"} "torch==2.13.0"
export PIP_CONSTRAINT=$PWD/infra/constraints.txt
export PIP_BUILD_CONSTRAINT=$PWD/infra/constraints.txt
export SAM2_BUILD_CUDA=0
pip install -q -e ".[$extras]"
pip install -q --no-deps "groundingdino-py==0.4.0" "supervision==0.6.0"
touch "$stamp"
echo "environment ready: $venv"
