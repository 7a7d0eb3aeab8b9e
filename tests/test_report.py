"""The HTML report and its notebook fragment, on hand-built results (no model needed).

The fragment (``StreamResult._repr_html_``) lives inside someone else's page: its CSS
must not touch anything outside its own container, and it must show something where
no script runs (nbviewer, GitHub): a PNG of the first span's heatmap and the trace.
"""

from __future__ import annotations

import base64
import html as html_mod
import io
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from attrib.streaming.report import CSS, paint_heatmap, render_report, scoped_css
from attrib.streaming.stream import SpanEvent, StreamResult

XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
GREY = 128


def _regions(h: int, w: int) -> np.ndarray:
    """Three regions: 0 = left half above, 2 = left half below, 1 = right half."""
    reg = np.zeros((h, w), dtype=np.int64)
    reg[:, w // 2 :] = 1
    reg[h // 2 :, : w // 2] = 2
    return reg


def _span(i: int, scores: list[float], text: str = "a span.") -> SpanEvent:
    top = sorted(enumerate(scores), key=lambda t: -abs(t[1]))[:2]
    return SpanEvent(i, text, 5 * i, 5 * i + 5, np.asarray(scores), [(k, float(v)) for k, v in top], 0.1, 0.2)


def _result(size: tuple[int, int] = (56, 56), *, spans: list[SpanEvent] | None = None, **kw: Any) -> StreamResult:
    w, h = size
    args: dict[str, Any] = {
        "image": Image.new("RGB", size, (GREY, GREY, GREY)),
        "prompt": "How many circles are there?",
        "regions": _regions(h, w),
        "spans": [_span(0, [0.5, -0.25, 0.0], "I see a circle."), _span(1, [0.0, 1.0, 0.0])]
        if spans is None
        else spans,
        "output": "I see a circle. Answer: 1",
        "answer": "1",
        "generated_tokens": 10,
        "generation_s": 0.5,
        "truth": "1",
        "model": "shapes-test",
    }
    args.update(kw)
    return StreamResult(**args)


def _style(fragment: str) -> str:
    styles = re.findall(r"<style>(.*?)</style>", fragment, re.S)
    assert len(styles) == 1
    return str(styles[0])


def _static_images(fragment: str) -> list[Image.Image]:
    m = re.search(
        r'<div class="attrib-static" id="attrib-static-[0-9a-f]+">(.*?)</div><div id="results-', fragment, re.S
    )
    assert m is not None, "no static fallback block"
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', m.group(1))
    return [Image.open(io.BytesIO(base64.b64decode(u))).convert("RGB") for u in uris]


# ---------------------------------------------------------------------------- scoped CSS
def test_fragment_css_is_scoped_to_its_container() -> None:
    frag = _result()._repr_html_()
    m = re.match(r'<div id="(attrib-[0-9a-f]+)" class="attrib-report">', frag)
    assert m is not None and frag.endswith("</div>")
    scope = "#" + m.group(1)
    rules = re.findall(r"([^{}]+)\{([^{}]*)\}", _style(frag))
    assert len(rules) >= 10
    for selector, _ in rules:
        for one in selector.split(","):
            one = one.strip()
            assert one == scope or one.startswith(scope + " "), f"unscoped selector {one!r}"
    assert not any(one.strip() in ("body", "html") for sel, _ in rules for one in sel.split(","))
    # the page-wide settings of the full report now apply to the container only
    assert f"{scope}{{font-family:system-ui" in _style(frag)
    # two fragments on one page get different scopes
    other = re.match(r'<div id="(attrib-[0-9a-f]+)"', _result()._repr_html_())
    assert other is not None and other.group(1) != m.group(1)


def test_scoped_css_hand_values() -> None:
    assert scoped_css("body{a:b}\n.x, td span{c:d}", "#s") == "#s{a:b}\n#s .x,#s td span{c:d}"
    with pytest.raises(ValueError, match="flat"):
        scoped_css("@media print{.x{a:b}}", "#s")
    with pytest.raises(ValueError, match="flat"):
        scoped_css("stray .x{a:b}}", "#s")


# ---------------------------------------------------------------------------- static fallback
def test_fragment_carries_a_static_heatmap_of_the_first_span() -> None:
    res = _result()
    frag = res._repr_html_()
    imgs = _static_images(frag)
    assert len(imgs) == 1 and imgs[0].size == (56, 56)
    px = np.asarray(imgs[0]).astype(int)
    # region 0 holds the largest |score| (0.5): red (230, 40, 30) at alpha 200/255 over grey 128
    a = 200 / 255
    red = [round(GREY * (1 - a) + c * a) for c in (230, 40, 30)]
    assert px[5, 5].tolist() == red == [208, 59, 51]
    # region 1 scores -0.25, half the largest: blue (40, 90, 230) at alpha 100/255
    b = 100 / 255
    blue = [round(GREY * (1 - b) + c * b) for c in (40, 90, 230)]
    assert px[5, 50].tolist() == blue == [93, 113, 168]
    # region 2 scores 0: untouched
    assert px[50, 5].tolist() == [GREY] * 3
    # every region is uniform, and the picture as a whole is not
    assert (px[:28, :28] == red).all() and (px[:, 28:] == blue).all() and (px[28:, :28] == GREY).all()
    # the trace and the first span's top regions are there as text, the first span marked
    assert '<span class="sp cur">I see a circle. </span><span class="sp">a span. </span>' in frag
    assert "<td>region 0</td><td>0.5000</td>" in frag
    # the report's script hides the preview once it has built the interactive view
    uid = re.search(r'id="attrib-static-([0-9a-f]+)"', frag)
    assert uid is not None
    script = frag.rsplit("<script>", 1)[1]
    assert script.index(f'("{uid.group(1)}");') < script.index(f'getElementById("attrib-static-{uid.group(1)}")')
    assert 'style.display = "none"' in script


def test_static_preview_sizes_and_edge_cases() -> None:
    # a large image is downscaled like the interactive view's (longest side 512), keeping its aspect
    big = _result((700, 600))
    img = _static_images(big._repr_html_())[0]
    assert img.size == (512, 439)
    px = np.asarray(img).astype(int)
    assert px[10, 10, 0] > 200 and px[10, 500, 2] > 160 and px[400, 10].tolist() == [GREY] * 3
    # no spans: the plain image and the generated text (escaped)
    none = _result(spans=[], output="<b>no spans</b>")._repr_html_()
    plain = np.asarray(_static_images(none)[0])
    assert (plain == GREY).all() and "&lt;b&gt;no spans&lt;/b&gt;" in none and "<b>no spans</b>" not in none
    # several results: one preview each
    frag = render_report([_result(), _result(spans=[])], standalone=False)
    assert len(_static_images(frag)) == 2


def test_paint_heatmap_hand_values() -> None:
    im = Image.new("RGB", (4, 2), (0, 0, 0))
    reg = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    assert np.asarray(paint_heatmap(im, reg, None)).tolist() == np.asarray(im).tolist()
    assert not np.asarray(paint_heatmap(im, reg, [0.0, 0.0])).any()
    out = np.asarray(paint_heatmap(im, reg, [-2.0, 1.0])).astype(int)
    # over black, colour * alpha: region 0 full blue (alpha 200/255), region 1 half red (100/255)
    assert out[0, 0].tolist() == [round(c * 200 / 255) for c in (40, 90, 230)]
    assert out[1, 3].tolist() == [round(c * 100 / 255) for c in (230, 40, 30)]
    # the region map is sampled to the image's size (here a 2x finer map)
    fine = np.repeat(np.repeat(reg, 2, axis=0), 2, axis=1)
    assert np.array_equal(np.asarray(paint_heatmap(im, fine, [-2.0, 1.0])), out)


# ---------------------------------------------------------------------------- escaping
def test_fragment_escapes_user_text() -> None:
    res = _result(
        prompt=XSS, spans=[_span(0, [1.0, 0.0, 0.0], XSS)], answer=XSS, truth="</div>" + XSS, model=XSS, output=XSS
    )
    for page in (res._repr_html_(), render_report([res], title=XSS, standalone=False)):
        assert "<script>alert" not in page and "<img src=x" not in page
        assert html_mod.escape(XSS) in page  # shown as text in the static preview
    page = render_report([res], title=XSS, standalone=False)
    assert f"<h1>{html_mod.escape(XSS)}</h1>" in page
    # the JSON payload still round-trips the raw text for the script
    data = re.search(r'<script type="application/json" id="attrib-data-[0-9a-f]+">(.*?)</script>', page, re.S)
    assert data is not None and json.loads(data.group(1))["results"][0]["prompt"] == XSS


# ---------------------------------------------------------------------------- the full page
def test_standalone_page_is_unchanged_in_structure() -> None:
    res = _result()
    page = render_report([res], title="t")
    assert page.startswith('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">')
    assert f"<title>t</title><style>{CSS}</style></head><body><h1>t</h1>" in page
    assert "body{font-family" in CSS and page.endswith("</script></body></html>")
    # no preview, no scoping, no extra image: the script draws everything
    assert "attrib-static" not in page and "<img" not in page and 'class="attrib-report"' not in page
    assert page.count("<script") == 2 and page.count('<div id="results-') == 1
    # the fragment carries the same data for its script
    frag = render_report([res], title="t", standalone=False)

    def payload(text: str) -> Any:
        m = re.search(r'<script type="application/json" id="attrib-data-[0-9a-f]+">(.*?)</script>', text, re.S)
        assert m is not None
        return json.loads(m.group(1))

    assert payload(frag) == payload(page)


# ---------------------------------------------------------------------------- in a browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    yield d
    d.quit()


def _wait(driver: Any, js: str, timeout: float = 30.0) -> Any:
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = driver.execute_script(js)
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {js}")


HOST = (
    '<!DOCTYPE html><html><head><meta charset="utf-8"><style>body{{margin:7px;font-family:serif}}</style></head>'
    '<body><p id="host">notebook text</p><canvas id="host-canvas" width="10" height="10"></canvas>{}</body></html>'
)


def test_fragment_in_a_host_page(driver: Any, tmp_path: Path) -> None:
    frag = _result()._repr_html_()
    # With scripts: the interactive view replaces the preview; the host page keeps its own styles.
    (tmp_path / "live.html").write_text(HOST.format(frag))
    driver.get((tmp_path / "live.html").as_uri())
    _wait(driver, "return document.querySelectorAll('.result[data-ready]').length === 1")
    assert driver.execute_script("return getComputedStyle(document.querySelector('.attrib-static')).display") == "none"
    assert driver.execute_script("return getComputedStyle(document.body).marginLeft") == "7px"
    assert driver.execute_script("return getComputedStyle(document.body).fontFamily") == "serif"
    assert driver.execute_script("return getComputedStyle(document.getElementById('host-canvas')).width") == "10px"
    assert driver.execute_script("return getComputedStyle(document.querySelector('.attrib-report canvas')).width") == (
        "336px"
    )
    # Without scripts or styles (as a sanitising viewer shows it): the preview image is there and decoded.
    bare = re.sub(r"<script.*?</script>|<style>.*?</style>", "", frag, flags=re.S)
    (tmp_path / "bare.html").write_text(HOST.format(bare))
    driver.get((tmp_path / "bare.html").as_uri())
    _wait(driver, "return document.querySelector('.attrib-static img').complete")
    assert driver.execute_script("return document.querySelector('.attrib-static img').naturalWidth") == 56
    assert driver.find_element("css selector", ".attrib-static img").is_displayed()
    assert "I see a circle." in driver.find_element("css selector", ".attrib-static .trace").text


def test_two_fragments_in_one_page_keep_apart(driver: Any, tmp_path: Path) -> None:
    """Two notebook cells' fragments: every element id is unique, and each slider drives its own canvas."""
    (tmp_path / "two.html").write_text(HOST.format(_result()._repr_html_() + _result()._repr_html_()))
    driver.get((tmp_path / "two.html").as_uri())
    _wait(driver, "return document.querySelectorAll('.result[data-ready]').length === 2")
    ids = driver.execute_script("return Array.from(document.querySelectorAll('[id]')).map(e => e.id)")
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    reports = driver.find_elements("css selector", ".attrib-report")
    assert len(reports) == 2 and reports[0].get_attribute("id") != reports[1].get_attribute("id")


def test_estimator_figures_show_counts_as_integers_and_no_paths(driver: Any, tmp_path: Path) -> None:
    est = {"validation": {"lds": 0.3995, "n_test_examples": 200, "test_collection": "data/secret-path"}}
    (tmp_path / "v.html").write_text(HOST.format(_result(estimator=est)._repr_html_()))
    driver.get((tmp_path / "v.html").as_uri())
    _wait(driver, "return document.querySelectorAll('.result[data-ready]').length === 1")
    text = driver.find_element("css selector", ".attrib-report").text
    assert "n test examples 200" in text and "200.000" not in text and "0.400" in text
    assert "secret-path" not in driver.page_source and "secret-path" not in text
