"""Time and peak memory of `lastmile audit` on 10^6 outcome events, with the slice lattice at
levels 2 and 3.

    python -m tests.bench.audit [--outcomes 1000000] [--keep FILE]

Each audit runs in its own process (peak memory is that process's maximum resident set size),
with config/asr.yaml's dimensions tracked as ``combinations: auto`` up to the level.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.bench.process import config_with, generate, run_lastmile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outcomes", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="reuse (or keep) the events file here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        events = args.keep or tmp / "events.jsonl"
        if not events.exists():
            generate(events, args.outcomes)
        for level in (2, 3):
            config = config_with(["slices.combinations=auto", f"slices.max_level={level}"], tmp)
            took, peak, _ = run_lastmile(["audit", str(events), "--config", str(config),
                                          "--out", str(tmp / f"report-{level}.html"), "--quiet"])
            print(f"lastmile audit, {args.outcomes:,} outcome events, slice lattice level {level}: "
                  f"{took:.1f} s, peak memory {peak:,.0f} MB")


if __name__ == "__main__":
    main()
