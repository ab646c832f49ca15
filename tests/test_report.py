"""out/report.html: rendered by headless Chromium (Debian's) with no console messages, a screenshot kept in
tests/artifacts/; what changed since the previous build; no figure shown for a build it was not measured on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, SINE, host_target, run_doit
from tasks import fsutil
from tasks.report.html import ReportEntry, row, write_report_html

ARTIFACTS = Path(os.environ.get("CRTFORGE_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


def chromium(page: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """The page's DOM after rendering, and every console message Chromium logged for it."""
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed: ./scripts/install.sh installs it"
    common = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
              "--window-size=1280,1400"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    logs = dom.stderr
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = subprocess.run([*common, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, text=True,
                              timeout=120)
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
        logs += shot.stderr
    return dom.stdout, [line for line in logs.splitlines() if ":CONSOLE" in line]


def test_the_console_check_sees_a_page_s_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><p>x</p><script>console.error("broken figure")</script>')
    _, console = chromium(page)
    assert any("broken figure" in line for line in console)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    pipeline = root / "pipeline.toml"
    pipeline.write_text(f'[models.sine]\nsource = "{SINE}"\n' + host_target("host", 'budget = {flash = "64K"}'))
    result = run_doit(pipeline, "test")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    return root, pipeline


def test_the_report_renders_in_chromium_without_console_messages(reported):
    root, _ = reported
    dom, console = chromium(root / "out" / "report.html", ARTIFACTS / "report.png")
    assert console == []
    # What a person sees first: the verdict, then the targets with their tightest budget.
    text = re.sub(r"<[^>]+>", " ", dom)
    assert re.search(r"All\s+1\s+row passes", text)
    assert text.index("row passes") < text.index("Targets") < text.index("What changed")
    flash = fsutil.read_json(root / "out" / "host" / "sine" / "sizes.json")["program"]["flash"]
    assert f"{flash:,}" in text
    assert f"flash {(65536 - flash) / 1024:,.1f} KiB left of 64.0 KiB" in text
    assert f"flash {100 * flash / 65536:.0f} % used" in text
    assert "First report in this out folder" in text


def test_a_figure_that_grew_is_listed_and_stays_listed(reported, tmp_path):
    root, pipeline = reported
    before = fsutil.read_json(root / "out" / "host" / "sine" / "sizes.json")["program"]["flash"]
    debug = tmp_path / "pipeline.toml"  # the same out folder: paths in it are absolute
    debug.write_text(pipeline.read_text().replace("[targets.host]", '[targets.host]\nprofile = "debug"')
                     .replace('[pipeline]', '') + f'\n[pipeline]\nout = "{root / "out"}"\n')
    assert run_doit(debug, "test").returncode == 0
    after = fsutil.read_json(root / "out" / "host" / "sine" / "sizes.json")["program"]["flash"]
    assert after > before  # debug keeps frames and argument checks
    for _ in range(2):  # a report of the same figures keeps the baseline
        html = (root / "out" / "report.html").read_text()
        row_html = re.search(r"<tr><td class=\"l\">host/sine</td><td class=\"l\">flash</td>.*?</tr>", html, re.S)
        assert row_html, html[:3000]
        assert f"{before:,}" in row_html.group(0) and f"{after:,}" in row_html.group(0)
        assert 'class="grew"' in row_html.group(0)
        assert run_doit(debug, "report").returncode == 0
    saved = fsutil.read_json(root / "out" / "report.json")
    assert saved["baseline"]["host/sine"]["flash"] == before and saved["figures"]["host/sine"]["flash"] == after


def test_instructions_of_another_build_are_not_shown(tmp_path):
    program = tmp_path / "program.elf"
    program.write_bytes(b"the program of this build")
    sizes = {"program": {"flash": 100, "ram": 40, "text": 60, "rodata": 30, "data": 10, "bss": 30},
             "arena_bytes": 16, "stack_bytes": None, "budget": {}}
    fsutil.write_json(tmp_path / "sizes.json", sizes)
    split = {"flash": {k: 20 for k in ("kernels", "weights", "executor_runtime", "harness", "libc_and_rest")},
             "ram": {"arena": 16, "data_bss_rest": 24}}
    entry = ReportEntry("t", "m", tmp_path / "test.json", tmp_path / "sizes.json", tmp_path / "bench.json", program)
    fsutil.write_json(tmp_path / "bench.json", {"instructions": 1234, "instructions_per_mac": 2.5, "sizes": split,
                                                "program_sha256": "0" * 64})
    stale = row(entry)
    assert stale["instructions"] is None and stale["flash_parts"] == {"code": 60, "read-only data": 30,
                                                                      "initial data": 10}
    top = [{"index": 1, "kernel": "m_fused_conv2d_add_relu", "source_ops": ["Conv \"c1\"", "Relu \"r1\""],
            "share": 0.631}, {"index": 0, "kernel": "m_matmul", "source_ops": [], "share": 0.3}]
    fsutil.write_json(tmp_path / "bench.json", {"instructions": 1234, "instructions_per_mac": 2.5, "sizes": split,
                                                "program_sha256": fsutil.sha256_file(program),
                                                "kernel_profile": {"top": top}})
    fresh = row(entry)
    assert (fresh["instructions"], fresh["per_mac"], fresh["passed"]) == (1234, 2.5, None)
    assert fresh["flash_parts"]["kernels"] == 20
    assert fresh["top"] == ['#1 fused_conv2d_add_relu (Conv "c1", Relu "r1") 63.1 %', "#0 matmul 30.0 %"]
    # A page whose pairs are not the last one's: new and removed rows render (the template is strict).
    fsutil.write_json(tmp_path / "report.json", {"figures": {"t/gone": {"flash": 1, "ram": 1, "instructions": 1}}})
    summary = write_report_html([entry], "p.toml", tmp_path / "none.json", tmp_path / "report.html",
                                tmp_path / "report.json")
    assert {c["figure"] for c in summary["changed"]} == {"(new)", "(removed)"}
    page = (tmp_path / "report.html").read_text()
    assert "t/gone" in page and "fused_conv2d_add_relu (Conv &#34;c1&#34;, Relu &#34;r1&#34;) 63.1 %" in page
