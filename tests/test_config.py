from __future__ import annotations

import subprocess
import sys

import pytest

from monitor.config import ConfigError, load_config, parse_config, parse_duration
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ["asr.yaml", "classifier.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(ROOT / "config" / name)
    assert cfg.slices.combinations, "examples track intersections"


def test_packaged_demo_config_is_the_shipped_one() -> None:
    assert (ROOT / "monitor" / "data" / "asr.yaml").read_text() == (ROOT / "config" / "asr.yaml").read_text()


def problems(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return dict(info.value.problems)


def test_typo_in_a_key_is_reported_with_its_path() -> None:
    got = problems({"slices": {"dimensions": ["accent"], "min_sample": 10}})
    assert "slices.min_sample" in got


def test_every_problem_is_reported_at_once() -> None:
    got = problems({
        "slices": {"dimensions": ["accent", "noise"], "combinations": [["accent"], ["acent", "noise"]]},
        "metrics": {"names": ["error_rate", "fpr"]},
        "join": {"ttl": "soon"},
    })
    assert "join.ttl" in got and "soon" in got["join.ttl"]
    # structural errors come first; fix them and the semantic ones are listed together
    got = problems({
        "slices": {"dimensions": ["accent", "noise"], "combinations": [["accent"], ["acent", "noise"]]},
        "metrics": {"names": ["error_rate", "fpr"]},
    })
    assert "acent" in got["slices.combinations[1][0]"]
    assert "metrics.positive_class" in got


@pytest.mark.parametrize("data, path", [
    ({"metrics": {"names": ["abs_error"]}}, "metrics.error_cap"),
    ({"metrics": {"names": ["wer", "error_rate"]}}, "metrics.names"),
    ({"metrics": {"names": ["bleu"]}}, "metrics.names[0]"),
    ({"baseline": {"source": "file"}}, "baseline.file"),
    ({"baseline": {"source": "file", "file": "/nonexistent/b.yaml"}}, "baseline.file"),
    ({"baseline": {"reference": {"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}}}, "baseline.reference"),
    ({"drift": {"tolerance": 1.5}}, "drift.tolerance"),
    ({"slices": {"max_slices": 0}}, "slices.max_slices"),
    ({"events": {"models": ["a"]}, "models": {"b": {"min_samples": 5}}}, "models.b"),
    ({"version": 2}, "version"),
])
def test_specific_errors(data: dict, path: str) -> None:
    assert path in problems(data)


def test_durations() -> None:
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("90s") == 90
    with pytest.raises(ValueError):
        parse_duration("-3s")
    with pytest.raises(ValueError):
        parse_duration(True)


def test_check_config_cli(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("slices:\n  dimensions: [a]\n  combinations: [[b]]\njoin:\n  ttl: 0\n")
    run = subprocess.run([sys.executable, "-m", "monitor", "check-config", str(bad)], capture_output=True, text=True)
    assert run.returncode == 1
    assert "join.ttl" in run.stderr
    ok = subprocess.run([sys.executable, "-m", "monitor", "check-config", str(ROOT / "config" / "asr.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("slices: [unclosed\n")
    run = subprocess.run([sys.executable, "-m", "monitor", "check-config", str(broken)], capture_output=True, text=True)
    assert run.returncode == 1 and "not valid YAML" in run.stderr and "line" in run.stderr


def test_environment_overrides_any_key_and_errors_name_the_variable() -> None:
    env = {"LASTMILE__KAFKA__BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
           "LASTMILE__KAFKA__CLIENT": "{security_protocol: SASL_SSL, sasl_mechanism: PLAIN}",
           "LASTMILE__SLICES__MIN_SAMPLES": "50", "LASTMILE__DRIFT__ENABLED": "false", "UNRELATED": "x"}
    cfg = load_config(ROOT / "config" / "asr.yaml", environ=env)
    assert cfg.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert cfg.kafka.client == {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}
    assert cfg.slices.min_samples == 50 and cfg.drift.enabled is False
    assert cfg.slices.dimensions == ["tenant", "accent", "device", "noise"]  # the rest is untouched
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "config" / "asr.yaml", environ={"LASTMILE__JOIN__TTL": "soon"})
    assert "join.ttl (from LASTMILE__JOIN__TTL)" in dict(info.value.problems)


def test_the_slice_lattice_and_what_it_costs_the_threshold() -> None:
    """`combinations: auto` tracks every combination up to max_level; the threshold grows only with
    the log of the detectors an outcome touches."""
    from monitor.engine import detectors_per_outcome, thresholds

    dims = ["tenant", "accent", "device", "noise"]
    counts, fire = [], []
    for level in (1, 2, 3):
        cfg = parse_config({"slices": {"dimensions": dims, "combinations": "auto", "max_level": level}})
        counts.append(len(cfg.slices.combinations))
        fire.append(thresholds(cfg)[0])
        assert all(1 <= len(c) <= level for c in cfg.slices.combinations)
        assert len({frozenset(c) for c in cfg.slices.combinations}) == len(cfg.slices.combinations)
    assert counts == [4, 4 + 6, 4 + 6 + 4]
    assert fire[0] < fire[1] < fire[2] < fire[0] + 1.1  # ln((29 + 2) / (9 + 2)) ≈ 1.04, on about 16
    assert detectors_per_outcome(parse_config({"slices": {"dimensions": dims, "combinations": "auto"}})) == 21
    with pytest.raises(ConfigError) as err:
        parse_config({"slices": {"dimensions": dims, "combinations": "auto", "max_level": 4}})
    assert any(path == "slices.max_level" for path, _ in err.value.problems)
