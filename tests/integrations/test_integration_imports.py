"""Importing `bidviz.integrations` (or `bidviz`) pulls in no framework: each lives in its own module."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ["lightning", "keras", "transformers", "accelerate", "jax", "optax", "tensorflow", "torch"]

PROBE = f"""
import sys
import bidviz, bidviz.integrations
print(" ".join(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))
"""


def test_the_integrations_package_imports_no_framework() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
