"""Time and peak memory of `lastmile audit` on 10^6 outcome events, with the slice lattice at
levels 2 and 3.

    python -m tests.bench.audit [--outcomes 1000000] [--keep FILE]

Each audit runs in its own process (peak memory is that process's maximum resident set size).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[2]


def generate(path: Path, outcomes: int, seed: int = 1) -> None:
    """Outcome events with precomputed word errors: 5 customers, 10 accents, 3 devices, 4 noises."""
    rng = random.Random(seed)
    accents, tenants = [f"a{i}" for i in range(10)], [f"t{i}" for i in range(5)]
    devices, noises = [f"d{i}" for i in range(3)], [f"n{i}" for i in range(4)]
    enc = msgspec.json.encode
    with open(path, "wb") as f:
        buf = []
        for i in range(outcomes):
            a, t, d, n = rng.choice(accents), rng.choice(tenants), rng.choice(devices), rng.choice(noises)
            units = rng.randint(3, 30)
            # every 7th utterance is garbled (any number of errors): overdispersed, as WER is
            errors = sum(rng.random() < 0.12 for _ in range(units)) if i % 7 else rng.randint(0, units)
            buf.append(enc({"type": "outcome", "id": f"o{i}", "ts": 1795514400.0 + i * 0.5, "model": "asr-en",
                            "tenant": t, "attributes": {"accent": a, "device": d, "noise": n},
                            "errors": errors, "units": units}))
            if len(buf) == 10_000:
                f.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            f.write(b"\n".join(buf) + b"\n")


def audit(events: Path, level: int, out: Path) -> tuple[float, float]:
    env = {**os.environ, "LASTMILE__SLICES__COMBINATIONS": "auto", "LASTMILE__SLICES__MAX_LEVEL": str(level)}
    code = ("import resource, sys; from monitor.cli import main; rc = main(sys.argv[1:]); "
            "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code, "audit", str(events), "--config", str(ROOT / "config" / "asr.yaml"),
                          "--out", str(out), "--quiet"], env=env, capture_output=True, text=True, check=True)
    took = time.perf_counter() - started
    peak_kb = float(run.stderr.rsplit("peak", 1)[1].split()[0])
    return took, peak_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outcomes", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="reuse (or keep) the events file here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events = args.keep or Path(tmp) / "events.jsonl"
        if not events.exists():
            generate(events, args.outcomes)
        for level in (2, 3):
            took, peak = audit(events, level, Path(tmp) / f"report-{level}.html")
            print(f"lastmile audit, {args.outcomes:,} outcome events, slice lattice level {level}: "
                  f"{took:.1f} s, peak memory {peak:,.0f} MB")


if __name__ == "__main__":
    main()
