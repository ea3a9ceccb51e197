"""Time and peak memory of `lastmile replay` (event-time order, the default) on N outcome events.

    python -m tests.bench.replay_memory [--outcomes 1000000 10000000] [--set join.ttl=60s] [--keep DIR]

The events are those of ``tests.bench.audit`` (precomputed word errors, one every half second, in
order). Each replay runs in its own process with config/asr.yaml (peak memory is that process's
maximum resident set size). ``--set key=value`` overrides a config key: ``replay.sort_buffer``
above N sorts everything in memory, as replay did before it spilled runs; ``join.ttl=60s`` keeps
the engine's own memory (the ids joined within the TTL, remembered against duplicates, up to
``join.max_pending``) from growing with N, so what grows is replay's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.bench.audit import ROOT, generate


def replay(events: Path, config: Path, tmp: Path) -> tuple[float, float, str]:
    """Seconds, peak RSS in MB, and replay's summary line."""
    code = ("import resource, sys; from monitor.cli import main; rc = main(sys.argv[1:]); "
            "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code, "replay", str(events), "--config", str(config), "--quiet",
                          "--summary-out", str(tmp / "slices.json"), "--alerts-out", str(tmp / "alerts.jsonl")],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    took = time.perf_counter() - started
    summary = next(line for line in run.stderr.splitlines() if line.startswith("replayed"))
    peak_kb = float(run.stderr.rsplit("peak", 1)[1].split()[0])  # ru_maxrss is in KB on Linux
    return took, peak_kb / 1024, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outcomes", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of config/asr.yaml (e.g. replay.sort_buffer=2000000, join.ttl=60s)")
    ap.add_argument("--keep", type=Path, default=None, help="reuse (or keep) the event files in this directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = ROOT / "config" / "asr.yaml"
        if args.set:
            data = yaml.safe_load(config.read_text())
            for setting in args.set:
                key, _, value = setting.partition("=")
                *path, last = key.split(".")
                node = data
                for part in path:
                    node = node.setdefault(part, {})
                node[last] = yaml.safe_load(value)
            config = tmp / "asr.yaml"
            config.write_text(yaml.safe_dump(data))
        for n in args.outcomes:
            folder = args.keep or tmp
            folder.mkdir(parents=True, exist_ok=True)
            events = folder / f"outcomes-{n}.jsonl"
            if not events.exists():
                generate(events, n)
            took, peak, summary = replay(events, config, tmp)
            settings = f", {' '.join(args.set)}" if args.set else ""
            print(f"lastmile replay, {n:,} outcome events ({events.stat().st_size / 1e6:,.0f} MB of JSONL{settings}): "
                  f"{took:.1f} s, peak RSS {peak:,.0f} MB  [{summary}]", flush=True)


if __name__ == "__main__":
    main()
