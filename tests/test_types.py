"""The package type-checks with mypy, so annotations stay true as the code changes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.peers import REPO


@pytest.mark.slow
def test_package_type_checks():
    pytest.importorskip("mypy")

    result = subprocess.run(
        [sys.executable, "-m", "mypy", "capacitor"], cwd=REPO, capture_output=True, text=True, timeout=600
    )

    assert result.returncode == 0, result.stdout[-4000:]
