#!/usr/bin/env bash
# The remote-code files under every supported transformers, each in its own venv where `lsg_bart` is not
# installed: tests/remote_code (parity fixtures, every Auto class, generate, a Trainer step, save/load, the
# pipeline), then each version loads the checkpoints that the others saved. Last, a transformers below the range
# must be refused with a one-line error.
#
#   bash .ci/version_matrix.sh                 # the default matrix below
#   bash .ci/version_matrix.sh 4.53.3 5.12.1   # chosen versions ("newest" = the newest on the registry)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
TORCH=torch==2.13.0
BELOW_RANGE=4.45.2
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(4.46.3 4.51.3 4.57.6 5.0.0 5.10.4 newest)
EXCHANGE=$(mktemp -d -t lsg-version-exchange.XXXXXX)
OUTSIDE=$(mktemp -d -t lsg-version-cwd.XXXXXX)  # a working directory from which `lsg_bart` is not importable
trap 'rm -rf "$EXCHANGE" "$OUTSIDE"' EXIT

venv_for() {  # venv_for VERSION: a venv with torch (CPU) and that transformers; prints its path
    local version=$1 spec dir
    spec="transformers==$version"
    [ "$version" = newest ] && spec=transformers
    dir="$REPO/.venv-matrix/$version"
    if [ ! -x "$dir/bin/pytest" ] || [ "$version" = newest ]; then
        python3 -m venv "$dir"
        "$dir/bin/pip" install -q --disable-pip-version-check "$TORCH" 2>&1 | grep -v "is ignored" >&2 || true
        "$dir/bin/pip" install -q --disable-pip-version-check --upgrade "$spec" accelerate pytest safetensors \
            2>&1 | grep -v "is ignored" >&2 || true
    fi
    echo "$dir"
}

run_tests() {  # run_tests VENV PYTEST_ARGS...: tests/remote_code alone, the suite's conftest left out
    local dir=$1
    shift
    (cd "$OUTSIDE" && LSG_VERSION_EXCHANGE="$EXCHANGE" "$dir/bin/pytest" -q -p no:cacheprovider \
        --rootdir "$REPO/tests/remote_code" --confcutdir "$REPO/tests/remote_code" "$REPO/tests/remote_code" "$@")
}

declare -A VENVS
for version in "${VERSIONS[@]}"; do
    dir=$(venv_for "$version")
    VENVS[$version]=$dir
    installed=$("$dir/bin/python" -c "import transformers; print(transformers.__version__)")
    echo "== transformers $installed ($version)"
    if (cd "$OUTSIDE" && "$dir/bin/python" -c "import lsg_bart" 2>/dev/null); then
        echo "lsg_bart is importable in $dir: the remote-code tests would not test the copied files" >&2
        exit 1
    fi
    run_tests "$dir"
done

echo "== every version loads the checkpoints the others saved: $(ls "$EXCHANGE" | tr '\n' ' ')"
for version in "${VERSIONS[@]}"; do
    run_tests "${VENVS[$version]}" -k checkpoints_saved_under_other_versions
done

echo "== transformers $BELOW_RANGE (below the range) is refused in one line"
dir=$(venv_for "$BELOW_RANGE")
folder="$OUTSIDE/legacy"
cp -r "$REPO/tests/fixtures/parity/norm" "$folder"
for name in $(python3 -c 'import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
print(*next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "REMOTE_CODE_FILES"))' "$REPO/lsg_bart/__init__.py"); do
    cp "$REPO/lsg_bart/$name" "$folder"
done
(cd "$OUTSIDE" && HF_HUB_OFFLINE=1 HF_HOME="$OUTSIDE/hf" "$dir/bin/python" - "$folder" "$BELOW_RANGE" <<'EOF'
import sys

from transformers import AutoModelForSeq2SeqLM

folder, installed = sys.argv[1:]
try:
    AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
except ImportError as error:
    message = str(error)
    print(message)
    assert "\n" not in message and f"transformers {installed}" in message and "transformers>=4.46" in message
else:
    raise SystemExit(f"transformers {installed} loaded the checkpoint: it should have been refused")
EOF
)
echo "version matrix: ${VERSIONS[*]} and the refusal below the range passed"
