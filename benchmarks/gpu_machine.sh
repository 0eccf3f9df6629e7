#!/usr/bin/env bash
# The many-core and GPU benchmarks (scaling_bench.py) on a machine that has CUDA torch but cannot install
# from a package registry and has no .venv: the other packages travel as one folder.
#
#   benchmarks/gpu_machine.sh pack DIR        here: DIR/site.tar.xz (every other package, built for the
#                                              target's Python, default 3.12) and DIR/testdata (the inputs)
#   benchmarks/gpu_machine.sh run DIR [SECTION...]
#                                              there, from the repository root: unpacks DIR/site.tar.xz,
#                                              assembles the pairmine package on PYTHONPATH, then runs
#                                              scaling_bench.py once per SECTION, "SECONDS ARGS" (a time limit
#                                              and its arguments); by default the GPU stages, then the scaling
#
# pack keeps the archive small enough to travel (~55 MB): it leaves out Ray's Java jars, dashboard UI,
# RLlib, Serve and LLM packages and its binaries' symbols, transformers' models other than the BERT /
# RoBERTa text encoders GroundingDINO needs (and those its tokenizer lookup imports on the way), decord
# (PyAV is the default reader), boto3 and the trainer's packages (scaling_bench reads local files only).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: gpu_machine.sh pack|run DIR [ARGS]}
dir=${2:?usage: gpu_machine.sh pack|run DIR [ARGS]}
shift 2

pack() {
    local pyver=${PYTHON_VERSION:-3.12} site wheels
    site=$(mktemp -d) wheels=$(mktemp -d)
    local pins=(ray webdataset braceexpand pydantic pydantic-core annotated-types typing-inspection pycocotools av
                open_clip_torch ftfy wcwidth timm transformers tokenizers huggingface-hub hydra-core omegaconf
                addict yapf platformdirs jsonschema jsonschema-specifications referencing rpds-py)
    local specs=() p
    for p in "${pins[@]}"; do specs+=("$p==$(.venv/bin/pip show "$p" | awk '/^Version/{print $2}')"); done
    local platforms=()
    for p in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34; do
        platforms+=(--platform "${p}_x86_64")
    done
    .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp "${platforms[@]}" -d "$wheels" "${specs[@]}"
    .venv/bin/pip install -q --no-deps --no-compile --only-binary=:all: --python-version "$pyver" --implementation cp "${platforms[@]}" \
        --target "$site" "$wheels"/*.whl
    # Pure-Python packages installed here from source distributions (no wheels exist), copied as they are.
    local packages=.venv/lib/python3.11/site-packages
    for p in sam2 groundingdino supervision antlr4 iopath; do cp -r "$packages/$p" "$site/"; done
    rm -rf "$site"/bin "$site"/ray/{jars,rllib,serve,llm,dashboard/client}
    strip --strip-unneeded "$site"/ray/_raylet.so "$site"/ray/core/src/ray/{gcs/gcs_server,raylet/raylet}
    find "$site/transformers/models" -mindepth 1 -maxdepth 1 -type d \
        -not -regex '.*/\(auto\|bert\|roberta\|encoder_decoder\|align\|bark\)' -exec rm -rf {} +
    find "$site" -name __pycache__ -prune -exec rm -rf {} +
    mkdir -p "$dir/testdata/video"
    tar -cf - -C "$site" . | xz -9 -T0 > "$dir/site.tar.xz"
    cp -r ../shared/testdata/sa1b "$dir/testdata/"
    cp ../shared/testdata/video/*.mp4 "$dir/testdata/video/"
    rm -rf "$site" "$wheels"
    du -sh "$dir"/*
}

run() {
    local site=/tmp/pairmine-site package=/tmp/pairmine-package
    mkdir -p "$site" "$package/pairmine"
    xz -dc -T0 "$dir/site.tar.xz" | tar -xf - -C "$site"
    cp pairmine/*.py "$package/pairmine/"
    for p in operators pipelines training; do ln -sfn "$PWD/$p" "$package/pairmine/$p"; done
    export PYTHONPATH=$package:$site PYTHONUNBUFFERED=1
    mkdir -p ../shared
    [[ -e ../shared/testdata ]] || ln -s "$PWD/$dir/testdata" ../shared/testdata
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket)' || true
    python3 -P -c "import sys, torch, ray, pairmine.pipelines.syn4removal as s; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__)"
    local sections=("$@") repo=$PWD
    cd /tmp  # Ray puts the driver's working directory first on its workers' paths: not the repository's pairmine/
    # the defaults fit one 600-s device call: fp16 GPU rows with 1 and 2 actors per GPU, then 1 and 16 workers
    [[ ${#sections[@]} -gt 0 ]] || sections=("330 --workers= --gpu --precision fp16 --actors 1,2" "230 --workers=1,16")
    local section
    for section in "${sections[@]}"; do
        echo "== scaling_bench.py ${section#* } (at most ${section%% *} s)"
        # SIGINT first: the benchmark's finally blocks shut its embedded Ray down.
        # shellcheck disable=SC2086
        timeout -s INT -k 15 "${section%% *}" python3 "$repo/benchmarks/scaling_bench.py" ${section#* } || echo "== exit $? for: $section"
    done
}

"$mode" "$@"
