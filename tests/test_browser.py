"""Headless Chromium against `attrib serve` and the HTML report (Selenium + Debian's chromium/chromedriver).

`make test` installs chromium and chromium-driver (apt) and selenium (the dev extra);
without them these tests are skipped with the reason.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attrib.shapes import make_example
from attrib.streaming import Attributor

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="chromium/chromedriver not installed (apt-get install chromium chromium-driver)"
)

XSS = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'> How many circles are there?"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    d.set_script_timeout(60)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def attributor() -> Attributor:
    return Attributor.load()


def _wait(driver: Any, js: str, *args: Any, timeout: float = 60.0) -> Any:
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = driver.execute_script(js, *args)
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {js}")


def _severe(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_serve_paints_first_span_before_generation_ends(driver: Any, attributor: Attributor, tmp_path: Path) -> None:
    from PIL import Image

    from attrib.streaming.serve import make_server

    # 300 tokens so generation lasts long enough to see "before the end" in the page's own clock.
    srv = make_server(attributor, port=0, max_new_tokens=300, min_new_tokens=300)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        host, port = srv.server_address[:2]
        driver.get(f"http://{host!s}:{port}/")
        _wait(driver, "return document.getElementById('pick').options.length > 0")
        # The picked image shows at once, before any generation; the legend explains the colours.
        first = driver.execute_script("return document.getElementById('pick').value")
        _wait(driver, "return document.getElementById('heat').dataset.image === arguments[0]", first)
        assert driver.execute_script("return document.getElementById('heat').width") > 0
        legend = driver.find_element("id", "legend")
        assert legend.is_displayed() and "lowers the span's log-probability" in legend.text
        assert "relative to the span's largest" in legend.text
        # The page carries the server's token; the token field is only for explicitly set tokens.
        assert not driver.find_element("id", "token").is_displayed()
        driver.find_element("id", "run").click()
        _wait(driver, "return window.__attrib.done || window.__attrib.error")
        st = driver.execute_script("return window.__attrib")
        assert st["error"] is None
        assert st["firstSpanAt"] is not None and st["firstSpanAt"] < st["finalAt"]
        # Server clock: the first span's event left before generate() returned.
        assert st["serverFirstSpanEmitted"] < st["serverGenerationDone"]
        assert driver.execute_script("return document.getElementById('heat').dataset.span") is not None
        items = driver.find_elements("css selector", "#trace li")
        assert len(items) == len(st["spans"]) >= 2
        for li, s in zip(items, st["spans"], strict=True):
            assert li.text.startswith(f"#{s['index']}") and f"top: region {s['top_regions'][0][0]} " in li.text
        # Clicking a span in the list selects it.
        items[0].click()
        assert driver.execute_script("return document.getElementById('heat').dataset.span") == "0"
        assert "cur" in (items[0].get_attribute("class") or "")
        # A prompt holding markup is shown as text and never runs.
        prompt = driver.find_element("id", "prompt")
        prompt.clear()
        driver.execute_script("document.getElementById('prompt').value = arguments[0];", XSS)
        driver.find_element("id", "run").click()
        time.sleep(0.2)
        _wait(driver, "return window.__attrib.done || window.__attrib.error")
        assert driver.execute_script("return window.__pwned === undefined")
        assert driver.find_element("id", "question").text == XSS
        # An upload goes through the token-protected POST and shows at once.
        path = tmp_path / "upload.png"
        Image.new("RGB", (640, 480), (30, 160, 60)).save(path)
        driver.find_element("id", "file").send_keys(str(path))
        _wait(driver, "return document.getElementById('pick').value.startsWith('upload-')")
        uploaded = driver.execute_script("return document.getElementById('pick').value")
        _wait(driver, "return document.getElementById('heat').dataset.image === arguments[0]", uploaded)
        assert len(srv.uploads) == 1 and uploaded in srv.uploads
        assert driver.execute_script("return window.__attrib.error") is None
        assert _severe(driver) == []
    finally:
        srv.shutdown()
        srv.server_close()


def test_serve_with_an_explicit_token_takes_it_from_the_address(
    driver: Any, attributor: Attributor, tmp_path: Path
) -> None:
    from PIL import Image

    from attrib.streaming.serve import make_server

    token = "correct-horse-battery-staple"
    srv = make_server(attributor, port=0, token=token, max_new_tokens=40)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        host, port = srv.server_address[:2]
        driver.get(f"http://{host!s}:{port}/#token={token}")
        _wait(driver, "return document.getElementById('pick').options.length > 0")
        # Not in the page: the field holds it, and the address no longer shows it.
        assert token not in driver.page_source.replace(f'value="{token}"', "")
        field = driver.find_element("id", "token")
        assert field.is_displayed() and field.get_attribute("value") == token
        assert "#token" not in driver.current_url
        path = tmp_path / "upload.png"
        Image.new("RGB", (320, 240), (200, 160, 60)).save(path)
        driver.find_element("id", "file").send_keys(str(path))
        _wait(driver, "return document.getElementById('pick').value.startsWith('upload-')")
        assert len(srv.uploads) == 1
        driver.find_element("id", "run").click()
        _wait(driver, "return window.__attrib.done || window.__attrib.error")
        assert driver.execute_script("return window.__attrib.error") is None
        assert _severe(driver) == []
    finally:
        srv.shutdown()
        srv.server_close()


def test_report_slider_changes_heatmap(driver: Any, attributor: Attributor, tmp_path: Path) -> None:
    from attrib.streaming.report import render_report

    ex = make_example("test", 0)
    good = attributor.stream(ex.image(), ex.question.text, truth=ex.answer).run()
    bad = attributor.stream(ex.image(), XSS).run()
    path = tmp_path / "report.html"
    path.write_text(render_report([good, bad], title="<script>window.__pwned=3</script>"))
    driver.get(path.as_uri())
    _wait(driver, "return document.querySelectorAll('.result[data-ready]').length === 2")
    canvas = "document.querySelector('.result[data-index=\"0\"] canvas')"
    before = driver.execute_script(f"return {canvas}.toDataURL()")
    assert len(good.spans) >= 2
    driver.execute_script(
        "const s = document.querySelector('.result[data-index=\"0\"] input[type=range]'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));",
        len(good.spans) - 1,
    )
    after = driver.execute_script(f"return {canvas}.toDataURL()")
    assert after != before
    assert driver.execute_script(f"return {canvas}.dataset.span") == str(len(good.spans) - 1)
    cur = driver.find_elements("css selector", '.result[data-index="0"] .trace span.cur')
    assert len(cur) == 1 and cur[0].text == good.spans[-1].text
    assert driver.execute_script("return window.__pwned === undefined")
    assert XSS in driver.find_element("css selector", '.result[data-index="1"] h2').text
    assert _severe(driver) == []


def test_trajectory_html_loads_without_console_errors(driver: Any, tmp_path: Path) -> None:
    import numpy as np

    from attrib.plots import trajectories_html

    rng = np.random.default_rng(0)
    chains = [(f"<b>test-{i}</b>", "success" if i % 2 else "hallucination", rng.normal(size=(5, 3))) for i in range(6)]
    path = trajectories_html(chains, tmp_path / "traj.html", explained=[0.5, 0.2, 0.1])
    page = path.read_text()
    assert "<b>test-0</b>" not in page
    # Self-contained: no external script or stylesheet (plotly.js is inlined; URLs inside its code are never fetched).
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']?https?:", page)
    driver.get(path.as_uri())
    plotly = "plotly" in page.lower()
    if plotly:
        _wait(driver, "return document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
    else:
        _wait(driver, "return document.querySelector('canvas') !== null")
    assert _severe(driver) == []
