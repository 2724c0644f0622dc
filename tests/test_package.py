"""``import fastbert``: light (its names load on first use), and its names stay what they are
whatever order the submodules are imported in."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import sys
import fastbert
assert "torch" not in sys.modules and "transformers" not in sys.modules, "import fastbert imported torch"
import fastbert.optimize, fastbert.pretrained, fastbert.modules.cuda_graphs  # submodules first, as library code does
from fastbert import optimize, prune, FastBertEncoder
assert fastbert.optimize is optimize and optimize.__module__ == "fastbert.optimize" and callable(optimize)
assert callable(fastbert.prune) and fastbert.prune is prune and fastbert.FastBertEncoder is FastBertEncoder
assert fastbert.GraphBuckets.__name__ == "GraphBuckets" and callable(fastbert.from_pretrained)
assert set(fastbert.__all__) <= set(dir(fastbert))
print("OK")
"""

_SUBPACKAGES = """
import fastbert
assert callable(fastbert.ops.attention) and callable(fastbert.models.hf_base_model)
assert callable(fastbert.prune) and fastbert.numerics.compare
try:
    fastbert.no_such_name
except AttributeError as exc:
    assert "no_such_name" in str(exc)
else:
    raise AssertionError("no AttributeError")
print("OK")
"""


def test_subpackages_load_on_attribute_access_as_before():
    out = subprocess.run([sys.executable, "-c", _SUBPACKAGES], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


def test_names_load_on_first_use_and_stay_the_exports():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
