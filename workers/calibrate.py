"""Write a calibration file for `method="calibrated"` (streamkv.calibrate on held-apart text).

    python -m workers.calibrate --model smollm2-135m --windows 16 --context-length 2048 \\
        --out results/calibration/smollm2-135m.pt

Takes the text's FIRST windows (WikiText-2 test by default); evaluate on later windows (the
perplexity runner reports `calibration_overlap_windows` when the two overlap).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from streamkv.calibrate import calibrate_text
from streamkv.calibration import save_calibration
from streamkv.loading import load_model
from workers.perplexity import DEFAULT_WIKITEXT


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Write a calibration file for method='calibrated'.")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--text", default=None, help="raw text file (default: the repo's WikiText-2 test)")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--context-length", type=int, default=2048)
    ap.add_argument("--first", type=int, default=0, help="index of the first window used")
    ap.add_argument("--percentile", type=float, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    text_path = Path(args.text) if args.text else DEFAULT_WIKITEXT
    text = text_path.read_text(encoding="utf-8")
    loaded = load_model(args.model)
    # The file's hash, as the perplexity runner records it (not the decoded text's).
    file_sha = hashlib.sha256(text_path.read_bytes()).hexdigest()
    calib = calibrate_text(loaded, text, windows=args.windows, context_length=args.context_length,
                           first=args.first, percentile=args.percentile,
                           meta={"text_sha256": file_sha, "text_path": str(text_path)})
    print(f"wrote {save_calibration(calib, args.out)}: {calib.dims}, {calib.meta['tokens']} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
