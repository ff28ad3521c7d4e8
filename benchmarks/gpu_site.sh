#!/usr/bin/env bash
# THE one command that prepares a GPU run (docs/gpu.md): the Python packages the study needs that the GPU image
# lacks — pydantic, optuna, ray and their dependencies — for CPython 3.12 / manylinux x86_64, unpacked and
# xz-compressed as ONE archive, .gpu_site/site.tar.xz (~35 MB; xz packs the .so files far better than the wheels'
# zip, and the tree that travels to the GPU machine is capped at 64 MiB).
#
# 1. Here, once (needs PyPI; ~100 MB download; reruns say "up to date" until requirements.lock or this file change):
#        benchmarks/gpu_site.sh                     # or: make gpu-site     (PY=<python with pip> to choose one)
#        benchmarks/gpu_site.sh --list              # just print the pins it would bundle
# 2. Carry it: the device tool's run(..., carry=[".gpu_site"]) — .gpu_site/ is git-ignored, so it travels only so.
# 3. On the GPU machine, first in the command (repository root):
#        mkdir -p /tmp/site && tar -xJf .gpu_site/site.tar.xz -C /tmp/site && export PYTHONPATH=$PWD/src:/tmp/site
#
# Which benchmarks/*.py need it: each script's docstring says, and docs/gpu.md has the table (the CLI, the study
# engine, training, data and drift code import pydantic; lorascope.weights and lorascope.serve do not).
# Left out, because the image ('cuda', KINDS.md "Python packages already there") has them: torch, numpy,
# transformers, peft, safetensors, tokenizers, huggingface_hub, scipy, pandas, statsmodels, patsy,
# scikit-learn, joblib, threadpoolctl, matplotlib (+cycler, fonttools, kiwisolver, pyparsing, pillow,
# contourpy, python-dateutil, six), jinja2, markupsafe, pyyaml, tqdm, psutil, msgpack, click, filelock,
# packaging, protobuf, requests, rich, typer. The driver's preflight prints where each module came from.
# Ray is trimmed: jars (Java), rllib, llm, serve, tune, train, data are not used by the study's executor
# (ray.init, ray.remote, ray.cluster_utils, NodeAffinitySchedulingStrategy); tested with
# tests/test_ray_executor.py against the same trim of the cp311 wheel.
# Versions: read from requirements.lock (the same pins as the CPU venv). Not in the image and needed:
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
PYVER=${PYVER:-3.12}
NAMES=(
  pydantic pydantic_core annotated-types typing-inspection typing_extensions
  optuna SQLAlchemy alembic Mako colorlog
  ray jsonschema jsonschema-specifications referencing rpds-py
  attrs
)
PKGS=()
for n in "${NAMES[@]}"; do
  pin=$(grep -i -m1 "^${n}==" requirements.lock || true)
  [ -n "$pin" ] || { echo "gpu_site.sh: $n is not pinned in requirements.lock" >&2; exit 1; }
  PKGS+=("$pin")
done
TRIM=(ray/jars ray/rllib ray/llm ray/serve ray/tune ray/train ray/data)
OUTDIR=${OUTDIR:-.gpu_site}
if [ "${1:-}" = "--list" ]; then printf '%s\n' "${PKGS[@]}"; exit 0; fi
# Up to date? The stamp is a hash of the pins, the trim, the Python version and this script.
stamp=$(printf '%s\n' "${PKGS[@]}" "${TRIM[@]}" "$PYVER" | cat - "$0" | sha256sum | cut -c1-16)
if [ -z "${FORCE:-}" ] && [ -f "$OUTDIR/site.tar.xz" ] && [ "$(cat "$OUTDIR/STAMP" 2>/dev/null)" = "$stamp" ]; then
  echo "$OUTDIR/site.tar.xz is up to date ($(du -h "$OUTDIR/site.tar.xz" | cut -f1)); FORCE=1 rebuilds it"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/whl" "$work/site" "$OUTDIR"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$work/whl" "${PKGS[@]}"
for w in "$work"/whl/*.whl; do
  "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$work/site"
done
for t in "${TRIM[@]}"; do rm -rf "$work/site/$t"; done
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
# Executables inside ray (raylet, gcs_server) must stay executable: zipfile drops the mode bits.
find "$work/site/ray/core/src" -type f -exec chmod +x {} + 2>/dev/null || true
chmod -R u+rwX,go+rX "$work/site"
(cd "$work/whl" && ls -1 *.whl) > "$OUTDIR/MANIFEST.txt"
printf 'trimmed: %s\n' "${TRIM[*]}" >> "$OUTDIR/MANIFEST.txt"
XZ_OPT=${XZ_OPT:--9 -T0} tar -C "$work/site" -cJf "$OUTDIR/site.tar.xz" .
echo "$stamp" > "$OUTDIR/STAMP"
ls -l "$OUTDIR/site.tar.xz"
du -sh "$work/site" | sed 's/^/unpacked: /'
