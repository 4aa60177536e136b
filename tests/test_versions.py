"""The supported Python, torch and transformers ranges: a clear refusal below each. The ranges themselves are
covered by the version matrix (`.ci/version_matrix.sh`), which also loads a checkpoint under a real transformers
below the range and imports the remote code under a real Python below it."""

import importlib.util
import subprocess
import sys
import types

import pytest

from conftest import REPO

from lsg_bart import compat
from lsg_bart.compat import OLDEST_SUPPORTED, OLDEST_TORCH, require_python, require_release


OLDER = [("transformers", OLDEST_SUPPORTED, v) for v in ("4.45.2", "4.38.2", "4.9.1", "3.5.1", "4.45.0.dev0")]
OLDER += [("torch", OLDEST_TORCH, v) for v in ("2.0.1", "2.0.0+cu118", "1.13.1", "1.9.0")]


@pytest.mark.parametrize("package, oldest, installed", OLDER)
def test_an_older_release_is_refused_in_one_line_naming_both_versions(package, oldest, installed):
    with pytest.raises(ImportError) as refused:
        require_release(package, installed)
    message = str(refused.value)
    assert "\n" not in message
    assert f"{package} {installed}" in message and f"{package}>={oldest}" in message


@pytest.mark.parametrize("installed", ["4.46.0", "4.46.3", "4.57.6", "5.0.0", "5.25.0", "6.0.0.dev0", "10.1.0"])
def test_supported_transformers_is_accepted(installed):
    require_release("transformers", installed)


@pytest.mark.parametrize("installed", ["2.1.0", "2.1.2+cu121", "2.4.1", "2.13.0+cpu", "2.15.0", "2.16.0.dev20270101"])
def test_supported_torch_is_accepted(installed):
    require_release("torch", installed)


@pytest.mark.parametrize("installed", [(3, 8, 18, "final", 0), (3, 7, 16), (2, 7, 18)])
def test_older_python_is_refused_in_one_line_naming_both_versions(installed):
    with pytest.raises(ImportError) as refused:
        require_python(installed)
    message = str(refused.value)
    assert "\n" not in message
    assert f"Python {'.'.join(map(str, installed[:3]))}" in message and "Python>=3.9" in message


@pytest.mark.parametrize("installed", [(3, 9, 0), (3, 11, 7, "final", 0), (3, 13, 0), (3, 14, 1)])
def test_supported_python_is_accepted(installed):
    require_python(installed)


def import_compat_afresh():
    """Execute `compat.py` as a remote-code folder's copy is executed: a new module, top to bottom."""
    spec = importlib.util.spec_from_file_location("lsg_compat_under_test", compat.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loading_under_an_older_torch_stops_before_anything_else(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="2.0.1+cu118"))
    monkeypatch.setattr("builtins.__import__", refuse_modules(__import__, "transformers"))
    with pytest.raises(ImportError, match=r"^LSG-BART needs torch>=2\.1\.0 .* has torch 2\.0\.1\+cu118: "):
        import_compat_afresh()


def test_loading_under_an_older_python_stops_before_importing_torch(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 8, 18, "final", 0))
    monkeypatch.setattr("builtins.__import__", refuse_modules(__import__, "torch", "transformers"))
    with pytest.raises(ImportError, match=r"^LSG-BART needs Python>=3\.9 .* has Python 3\.8\.18$"):
        import_compat_afresh()


def refuse_modules(original_import, *names):
    """An `__import__` that fails for `names`, as if they were not installed."""

    def guarded(name, *args, **kwargs):
        if name.split(".")[0] in names:
            raise AssertionError(f"{name} imported before the version check")
        return original_import(name, *args, **kwargs)

    return guarded


def test_remote_code_tests_pass_in_a_process_without_the_package(tmp_path):
    """tests/remote_code as the version matrix runs it, under this environment's Python, torch and transformers:
    its own folder only (`--confcutdir`, so that the suite's conftest, which imports the package, is not loaded)."""
    folder = REPO / "tests" / "remote_code"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
               "--rootdir", str(folder), "--confcutdir", str(folder), str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
