#!/usr/bin/env bash
# The benchmark environment for an offline GPU host, built on a networked CPU machine (docs/benchmarks.md, "実行環境").
#
# For: GPU machines with no network whose image already has Python 3.12, torch 2.11.0+cu130, numpy, pandas,
# pyarrow, numba and the NVIDIA libraries (the H100/H200 machines of docs/benchmarks.md). Everything else
# that verl 0.9.1 GRPO and SFT need is resolved for Python 3.12 here, installed into one folder and packed.
# Time: about 10 min, plus about 55 min for flash-attn on 2 cores (SKIP_FLASH_ATTN=1 leaves it out;
# FLASH_ATTN_ONLY=1 builds only flash-attn).
# Needs: python3.12, and nvcc 13.x in /usr/local/cuda for flash-attn.
#
#   bash benchmarks/offline_env.sh OUT
#
# OUT/parts/ then holds pieces of at most 61 MiB (base.tar.xz.part*, vllm.tar.xz.part*, the flash-attn wheel): one piece
# and a ~1 MiB repo fit a 64 MiB transfer; the two small last pieces and the wheel fit one more (5 in all).
# On the GPU host, with the pieces in one folder:
#   for t in base vllm; do cat $t.tar.xz.part* | xz -d | tar x -C /root; done   # -> /root/site
#   python3 -m pip install --no-deps --no-index --target /root/site flash_attn-*.whl
#   export PYTHONPATH=/root/site:/root/site/nvidia_cutlass_dsl/python_packages VLLM_USE_FLASHINFER_SAMPLER=0
# (the second entry is what nvidia-cutlass-dsl's .pth file adds; pip --target leaves .pth files unread).
# base.tar.xz alone is enough for SFT; GRPO needs vllm.tar.xz too.
# A run that must outlive the remote call that starts it needs its own session (setsid nohup CMD &):
# these hosts end a call's leftover processes when it returns.
set -euo pipefail

OUT=${1:?"usage: bash benchmarks/offline_env.sh OUT (a new folder for the packed environment)"}
PY312=${PY312:-python3.12}
command -v "$PY312" >/dev/null || { echo "ERROR: $PY312 not found. Fix: install Python 3.12 or set PY312=/path/to/python3.12" >&2; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) && cd "$OUT"

TORCH=2.11.0 FLASH_ATTN=2.8.3
IMAGE_HAS=("torch==$TORCH" torchvision==0.26.0 torchaudio==2.11.0 triton==3.6.0)  # stood in for by empty wheels
PINS=("verl[verl-core]==0.9.1" vllm==0.24.0 ray==2.60.0 transformers==5.10.4 tokenizers==0.22.2 liger-kernel==0.8.5
      "omegaconf>=2.3" "hydra-core>=1.3")
PLATFORM=(--only-binary=:all: --python-version 3.12 --platform any --platform linux_x86_64 --platform manylinux2014_x86_64
          --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
for v in 17 24 26 27 28 29 31 32 33 34 35 36 37 38 39; do PLATFORM+=(--platform "manylinux_2_${v}_x86_64"); done
# Already on the image, or not needed for a dense model without flashinfer (VLLM_USE_FLASHINFER_SAMPLER=0).
# vLLM's nvidia-cutlass-dsl stays, as in a team's env: with it Liger picks its CuTe DSL RoPE (llm_bridge/job/verl_patches.py, patch 5).
ON_IMAGE='^(torch|torchvision|torchaudio|triton|numpy|scipy|pandas|pyarrow|pillow|numba|llvmlite|grpcio|setuptools|ninja|pybind11|tensorboard.*|nvidia-(?!cutlass-dsl).*|cuda-.*|flashinfer.*|tilelang|tokenspeed.*|quack-kernels|humming-kernels|z3-solver|torchcodec|av|opencv-python-headless|pytest.*|iniconfig|pluggy|virtualenv|distlib|python-discovery|wandb|sentry-sdk|cwevals|anthropic|mcp|mcp-types|fastapi-cloud-cli|fastar|rignore)$'

build_site() {
  echo "== resolve for Python 3.12, with the image's torch standing in as empty wheels"
  "$PY312" -m venv py312 && py312/bin/pip install -q -U pip
  mkdir -p stand-ins wheels
  py312/bin/python - "${IMAGE_HAS[@]}" <<'EOF'
import sys, zipfile
for name, version in (pin.split("==") for pin in sys.argv[1:]):
    info = f"{name}-{version}+image.dist-info"
    with zipfile.ZipFile(f"stand-ins/{name}-{version}+image-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}+image\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: offline_env\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
EOF
  # omegaconf 2.x needs antlr4 4.9, which PyPI has only as source: without this wheel the resolver falls back
  # to omegaconf 1.4 and hydra 0.11, which verl cannot import.
  py312/bin/pip wheel -q --no-deps -w stand-ins antlr4-python3-runtime==4.9.3
  py312/bin/pip install -q --dry-run --ignore-installed --report report.json --target "$OUT/unused" "${PLATFORM[@]}" \
    --find-links stand-ins "${PINS[@]}" "${IMAGE_HAS[@]/%/+image}"
  # the resolved set as exact pins, fetched by pip itself: whatever index pip is configured with, no URL here
  py312/bin/python - "$ON_IMAGE" <<'EOF' > pins.txt
import json, re, sys
for item in json.load(open("report.json"))["install"]:
    name = item["metadata"]["name"].lower().replace("_", "-")
    if not re.match(sys.argv[1], name):
        print(f"{name}=={item['metadata']['version']}")
EOF
  py312/bin/pip download -q --no-deps -d wheels "${PLATFORM[@]}" --find-links stand-ins -r pins.txt

  echo "== install into site/ and leave out what a dense model on Hopper never loads"
  rm -rf site && py312/bin/pip install -q --no-deps --no-compile --target site "${PLATFORM[@]}" wheels/*.whl
  rm -f site/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so site/vllm/_moe_C_stable_libtorch.abi3.so site/vllm/vllm-rs
  rm -rf site/vllm/third_party/deep_gemm site/vllm/third_party/fmha_sm100 site/ray/jars
  find site -name __pycache__ -prune -exec rm -rf {} +
  local vllm_only=(site/vllm site/vllm-*.dist-info site/xgrammar site/xgrammar-*.dist-info site/tvm_ffi
                   site/apache_tvm_ffi-*.dist-info)  # what GRPO needs and SFT does not
  tar cf - "${vllm_only[@]/#/--exclude=}" site | xz -T0 -6 > base.tar.xz
  tar cf - "${vllm_only[@]}" | xz -T0 -6 > vllm.tar.xz
}

build_flash_attn() {
  echo "== flash-attn $FLASH_ATTN for sm_90, bf16 and head dims 64/128 only (trim_flash_attn.py), against torch $TORCH+cu130"
  "$PY312" -m venv build-venv
  # torch with its CUDA wheels (~4 GB): their headers (cuBLAS, cuSPARSE, cuSOLVER) are ones a bare nvcc lacks
  build-venv/bin/pip install -q "torch==$TORCH" packaging ninja psutil einops wheel "setuptools<82"
  CUDA_INCLUDE=$(ls -d "$OUT"/build-venv/lib/python3.12/site-packages/nvidia/cu13/include)
  # the sdist through pip; preparing its metadata imports torch (hence build-venv, no isolation) and builds nothing
  FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE build-venv/bin/pip download -q --no-deps --no-binary flash-attn \
    --no-build-isolation -d . "flash-attn==$FLASH_ATTN"
  rm -rf "flash_attn-$FLASH_ATTN" && tar xzf "flash_attn-$FLASH_ATTN.tar.gz"
  (cd "flash_attn-$FLASH_ATTN" && ../build-venv/bin/python "$HERE/trim_flash_attn.py" \
    && PATH="$OUT/build-venv/bin:/usr/local/cuda/bin:$PATH" CUDA_HOME=/usr/local/cuda CPATH="$CUDA_INCLUDE" \
       FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS=90 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$(nproc)" NVCC_THREADS=1 \
       python setup.py -q bdist_wheel > ../flash-attn-build.log 2>&1)
  cp "flash_attn-$FLASH_ATTN"/dist/flash_attn-*.whl .
}

[ "${FLASH_ATTN_ONLY:-0}" = 1 ] || build_site
[ "${SKIP_FLASH_ATTN:-0}" = 1 ] || build_flash_attn

echo "== pieces of at most 61 MiB"
rm -rf parts && mkdir parts
for t in base vllm; do if [ -f $t.tar.xz ]; then split -b 61M -d $t.tar.xz parts/$t.tar.xz.part; fi; done
cp flash_attn-*.whl parts/ 2>/dev/null || true
ls -la parts
