#!/usr/bin/env bash
# vLLM for the GPU machine, which reaches no package index (docs/benchmarks.md, "vLLM on the GPU"): vLLM 0.24.0 —
# the release that pins the image's torch 2.11.0 (cu130) — and the packages it imports that the image lacks, for
# CPython 3.12 / manylinux x86_64, unpacked, pruned and xz-compressed, then cut into parts that each fit in one call
# (the tree that travels is capped at 64 MiB; the archive is ~109 MiB, so it travels over two calls of one lease).
#
# 1. Here (needs PyPI; ~300 MB download, ~1 min of xz):
#        benchmarks/vllm_gpu_site.sh            # writes .vchunk1/part.00 and .vchunk2/{part.01,part.02,SHA256}
# 2. Call 1: run(..., carry=[".vchunk1"]) starting with   mkdir -p /tmp/stage && cp .vchunk1/part.* /tmp/stage/
#    Call 2 (same lease: a warm machine keeps /tmp): carry=[".vchunk2"] and start with
#        cat /tmp/stage/part.* .vchunk2/part.* > /tmp/v.tar.xz && echo "$(cat .vchunk2/SHA256)  /tmp/v.tar.xz" |
#        sha256sum -c && mkdir -p /tmp/vsite && tar -xJf /tmp/v.tar.xz -C /tmp/vsite && export PYTHONPATH=/tmp/vsite
# Both folders are git-ignored (.gitignore), so they travel only when carried.
#
# Which packages: vLLM's Requires-Dist, less what the image has (KINDS.md) and what an offline engine never imports.
# The list was found by importing the engine's modules (LLM, the v1 engine core and GPU worker, the Llama model,
# LoRA layers and Punica kernels, the FlashAttention and Triton attention backends, the sampler) in a CPU venv
# with this wheel and torch 2.11.0 until nothing was missing; xgrammar 0.2.8–0.2.9 fail to import with the pinned
# apache-tvm-ffi 0.1.9, 0.2.7 does. Left out: flashinfer (python and cubin), tilelang, nvidia-cutlass-dsl,
# quack-kernels, tokenspeed-mla, humming-kernels, fastsafetensors, nvidia-cudnn-frontend, mistral_common,
# lm-format-enforcer, outlines_core, anthropic, mcp, opentelemetry (vLLM imports them only when configured).
# Pruned from the wheel: FlashAttention 2's kernels (the H200 runs FlashAttention 3's), the MoE kernels, the Rust
# frontend binary (vllm-rs) — each imported inside a try or only on request, 125 MiB of the wheel's 267 — and the
# C++ headers under third_party/. third_party/ itself must stay: vLLM's CUDA platform probe imports its pynvml
# (without it: "Device string must not be empty"). On the machine, set VLLM_USE_FLASHINFER_SAMPLER=0 (serve_gpu.py
# does): vLLM 0.24 otherwise builds its top-k/top-p sampler from FlashInfer, which is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
PKGS=(
  vllm==0.24.0
  cachetools==8.0.2 blake3==1.0.11 fastapi==0.136.3 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5 openai==3.57.0 distro==1.9.0 jiter==0.19.0 sniffio==1.3.1
  prometheus-fastapi-instrumentator==8.1.0 diskcache==5.6.3 lark==1.2.2 partial-json-parser==0.2.1.1.post7
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 pyzmq==27.3.0
  msgspec==0.23.0 compressed-tensors==0.17.0 depyf==0.20.0 astor==0.8.1 dill==0.4.1 watchfiles==1.3.0
  python-json-logger==4.2.0 pybase64==1.5.1 cbor2==6.3.0 ijson==3.6.0 setproctitle==1.3.8 openai-harmony==0.0.8
  httpx2==2.16.2 llguidance==1.7.6 xgrammar==0.2.7 apache-tvm-ffi==0.1.9
  typing_extensions==4.16.0  # newer than the image's, for pydantic 2.14; it shadows the image's on PYTHONPATH
)
PRUNE=(vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so vllm/vllm-rs
       vllm/third_party/fmha_sm100/cutlass vllm/third_party/deep_gemm/include)
PART_BYTES=60000000  # 57.2 MiB: with the repository (~3 MiB) under the 64 MiB a call carries
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plat=()
for n in 17 24 27 28 31 34 35 38 39; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$work/whl" "${PKGS[@]}"
# pip (not a plain unzip) so that *.data/ folders land where they belong and file modes are kept
"$PY" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --target "$work/site" "$work"/whl/*.whl
for p in "${PRUNE[@]}"; do rm -rf "${work:?}/site/$p"; done
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
chmod -R u+rwX,go+rX "$work/site"
XZ_OPT=${XZ_OPT:--6 -T0} tar -C "$work/site" -cJf "$work/vsite.tar.xz" .
rm -rf .vchunk1 .vchunk2
mkdir -p .vchunk1 .vchunk2
size=$(stat -c %s "$work/vsite.tar.xz")
if [ "$size" -gt $((2 * PART_BYTES)) ]; then
  echo "vllm_gpu_site.sh: the archive is $size bytes, more than two calls carry ($((2 * PART_BYTES)))" >&2
  exit 1
fi
split -b "$PART_BYTES" -d "$work/vsite.tar.xz" "$work/part."
mv "$work/part.00" .vchunk1/
shopt -s nullglob
rest=("$work"/part.0[1-9])
[ ${#rest[@]} -eq 0 ] || mv "${rest[@]}" .vchunk2/
sha256sum "$work/vsite.tar.xz" | cut -c1-64 > .vchunk2/SHA256
ls -l .vchunk1 .vchunk2
