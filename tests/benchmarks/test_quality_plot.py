"""benchmarks/quality_plot.py: one labelled point per measured row, the reference left out,
panels on shared axes, bad arguments refused."""

import csv

import pytest

from tests.conftest import load_benchmark

FIELDS = ["row", "config_id", "perplexity", "avg_key_bits", "avg_value_bits", "avg_bits", "compression_ratio",
          "outlier_ratio", "seconds", "delta_pct"]


def write(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for name, k, v, delta in rows:
            w.writerow({"row": name, "config_id": "x", "perplexity": 1, "avg_key_bits": k, "avg_value_bits": v,
                        "avg_bits": (k + v) / 2, "compression_ratio": 1, "outlier_ratio": 0, "seconds": 1,
                        "delta_pct": delta})


def test_every_row_but_the_reference_is_a_labelled_point(tmp_path):
    plot = load_benchmark("quality_plot")
    a, b = tmp_path / "streaming.csv", tmp_path / "strict.csv"
    write(a, [("none", 16, 16, 0.0), ("streamkv-4", 4.2, 4.1, 0.13), ("kivi-2", 3.8, 3.8, 15.2)])
    write(b, [("none", 16, 16, 0.0), ("streamkv-4", 4.2, 4.1, 2.07), ("quarot-4", 4.5, 4.5, 0.0)])
    out = tmp_path / "q.svg"
    assert plot.main([str(a), str(b), "--titles", "streaming", "strict", "--out", str(out)]) == 0
    svg = out.read_text()
    assert svg.count("<circle") == 4 + len(plot.COLORS)  # 2 points per panel + the legend
    assert ">none<" not in svg and "streamkv-4: 4.15 bits, +2.07%" in svg and "kivi-2: 3.80 bits, +15.20%" in svg
    assert 'fill="#d62728"' in svg  # streamkv's color
    assert plot.read_points(a) == [("streamkv-4", pytest.approx(4.15), 0.13), ("kivi-2", 3.8, 15.2)]
    with pytest.raises(SystemExit):
        plot.main([str(a), "--titles", "one", "two", "--out", str(out)])
