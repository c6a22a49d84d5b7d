"""benchmarks/plots.py regenerates the BENCHMARKS.md plots from the committed results."""

import os
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import plots  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results")


def test_plots_are_drawn_from_the_measured_points(tmp_path):
    by_length = plots.speedup_by_length(RESULTS)
    assert {"a-shape", "random", "grid"} <= set(by_length) and all(len(p) >= 2 for p in by_length.values())
    sys.argv = ["plots.py", "--results", RESULTS, "--out", str(tmp_path)]
    plots.main()
    for name in ("plot_speedup_by_length.svg", "plot_time_by_density.svg"):
        root = ET.parse(tmp_path / name).getroot()
        assert root.tag.endswith("svg") and len(root.findall("{http://www.w3.org/2000/svg}polyline")) >= 3
