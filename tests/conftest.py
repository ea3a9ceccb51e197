from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from monitor.config import Config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(**sections: Any) -> Config:
    """A config from keyword sections, e.g. ``make_config(slices={"dimensions": ["a"]})``."""
    return parse_config(sections)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def broker():
    """A Kafka-compatible broker for a test module (:mod:`tests.kafka_harness`): continued if a
    test left it stopped, then killed."""
    import signal

    from tests.kafka_harness import start_broker

    b = start_broker()
    yield b
    if b.process is not None:
        b.process.send_signal(signal.SIGCONT)
        b.process.kill()
        b.process.wait()
