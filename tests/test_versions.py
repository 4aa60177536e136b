"""The supported transformers range: a clear refusal below it. The range itself is covered by the version matrix
(`.ci/version_matrix.sh`), which also loads a checkpoint under a real transformers below the range."""

import pytest

from lsg_bart.transformers_compat import OLDEST_SUPPORTED, require_supported


@pytest.mark.parametrize("installed", ["4.45.2", "4.38.2", "4.9.1", "3.5.1", "4.45.0.dev0"])
def test_older_transformers_is_refused_in_one_line_naming_both_versions(installed):
    with pytest.raises(ImportError) as refused:
        require_supported(installed)
    message = str(refused.value)
    assert "\n" not in message
    assert f"transformers {installed}" in message and f"transformers>={OLDEST_SUPPORTED}" in message


@pytest.mark.parametrize("installed", ["4.46.0", "4.46.3", "4.57.6", "5.0.0", "5.24.0", "6.0.0.dev0", "10.1.0"])
def test_supported_transformers_is_accepted(installed):
    require_supported(installed)
