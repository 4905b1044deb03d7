"""The plots of benchmark results use matplotlib (the `bench` extra). Benchmarks ask for it
before they start, so a long run never ends without its plot."""

from __future__ import annotations

import sys
from types import ModuleType


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend; exits with one line when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("error: benchmarks plot with matplotlib: pip install -e '.[bench]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
