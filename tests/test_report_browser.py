"""The HTML report in a real headless browser (Debian's chromium-headless-shell)."""

import json
import shutil
import subprocess

import pytest

from s3kit.report import build_report
from tests.test_report import _card

BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium; scripts/setup.sh installs chromium-headless-shell")

PROBE = """<!doctype html><html><body><iframe id=f src="REPORT" width=1200 height=900></iframe><pre id=out></pre>
<script>
document.getElementById('f').onload = function () {
  const d = this.contentDocument;
  const imgs = Array.from(d.images).map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0,
                                              w: i.naturalWidth}));
  const tables = Array.from(d.querySelectorAll('table')).map(t => t.querySelectorAll('tbody tr').length);
  document.getElementById('out').textContent = 'RESULT' + JSON.stringify({title: d.title, imgs, tables}) + 'END';
};
</script></body></html>"""


def test_report_renders_in_headless_chromium(tmp_path):
    _card(tmp_path, "teacher", 2_000_000, 0.91, 0.31, 0.9)
    _card(tmp_path, "student", 500_000, 0.85, 0.42, 0.4)
    page = build_report(tmp_path)
    probe = tmp_path / "probe.html"
    probe.write_text(PROBE.replace("REPORT", page.as_uri()))
    proc = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
         "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    dom = proc.stdout
    assert "RESULT" in dom, f"browser produced no result: rc={proc.returncode} stderr={proc.stderr[-2000:]}"
    result = json.loads(dom.split("RESULT", 1)[1].split("END", 1)[0].replace("&quot;", '"'))
    assert result["title"] == "s3kit report"
    assert len(result["imgs"]) >= 3
    broken = [i["src"] for i in result["imgs"] if not i["ok"]]
    assert not broken, f"images that did not render: {broken}"
    assert all(i["w"] > 100 for i in result["imgs"])
    assert result["tables"] == [2, 2, 2]  # efficiency, probing, bias: one row per model
