"""`bptrain serve` moves its start-up objects out of the cyclic collector's reach, and
what it creates afterwards is still collected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import gc
import services.serve as serve
before = len(gc.get_objects())
serve.freeze_startup_objects()
after = len(gc.get_objects())
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after the freeze
del a, b
print(before, gc.get_freeze_count(), after, gc.collect())
"""


def test_start_up_objects_are_frozen_and_later_cycles_still_collected() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    before, frozen, after, collected = map(int, result.stdout.split())
    assert frozen >= 0.9 * before  # the imported modules' objects (Ray, gRPC, protobuf)
    assert after < 0.05 * before  # a full collection no longer walks them
    assert collected >= 2  # the cycle made after the freeze is found and freed
