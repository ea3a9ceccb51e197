"""`lastmile audit`: the report's numbers are replay's, and a real browser renders every section."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import msgspec
import pytest

from monitor.audit import SECTIONS
from monitor.cli import main
from monitor.simulate import SpeechScenario
from tests.conftest import ROOT

CONFIG = str(ROOT / "config" / "asr.yaml")


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    lines = list(SpeechScenario(outcomes=60_000, seed=3, malformed=0.01).events())
    hostile = msgspec.json.encode({"type": "outcome", "id": "h1", "ts": msgspec.json.decode(lines[-1]).get("ts"),
                                   "model": "asr-en", "tenant": "<script>alert(1)</script>",
                                   "attributes": {"accent": "</svg><img src=x onerror=alert(2)>"},
                                   "output": "a b", "label": "a c"})
    path = tmp / "events.jsonl"
    path.write_bytes(b"\n".join([*lines, hostile]) + b"\n")
    assert main(["audit", str(path), "--config", CONFIG, "--out", str(tmp / "report.html"), "--quiet"]) == 0
    assert main(["replay", str(path), "--config", CONFIG, "--quiet", "--summary-out", str(tmp / "summary.json")]) == 0
    return tmp


def test_the_reports_numbers_are_replays(audited) -> None:
    report = json.loads((audited / "report.json").read_text())
    summary = json.loads((audited / "summary.json").read_text())
    assert report["slices"] == summary["slices"]
    assert report["summary"]["outcomes"] == summary["pipeline"]["outcomes"]
    assert report["summary"]["invalid"] == summary["pipeline"]["invalid"] and report["summary"]["invalid"]
    accents = {e["slice"]["accent"]: e["value"] for e in report["dimensions"]["accent"]}
    rows = {r["slice"]["accent"]: r["value"] for r in summary["slices"] if list(r["slice"]) == ["accent"]}
    assert accents == rows
    assert report["worst"] and report["worst"][0]["score"] >= report["worst"][-1]["score"]


def test_values_from_the_data_are_text_not_markup(audited) -> None:
    page = (audited / "report.html").read_text()
    assert "<script" not in page and "<img" not in page  # no markup from the data, only its text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x" in page


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("CI: chromium is missing: apt-get install chromium (.ci/run does)")
        pytest.skip("chromium not installed: apt-get install chromium")
    return exe


def test_a_headless_browser_renders_every_section(audited) -> None:
    import matplotlib.image

    exe = _chromium()
    url = (audited / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([exe, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom.stdout, section
    assert dom.stdout.count("<svg") >= 4  # a plot per dimension and heatmaps
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr
    shot = audited / "shot.png"
    run = subprocess.run([exe, *flags, "--window-size=1200,2400", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = matplotlib.image.imread(str(shot))[..., :3]
    not_white = (pixels < 0.95).any(axis=2).mean()
    assert not_white > 0.03 and pixels.std() > 0.05  # text and plots, not a blank page
