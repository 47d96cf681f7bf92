"""The report opens in headless Chromium and shows every figure (skipped without Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from evalfolders import write_pairs, write_run

pytest.importorskip("sklearn")
BROWSER = next((shutil.which(b) for b in ("chromium-headless-shell", "chromium",
                "chromium-browser", "google-chrome") if shutil.which(b)), None)  # fmt: skip

# Counts the images the browser decoded, once the page has loaded (the report itself has no
# script; the probe is added to a copy).
PROBE = (
    '<script>window.addEventListener("load",()=>{document.body.setAttribute("data-shown",'
    "[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length)})</script></body>"
)


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed")
def test_report_renders_every_figure_in_chromium(tmp_path):
    from synthbrain.evaluation import evaluate

    synth = write_run(tmp_path / "s", 4, radius=3.0, seed=1)
    ref = write_pairs(tmp_path / "r", 4, "flat", seed=2)
    evaluate(synth, str(ref), tmp_path / "report", bootstrap=20)
    html = (tmp_path / "report" / "index.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE))
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
           "--enable-logging=stderr", "--dump-dom", probe.as_uri()]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r'data-shown="5"', done.stdout), done.stdout[-500:]
    assert "Uncaught" not in done.stderr and "ERR_" not in done.stderr
