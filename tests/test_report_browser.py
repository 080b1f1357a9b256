"""`maiac report --html` in a real headless Chromium: the page loads offline, with no
console error, its three plots render as SVG with every point, the ops table sorts and
filters, and a screenshot is taken (kept under $MAIAC_SCREENSHOT_DIR when set).

The browser: $MAIAC_BROWSER, else a Chromium on PATH (.ci/run installs Debian's
``chromium-headless-shell``), else one that ``playwright install`` fetched; driven by the
``playwright`` package (test extra). The test skips, saying why, only when neither the
package nor a browser is there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import invoke

DATA = Path(__file__).parent / "data"
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def _browser_path() -> str | None:
    env = os.environ.get("MAIAC_BROWSER")
    if env:
        return env
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def page_and_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    work = tmp_path_factory.mktemp("browser")
    prog = work / "gpt2.maia"
    r = invoke("compile", str(DATA / "gpt2_dynamo.onnx"), "-o", str(prog), "--quant", "mxfp4")
    assert r.exit_code == 0, r.output
    page = work / "report.html"
    assert invoke("report", str(prog), "--html", str(page)).exit_code == 0
    return page, json.loads(invoke("report", str(prog), "--json").stdout)


@pytest.fixture(scope="module")
def browser() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright not installed (pip install -e '.[test]')")
    path = _browser_path()
    with sync_api.sync_playwright() as p:
        if path is None and not Path(p.chromium.executable_path).exists():
            pytest.skip("no headless Chromium: apt-get install chromium-headless-shell, "
                        "set MAIAC_BROWSER, or run `playwright install chromium`")
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


def test_report_page_in_a_browser(browser: Any, page_and_report: tuple[Path, dict[str, Any]],
                                  tmp_path: Path) -> None:
    path, report = page_and_report
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    requests: list[str] = []

    def offline(route: Any) -> None:  # the page must need nothing but itself
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            requests.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3",
                           timeout=30000)
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    keep = os.environ.get("MAIAC_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "report.png")
    assert shot.stat().st_size > 50_000  # a page of plots, not a blank one
    assert problems == [] and requests == []

    def count(selector: str) -> int:
        return int(page.evaluate(f"document.querySelectorAll({selector!r}).length"))

    # roofline: one marker per op (every op is drawn), plus the roof lines
    assert count("#roofline svg .scatterlayer .trace .points path.point") == len(report["ops"])
    assert count("#roofline svg .scatterlayer path.js-line") >= 4
    assert count("#roofline svg .xtick text") >= 3 and count("#roofline svg .ytick text") >= 3
    assert count("#roofline svg .legend .traces") >= 6
    # timeline: bars on every busy engine's row, a legend of event kinds
    assert count("#timeline svg .barlayer path") >= 100
    rows = page.evaluate("Array.from(document.querySelectorAll('#timeline svg .ytick text'))"
                         ".map(t => t.textContent)")
    assert set(rows) == {e["name"] for e in report["engines"] if e["busy_s"] > 0}
    # memory: one curve per level
    assert count("#memory svg .scatterlayer path.js-line") >= 3

    # the ops table sorts by a click and filters by typing
    page.click("#ops th:has-text('time')")
    page.click("#ops th:has-text('time')")  # second click: descending
    first = page.evaluate("document.querySelector('#ops tbody tr').cells[3].dataset.v")
    assert float(first) == max(o["time_s"] for o in report["ops"])
    page.fill("#ops-filter", "Gemm")
    shown = [o for o in report["ops"] if "gemm" in o["name"].lower()]
    assert page.text_content("#ops-count") == f"{len(shown)} of {len(report['ops'])} ops"
    page.close()
