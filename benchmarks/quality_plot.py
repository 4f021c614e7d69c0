"""Perplexity cost vs measured bits, one panel per `benchmarks/quality.py` CSV (an SVG).

    python benchmarks/quality_plot.py streaming.csv strict.csv \\
        --titles "streaming protocol" "strict protocol" --out benchmarks/figures/quality.svg

Each row of a CSV is one point: x = its measured bits per element (the mean of the key and
value bits, scales and indices included), y = its perplexity increase over the CSV's first
row (the uncompressed one, left out), on a log axis (0.01 % to the largest). Colors by
family (streamkv, KIVI, TurboQuant-style, QuaRot-style, others); every point is labelled.
Down and left is better. Hand-written SVG: no plotting package is needed.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

COLORS = {"streamkv": "#d62728", "kivi": "#1f77b4", "turboquant": "#2ca02c", "quarot": "#9467bd"}
WIDTH, HEIGHT, LEFT, TOP, BOTTOM, RIGHT = 460, 380, 56, 34, 44, 16
FLOOR = 0.01  # % : the bottom of the log axis (a row at or below it sits on it)


def family(row: str) -> str:
    return next((f for f in COLORS if row.startswith(f)), "other")


def read_points(path: Path) -> list[tuple[str, float, float]]:
    """(row, measured bits, delta %) of every row but the first (the reference)."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [(r["row"], (float(r["avg_key_bits"]) + float(r["avg_value_bits"])) / 2, float(r["delta_pct"]))
            for r in rows[1:]]


def panel(points: list[tuple[str, float, float]], title: str, x0: int, y_max: float,
          bits: tuple[float, float]) -> str:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    lo, hi = bits

    def px(b: float) -> float:
        return x0 + LEFT + (b - lo) / (hi - lo) * plot_w

    def py(d: float) -> float:
        top, bottom = math.log10(y_max), math.log10(FLOOR)
        return TOP + (top - math.log10(max(d, FLOOR))) / (top - bottom) * plot_h

    out = [f'<text x="{x0 + LEFT}" y="20" font-size="13">{title}</text>',
           f'<rect x="{x0 + LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    decade = FLOOR
    while decade <= y_max * 1.0001:
        y = py(decade)
        out.append(f'<line x1="{x0 + LEFT}" x2="{x0 + LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{x0 + LEFT - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end">{decade:g}%</text>')
        decade *= 10
    for b in range(math.ceil(lo), math.floor(hi) + 1):
        x = px(b)
        out.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 14}" font-size="9" text-anchor="middle">{b}</text>')
    out.append(f'<text x="{x0 + LEFT + plot_w / 2}" y="{HEIGHT - 8}" font-size="10" text-anchor="middle">'
               'measured bits per element (keys and values)</text>')
    for name, b, d in points:
        x, y = px(b), py(d)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{COLORS.get(family(name), "#7f7f7f")}">'
                   f'<title>{name}: {b:.2f} bits, {d:+.2f}%</title></circle>'
                   f'<text x="{x + 6:.1f}" y="{y + 3:.1f}" font-size="8">{name}</text>')
    return "".join(out)


def render(panels: list[tuple[str, list[tuple[str, float, float]]]]) -> str:
    """One SVG with a panel per (title, points); all panels share both axes."""
    every = [p for _, points in panels for p in points]
    y_max = 10 ** math.ceil(math.log10(max([FLOOR * 10] + [d for _, _, d in every])))
    bits = (math.floor(min(b for _, b, _ in every)), math.ceil(max(b for _, b, _ in every)))
    if bits[0] == bits[1]:
        bits = (bits[0] - 1, bits[1] + 1)
    body = "".join(panel(points, title, i * WIDTH, y_max, bits) for i, (title, points) in enumerate(panels))
    legend = "".join(f'<circle cx="{LEFT + 12 + 90 * i}" cy="{HEIGHT + 8}" r="4" fill="{c}"/>'
                     f'<text x="{LEFT + 20 + 90 * i}" y="{HEIGHT + 11}" font-size="10">{f}</text>'
                     for i, (f, c) in enumerate(COLORS.items()))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH * len(panels)}" height="{HEIGHT + 20}" '
            f'font-family="sans-serif">{body}{legend}</svg>\n')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+", type=Path)
    ap.add_argument("--titles", nargs="*", help="one per CSV (default: the file names)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    titles = args.titles or [p.stem for p in args.csv]
    if len(titles) != len(args.csv):
        ap.error(f"--titles: {len(titles)} titles for {len(args.csv)} CSV files")
    panels = [(t, read_points(p)) for t, p in zip(titles, args.csv)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(panels))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
