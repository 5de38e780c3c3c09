#!/usr/bin/env bash
# Build the peers' own pinned venv (DeepCTR-Torch 0.3.0 and FuxiCTR 2.3.10 on torch 2.13.0 CPU).
# Separate from the project's .venv and from requirements.txt: the peers are only benchmarked.
# Every package is pinned and installed with --no-deps, so pip cannot bring in another torch,
# tensorflow, or a release that breaks a peer (FuxiCTR 2.3.10 needs polars < 2).
# usage: bash benchmarks/peers/setup.sh [VENV]   (default: benchmarks/peers/.venv-peers, gitignored)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${1:-$HERE/.venv-peers}"
if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.installed" ]; then
  echo "peers venv ready: $VENV"; exit 0
fi
python3 -m venv "$VENV"
pip_install() { "$VENV/bin/pip" install --quiet --no-deps "$@"; }

# torch and what it imports (torch 2.13.0 needs setuptools >= 77; a 3.11 venv ships 65.5)
pip_install torch==2.13.0 setuptools==84.2.1 filelock==4.3.1 fsspec==2026.9.0 Jinja2==3.1.6 \
  MarkupSafe==3.0.4 mpmath==1.3.0 networkx==3.6.1 sympy==1.14.0 typing_extensions==4.16.0
# the two peers, without their (loose or missing) requirement lists
pip_install deepctr-torch==0.3.0 fuxictr==2.3.10
# what importing and training them needs: scientific stack, DeepCTR-Torch's undeclared `requests`,
# FuxiCTR's polars/pyarrow/Ray Data preprocessing and its config/model helpers
pip_install numpy==2.4.6 scipy==1.17.1 scikit-learn==1.9.1 joblib==1.6.0 threadpoolctl==3.8.0 \
  pandas==3.1.1 python-dateutil==4.0.0 tzdata==2026.6 tqdm==4.70.1 PyYAML==6.0.4 \
  requests==2.34.2 certifi==2026.10.19.post1 charset-normalizer==3.5.3 idna==3.20 urllib3==2.8.0 \
  h5py==3.16.0 pyarrow==26.0.1 polars==1.44.2 polars-runtime-32==1.44.2 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  ray==2.60.0 attrs==26.1.0 click==8.5.1 cloudpickle==3.1.3 jsonschema==4.26.0 \
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 msgpack==1.2.4 \
  narwhals==2.29.0 packaging==26.4 protobuf==7.36.2
"$VENV/bin/pip" check

# smoke test: both peers import, and DeepCTR-Torch's import-time PyPI check is kept offline
"$VENV/bin/python" - <<'PY'
import requests
requests.get = lambda *a, **k: (_ for _ in ()).throw(OSError("offline"))
import torch, deepctr_torch, fuxictr, polars
from deepctr_torch.models import DeepFM
from fuxictr.preprocess import FeatureProcessor, build_dataset
from fuxictr.pytorch.dataloaders import RankDataLoader
assert torch.__version__.startswith("2.13.0"), torch.__version__
print("peers venv ok: torch", torch.__version__, "deepctr-torch", deepctr_torch.__version__,
      "fuxictr", fuxictr.__version__, "polars", polars.__version__)
PY
touch "$VENV/.installed"
