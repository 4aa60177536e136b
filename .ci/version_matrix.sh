#!/usr/bin/env bash
# The remote-code files under every supported Python, torch and transformers, each environment in its own venv
# where `lsg_bart` is not installed: tests/remote_code (parity fixtures, every Auto class, generate, Trainer steps,
# save/load, the pipeline), then each environment loads the checkpoints that the others saved: with save_pretrained,
# and with the converter (run from the source tree in a process of its own), whose tokenizer every environment loads
# with AutoTokenizer as transformers' own class, never asked about remote code (under transformers 4 without
# trust_remote_code: 4.46.3 reads the newest's). Two axes:
#   - transformers: each version in TRANSFORMERS_VERSIONS on Python 3.11 with torch 2.13.0 (the CPU build on disk);
#   - Python x torch: each ENVIRONMENTS entry ("python torch transformers"), torch from the registry (CUDA builds,
#     several GB each, run here on the CPU); there the package's main job (lsg-bart-demo: build, convert, load
#     with trust_remote_code, encode, generate) runs too, from the source tree.
# Last, a transformers, a Python and a torch below the range must each be refused with a one-line error.
#
#   bash .ci/version_matrix.sh                 # the default matrix below
#   bash .ci/version_matrix.sh 4.53.3 5.12.1   # chosen transformers versions only ("newest" = the newest)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
TORCH=torch==2.13.0
BELOW_RANGE=4.45.2
TRANSFORMERS_VERSIONS=("$@")
ENVIRONMENTS=()
if [ ${#TRANSFORMERS_VERSIONS[@]} -eq 0 ]; then
    TRANSFORMERS_VERSIONS=(4.46.3 4.51.3 4.57.6 5.0.0 5.10.4 newest)
    # The oldest Python with the oldest torch and transformers; a middle one; the newest of all three, unpinned.
    ENVIRONMENTS=("3.9 2.1.2 4.46.3" "3.10 2.4.1 4.57.6" "3.13 newest newest")
fi
EXCHANGE=$(mktemp -d -t lsg-version-exchange.XXXXXX)
OUTSIDE=$(mktemp -d -t lsg-version-cwd.XXXXXX)  # a working directory from which `lsg_bart` is not importable
trap 'rm -rf "$EXCHANGE" "$OUTSIDE"' EXIT

python_for() {  # python_for 3.9: that Python's interpreter, from PATH or from pyenv
    local version=$1 found
    if command -v "python$version" >/dev/null && "python$version" -c "" 2>/dev/null; then
        command -v "python$version"
        return
    fi
    found=$(pyenv root 2>/dev/null)/versions/$(pyenv versions --bare 2>/dev/null | grep "^$version\." | tail -1)
    [ -x "$found/bin/python$version" ] || { echo "Python $version not found (PATH or pyenv)" >&2; exit 1; }
    echo "$found/bin/python$version"
}

spec() {  # spec PACKAGE VERSION: a pip requirement ("newest" = unpinned)
    if [ "$2" = newest ]; then echo "$1"; else echo "$1==$2"; fi
}

venv_for() {  # venv_for NAME PYTHON TORCH_SPEC TRANSFORMERS_SPEC [EXTRA...]: a venv with those; prints its path
    local name=$1 python=$2 torch_spec=$3 transformers_spec=$4 dir
    shift 4
    dir="$REPO/.venv-matrix/$name"
    if [ ! -x "$dir/bin/pytest" ] || [[ "$name" == *newest* ]]; then
        "$python" -m venv "$dir"
        # PIP_CONFIG_FILE=/dev/null: no machine-wide cap on the torch release.
        PIP_CONFIG_FILE=/dev/null "$dir/bin/pip" install -q --disable-pip-version-check --upgrade "$torch_spec" \
            "$transformers_spec" accelerate pytest safetensors "$@" 2>&1 | grep -v "is ignored" >&2 || true
    fi
    echo "$dir"
}

run_tests() {  # run_tests VENV PYTEST_ARGS...: tests/remote_code alone, the suite's conftest left out
    local dir=$1
    shift
    (cd "$OUTSIDE" && LSG_VERSION_EXCHANGE="$EXCHANGE" "$dir/bin/pytest" -q -p no:cacheprovider \
        --rootdir "$REPO/tests/remote_code" --confcutdir "$REPO/tests/remote_code" "$REPO/tests/remote_code" "$@")
}

describe() {  # describe VENV: its Python, torch and transformers versions, after checking lsg_bart is not there
    local dir=$1
    if (cd "$OUTSIDE" && "$dir/bin/python" -c "import lsg_bart" 2>/dev/null); then
        echo "lsg_bart is importable in $dir: the remote-code tests would not test the copied files" >&2
        exit 1
    fi
    (cd "$OUTSIDE" && "$dir/bin/python" -c "import sys, torch, transformers
print(f'Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}')")
}

VENVS=()
SYSTEM_PYTHON=$(python_for 3.11)
for version in "${TRANSFORMERS_VERSIONS[@]}"; do
    dir=$(venv_for "$version" "$SYSTEM_PYTHON" "$TORCH" "$(spec transformers "$version")")
    VENVS+=("$dir")
    echo "== $(describe "$dir") ($version)"
    run_tests "$dir"
done

for environment in "${ENVIRONMENTS[@]}"; do
    read -r python torch_version transformers_version <<<"$environment"
    extra=()
    # torch before 2.3 was built against NumPy 1.
    [ "$torch_version" != newest ] && [ "$(printf '%s\n' "$torch_version" 2.3 | sort -V | head -1)" != 2.3 ] &&
        extra=("numpy<2")
    dir=$(venv_for "py$python-torch$torch_version-transformers$transformers_version" "$(python_for "$python")" \
        "$(spec torch "$torch_version")" "$(spec transformers "$transformers_version")" "${extra[@]}")
    VENVS+=("$dir")
    echo "== $(describe "$dir") ($environment)"
    run_tests "$dir"
    echo "-- the package's demo (converter, loading, encoder, generate) from the source tree"
    (cd "$OUTSIDE" && PYTHONPATH="$REPO" HF_HUB_OFFLINE=1 HF_HOME="$OUTSIDE/hf" "$dir/bin/python" -m lsg_bart.demo \
        --output_dir "$OUTSIDE/demo-$python" >/dev/null)
done

echo "== every environment loads the checkpoints the others saved: $(ls "$EXCHANGE" | grep -vx converted | tr '\n' ' ')"
for dir in "${VENVS[@]}"; do
    run_tests "$dir" -k checkpoints_saved_under_other_versions
done

echo "== transformers $BELOW_RANGE (below the range) is refused in one line"
dir=$(venv_for "$BELOW_RANGE" "$SYSTEM_PYTHON" "$TORCH" "$(spec transformers "$BELOW_RANGE")")
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

echo "== Python 3.8 (below the range) is refused in one line, before torch or transformers are imported"
# The remote-code files import compat.py first; Python 3.8 has neither torch nor transformers installed here.
(cd "$OUTSIDE" && "$(python_for 3.8)" - "$REPO/lsg_bart/compat.py" <<'EOF'
import runpy
import sys

try:
    runpy.run_path(sys.argv[1])
except ImportError as error:
    message = str(error)
    print(message)
    assert "\n" not in message and "Python 3.8." in message and "Python>=3.9" in message, message
else:
    raise SystemExit("Python 3.8 ran compat.py: it should have been refused")
EOF
)
echo "version matrix passed: transformers ${TRANSFORMERS_VERSIONS[*]} on Python 3.11 and torch 2.13.0;" \
    "${ENVIRONMENTS[*]:-no Python x torch environments}; the refusals below the range"
