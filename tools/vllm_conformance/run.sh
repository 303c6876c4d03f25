#!/usr/bin/env bash
# Conformance check: vLLM's own tests/v1/core/test_scheduler.py (of the installed vLLM version)
# against stock vLLM and against the lamps plug-in with the vllm, lamps and program policies;
# prints a table test x column and, for every test that fails on a plug-in column, a probe that
# drives its set-up to the end (every request finished? every block back?).  docs/vllm.md,
# "Conformance with vLLM's scheduler tests", has the result and how to read it.
#
# vLLM's test file is not part of this project: it is taken from the installed version's source
# release on PyPI (pip download --no-binary), into OUTDIR/vllm_tests.  Nothing is downloaded from
# a model hub: the file's model, facebook/opt-125m, is served from hf_home/ (its published config
# only; the scheduler needs no weights).
#
# Usage:  tools/vllm_conformance/run.sh [OUTDIR]        (default: a fresh temporary folder)
# Env:    COLUMNS_TO_RUN="stock vllm lamps program"   PYTEST_ARGS="-k priority"
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUTDIR="${1:-$(mktemp -d)}"
COLUMNS_TO_RUN="${COLUMNS_TO_RUN:-stock vllm lamps program}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
VERSION="$(python -c 'import vllm; print(vllm.__version__)')"

# vLLM's tests for the installed version, from its source release.
TESTS="$OUTDIR/vllm_tests"
if [ ! -f "$TESTS/tests/v1/core/test_scheduler.py" ]; then
  SRC="$OUTDIR/sdist"; mkdir -p "$SRC"
  # The sdist itself, from PyPI's simple index (pip download --no-binary would build its
  # metadata, which needs a CUDA toolchain).
  python - "$VERSION" "$SRC/vllm-$VERSION.tar.gz" <<'PY'
import re, sys, urllib.parse, urllib.request
version, dest = sys.argv[1], sys.argv[2]
index = "https://pypi.org/simple/vllm/"
with urllib.request.urlopen(index, timeout=60) as r:
    page = r.read().decode()
name = re.escape(f"vllm-{version}.tar.gz")
href = re.search(rf'href="([^"]*{name}[^"]*)"', page)
if href is None:
    sys.exit(f"no source release vllm-{version}.tar.gz on {index}")
urllib.request.urlretrieve(urllib.parse.urljoin(index, href.group(1).replace("&amp;", "&")), dest)
PY
  tar xzf "$SRC"/vllm-"$VERSION".tar.gz -C "$SRC"
  from="$SRC/vllm-$VERSION/tests"
  for f in __init__.py v1/__init__.py v1/core/__init__.py v1/core/utils.py \
           v1/core/test_scheduler.py v1/core/test_prefix_caching.py \
           v1/kv_connector/__init__.py v1/kv_connector/unit/__init__.py \
           v1/kv_connector/unit/utils.py; do
    mkdir -p "$(dirname "$TESTS/tests/$f")"
    if [ -f "$from/$f" ]; then cp "$from/$f" "$TESTS/tests/$f"; else : > "$TESTS/tests/$f"; fi
  done
fi
cp "$HERE/conftest.py" "$TESTS/conftest.py"

export HF_HOME="$HERE/hf_home" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONDONTWRITEBYTECODE=1 VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-WARNING}"
unset LAMPS_POLICY_OPTIONS LAMPS_STATS_FILE LAMPS_STEP_LOG || true
{
  echo "vllm: $VERSION"
  echo "lamps-agent: $(git -C "$ROOT" log -1 --format='%h %s' 2>/dev/null || echo n/a)"
  echo "test_file_sha256: $(sha256sum "$TESTS/tests/v1/core/test_scheduler.py" | cut -c1-16)"
} | tee "$OUTDIR/meta.txt"

eval "EXTRA=(${PYTEST_ARGS:-})"
cd "$TESTS"
for col in $COLUMNS_TO_RUN; do
  if [ "$col" = stock ]; then target=stock; policy=""; else target=plugin; policy="$col"; fi
  echo "== $col"
  set +e
  env CONFORMANCE_TARGET="$target" CONFORMANCE_OUT="$OUTDIR/$col.json" \
      ${policy:+LAMPS_POLICY=$policy} PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
      python -m pytest -p no:xdist -p no:cacheprovider -q -rN --tb=line \
      tests/v1/core/test_scheduler.py "${EXTRA[@]}" > "$OUTDIR/$col.log" 2>&1
  echo "   $(grep -E "[0-9]+ (passed|failed)" "$OUTDIR/$col.log" | tail -1)"
  set -e
done
cd "$HERE"
python "$HERE/table.py" "$OUTDIR" | tee "$OUTDIR/table.md"
echo "== probes"
VLLM_TESTS="$TESTS" VLLM_LOGGING_LEVEL=ERROR PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
  python "$HERE/probes.py" 2>"$OUTDIR/probes.log" | grep '^|' | tee "$OUTDIR/probes.md"
echo "wrote $OUTDIR"
