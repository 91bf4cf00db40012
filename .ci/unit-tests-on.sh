#!/usr/bin/env bash
# Run the tests that need no live system on one more Python, in its own venv:
#   .ci/unit-tests-on.sh 3.10
# The package claims Python >= 3.10; CI runs the oldest and the newest it
# claims (3.10 and 3.13, from pyenv) beside the 3.11 of the main run.
set -euo pipefail
cd "$(dirname "$0")/.."
minor=$1
version=$(pyenv versions --bare | grep -E "^${minor//./\\.}\.[0-9]+$" | sort -V | tail -1)
[ -n "$version" ] || { echo "unit-tests-on.sh: no Python $minor in pyenv" >&2; exit 1; }
venv=${TMPDIR:-/tmp}/dask-adaptive-venv-$version
[ -x "$venv/bin/python" ] || PYENV_VERSION=$version python -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  -e ".[test,all]" -e docs/examples/dask-adaptive-inprocess \
  -e docs/examples/dask-adaptive-marathon
# the live systems are the main run's; their markers are left out here
env -u DASK_ADAPTIVE_LIVE "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  -m "not slurm and not sge and not pbs and not ssh and not oar and not benchmark" \
  > "${TMPDIR:-/tmp}/unit-tests-$version.log" 2>&1 \
  || { tail -n 60 "${TMPDIR:-/tmp}/unit-tests-$version.log"; echo "Python $version: tests failed" >&2; exit 1; }
tail -n 1 "${TMPDIR:-/tmp}/unit-tests-$version.log" | sed "s/^/Python $version: /"
