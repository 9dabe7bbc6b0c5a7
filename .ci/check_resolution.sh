#!/usr/bin/env bash
# A stock `pip install .` must resolve without constraints.txt: the pip that this Python bundles, in a
# throwaway venv, PyPI as a user meets it (this machine's pip configuration and mirrors left out), a dry
# run bounded in time. A direct boto3 dependency once made it backtrack for over 15 minutes into
# ResolutionImpossible; this catches that kind of regression. A resolution that fails exits at once; the
# time limit only bounds a long backtrack. The time includes fetching the wheels (torch's are a few GB:
# this pip reads each wheel whole for its metadata), so it says so when it is over the 2-minute target.
# Usage: .ci/check_resolution.sh [EXTRAS]   (e.g. dev: checks pip install '.[dev]')
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${RESOLUTION_LIMIT_S:-900}
python=${PYTHON:-python3}
target="."
if [ $# -gt 0 ]; then target=".[$1]"; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/boneage-resolution.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
pip_version=$("$work/venv/bin/python" -m pip --version | cut -d' ' -f2)
start=$(date +%s)
if ! env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT -u PIP_REQUIRE_VIRTUALENV \
    PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 \
    timeout "$limit" "$work/venv/bin/python" -m pip install --dry-run --ignore-installed --progress-bar off \
    --report "$work/report.json" "$target" >"$work/log" 2>&1; then
  tail -n 30 "$work/log" >&2
  echo "FAILED: pip $pip_version did not resolve 'pip install $target' without constraints.txt within ${limit} s" >&2
  exit 1
fi
seconds=$(( $(date +%s) - start ))
packages=$("$work/venv/bin/python" -c "import json, sys; print(len(json.load(open(sys.argv[1]))['install']))" "$work/report.json")
echo "pip $pip_version resolved 'pip install $target' without constraints.txt: $packages packages in $seconds s"
if [ "$seconds" -gt 120 ]; then
  echo "note: over the 2-minute target; most of it is fetching wheels (a slow network or a busy machine)" >&2
fi
