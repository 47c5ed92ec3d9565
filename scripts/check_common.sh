# Sourced by the CI checks that build venvs (check_wheel.sh, check_export_kit.sh), from the
# repository root: PYTHON, DATA (PYENGINE_DATA, default ../shared/data/cifar10, made absolute)
# and WORK, a fresh folder removed on exit (kept and printed with KEEP=1).
PYTHON=${PYTHON:-python3}
DATA=$(cd "${PYENGINE_DATA:-../shared/data/cifar10}" && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pyengine-$1.XXXXXX")
if [[ ${KEEP:-0} == 1 ]]; then echo "$1: work folder $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
