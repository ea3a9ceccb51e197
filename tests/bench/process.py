"""What the benchmarks that run `lastmile` in a fresh process share: the outcome events they
read, a config with some keys set, and the run itself, timed, with its peak resident memory."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "asr.yaml"


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


def config_with(settings: list[str], folder: Path) -> Path:
    """config/asr.yaml with ``key.path=value`` settings (values read as YAML), written into
    ``folder`` (the CLI reads its config from a file; asr.yaml names no relative path)."""
    if not settings:
        return CONFIG
    data = yaml.safe_load(CONFIG.read_text())
    for setting in settings:
        key, _, value = setting.partition("=")
        *path, last = key.split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    config = folder / "asr.yaml"
    config.write_text(yaml.safe_dump(data))
    return config


def run_lastmile(args: list[str]) -> tuple[float, float, str]:
    """``lastmile ARGS`` in a fresh process: seconds, peak resident memory in MB, and its stderr."""
    code = ("import resource, sys; from monitor.cli import main; rc = main(sys.argv[1:]); "
            "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, cwd=ROOT)
    took = time.perf_counter() - started
    peak_kb = float(run.stderr.rsplit("peak", 1)[1].split()[0])  # ru_maxrss is in KB on Linux
    return took, peak_kb / 1024, run.stderr
