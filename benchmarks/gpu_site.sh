#!/usr/bin/env bash
# Rebuild .gpu_site/site.tar.xz: the Python packages the study needs on the GPU machines (CPython 3.12,
# manylinux x86_64, no pip index there) that their image lacks, unpacked and xz-compressed as ONE archive
# (xz packs the .so files far better than the wheels' zip; the tree that travels is capped at 64 MiB).
#
#   benchmarks/gpu_site.sh            # -> .gpu_site/site.tar.xz (+ MANIFEST.txt), about 35 MB
#   # on the GPU machine (benchmarks/ray_multigpu.py):
#   mkdir -p /tmp/site && tar -xJf .gpu_site/site.tar.xz -C /tmp/site && export PYTHONPATH=$PWD/src:/tmp/site
#
# Left out, because the image ('cuda', KINDS.md "Python packages already there") has them: torch, numpy,
# transformers, peft, safetensors, tokenizers, huggingface_hub, scipy, pandas, statsmodels, patsy,
# scikit-learn, joblib, threadpoolctl, matplotlib (+cycler, fonttools, kiwisolver, pyparsing, pillow,
# contourpy, python-dateutil, six), jinja2, markupsafe, pyyaml, tqdm, psutil, msgpack, click, filelock,
# packaging, protobuf, requests, rich, typer. The driver's preflight prints where each module came from.
# Ray is trimmed: jars (Java), rllib, llm, serve, tune, train, data are not used by the study's executor
# (ray.init, ray.remote, ray.cluster_utils, NodeAffinitySchedulingStrategy); tested with
# tests/test_ray_executor.py against the same trim of the cp311 wheel.
# Versions: requirements.lock. Not in the image and needed:
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
PKGS=(
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
  optuna==5.0.0 SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3 colorlog==6.12.0
  ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  attrs==26.1.0
)
TRIM=(ray/jars ray/rllib ray/llm ray/serve ray/tune ray/train ray/data)
OUTDIR=${OUTDIR:-.gpu_site}
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
ls -l "$OUTDIR/site.tar.xz"
du -sh "$work/site" | sed 's/^/unpacked: /'
