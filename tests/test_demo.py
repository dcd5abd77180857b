"""`make demo`'s job: the demo script ends with test_accuracy >= 0.97 on the digits test split."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_demo_prints_test_accuracy_of_at_least_097() -> None:
    result = subprocess.run(
        [sys.executable, "examples/demo.py", "examples/digits.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"test_accuracy=(0\.\d{4}|1\.0000)", last)
    assert match, last
    assert float(match.group(1)) >= 0.97
