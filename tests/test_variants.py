"""The variant registry and the plugins: every pipeline step reaches a model through its variant.

The bundled v1 point-and-copy model streams (``attrib stream``/``demo``/``serve``)
with its direct and via-copy parts per span; the registries refuse duplicates;
the plugins that register the benchmark and the variants are loaded from the
package's entry points, and a broken third-party plugin is skipped, not fatal.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

import attrib
from attrib.cli import main
from attrib.shapes import make_example
from attrib.streaming.stream import Attributor, SpanEvent

V1 = "shapes-qwen25vl-v1"


@pytest.fixture(scope="module")
def v1() -> Attributor:
    return Attributor.load(V1)


def test_plugins_register_the_benchmark_and_both_variants() -> None:
    from attrib.collect.datasets import DATASETS
    from attrib.models.loading import MODEL_KINDS, NAMED_MODELS, PROCESSOR_KINDS
    from attrib.plugins import load_plugins
    from attrib.variants.registry import VARIANTS

    assert load_plugins() == ["latent", "pointcopy", "shapes"]
    assert {"plain", "pointcopy", "latent"} <= set(VARIANTS)
    assert {"pointcopy", "latent"} <= set(MODEL_KINDS) and "ShapesProcessor" in PROCESSOR_KINDS
    assert {"shapes2-qwen25vl", "shapes-qwen25vl", V1} <= set(NAMED_MODELS) and {"shapes", "shapes2"} <= set(DATASETS)
    assert attrib.models.default_model_name() == "shapes2-qwen25vl"


def test_registries_refuse_duplicates() -> None:
    from attrib.collect.datasets import DATASETS, register_dataset
    from attrib.models.loading import (
        MODEL_KINDS,
        NAMED_MODELS,
        PROCESSOR_KINDS,
        NamedModel,
        register_model_kind,
        register_named_model,
        register_processor_kind,
    )
    from attrib.variants.registry import VARIANTS, register_variant

    attrib.load  # noqa: B018  (the plugins are loaded by the first lookups below)
    attrib.models.get_named_model(V1)
    with pytest.raises(ValueError, match="already registered"):
        register_variant(VARIANTS["pointcopy"])
    with pytest.raises(ValueError, match="already registered"):
        register_model_kind(MODEL_KINDS["latent"])
    with pytest.raises(ValueError, match="already registered"):
        register_processor_kind(PROCESSOR_KINDS["ShapesProcessor"])
    with pytest.raises(ValueError, match="already registered"):
        register_named_model(NAMED_MODELS[V1])
    with pytest.raises(ValueError, match="default model is already registered"):
        register_named_model(NamedModel("another", NAMED_MODELS[V1].path, default=True))
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DATASETS["shapes"])
    with pytest.raises(ValueError, match="no variant 'nope' is registered"):
        attrib.get_variant("nope")


def test_a_broken_plugin_is_logged_and_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import attrib.plugins as plugins

    class Broken:
        name, value = "broken", "nowhere:register"

        def load(self):  # type: ignore[no-untyped-def]
            raise ImportError("no module named nowhere")

    calls: list[int] = []

    class Good:
        name, value = "good", "here:register"

        def load(self):  # type: ignore[no-untyped-def]
            return lambda: calls.append(1)

    monkeypatch.setattr(plugins, "_DONE", False)
    monkeypatch.setattr(plugins, "_LOADED", [])
    monkeypatch.setattr(plugins, "entry_points", lambda group: [Good(), Broken()])
    with caplog.at_level(logging.WARNING, logger="attrib.plugins"):
        assert plugins.load_plugins() == ["good"]
    assert calls == [1] and "broken" in caplog.text and "no module named nowhere" in caplog.text
    assert plugins.load_plugins() == ["good"] and calls == [1]  # once only


def test_a_model_loaded_by_path_keeps_the_dataset_its_directory_records(tmp_path: Path) -> None:
    """A v2 model copied elsewhere (no named entry) still defaults to its own benchmark; without the record,
    the processor kind's default applies."""
    import shutil

    src = Path(attrib.__file__).parent / "shapes" / "bundled" / "shapes2-qwen25vl"
    dst = tmp_path / "my-v2"
    shutil.copytree(src, dst)
    loaded = attrib.load(str(dst))
    assert loaded.named is None and loaded.default_dataset == "shapes2:test"
    (dst / "attrib_processor.json").write_text(json.dumps({"class": "ShapesProcessor", "version": 1}))
    assert attrib.load(str(dst)).default_dataset == "shapes:test"


def test_load_reports_each_kind_of_model() -> None:
    base, v = attrib.load("shapes-qwen25vl"), attrib.load(V1)
    assert (base.variant, v.variant) == ("plain", "pointcopy")
    assert base.family == v.family == "qwen2_5_vl" and base.dims == v.dims == (4, 6)
    assert base.default_dataset == v.default_dataset == "shapes:test"
    assert base.default_flagger() is not None and v.default_flagger() is None
    default = attrib.load()  # the bundled model: v2, 6 layers x 8 heads, its own benchmark, estimator and flagger
    assert default.name == "shapes2-qwen25vl" and default.dims == (6, 8) and default.variant == "plain"
    assert default.default_dataset == "shapes2:test" and default.default_flagger() is not None
    assert default.default_estimator() is not None
    assert v.signature["class"] == "PointCopyModel" and base.signature["class"] != v.signature["class"]


def test_v1_streams_with_direct_and_via_copy_parts(v1: Attributor) -> None:
    ex = make_example("test", 0)
    res = v1.stream(ex.image(), ex.question.text, truth=ex.answer).run()
    assert res.spans and res.token_sources is not None and len(res.token_sources) == res.generated_tokens
    assert any(s >= 0 for s in res.token_sources)  # the model copied patches
    for ev in res.spans:
        assert isinstance(ev, SpanEvent) and set(ev.parts) == {"via_copy"}
        via = ev.parts["via_copy"]
        assert via.shape == ev.scores.shape and np.isfinite(via).all()
    # a span that holds copies gets attribution through them
    assert max(float(np.abs(ev.parts["via_copy"]).sum()) for ev in res.spans) > 0
    # the scores are the estimator's on the span's features, split exactly into direct + via-copy
    d = res.spans[-1].to_dict()
    assert len(d["parts"]["via_copy"]) == len(d["scores"])
    f = v1.verify(res)
    assert f["n_spans"] == len(res.spans) and np.isfinite(f["topk_drop"])


def test_cli_demo_and_stream_on_v1(tmp_path: Path) -> None:
    assert main(["demo", "--model", V1, "--n", "1", "--no-verify", "--out", str(tmp_path / "demo")]) == 0
    demo = json.loads((tmp_path / "demo" / "demo.json").read_text())
    spans = demo["results"][0]["spans"]
    assert spans and all(set(s["parts"]) == {"via_copy"} for s in spans)
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "partText" in html and "via_copy" in html
    ex = make_example("test", 1)
    ex.image().save(tmp_path / "img.png")
    args = ["stream", "--model", V1, "--image", str(tmp_path / "img.png"), "--prompt", ex.question.text]
    assert main([*args, "--json", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["faithfulness"]["n_spans"] == len(s["spans"]) > 0


def test_serve_streams_v1_parts(v1: Attributor) -> None:
    from attrib.streaming.serve import TOKEN_HEADER, make_server

    srv = make_server(v1, port=0, max_new_tokens=120)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        host, port = srv.server_address[:2]
        conn = http.client.HTTPConnection(str(host), port, timeout=60)
        conn.request("GET", "/api/examples")
        exs = json.loads(conn.getresponse().read())
        assert exs and exs[0]["id"] == "test-0"
        headers = {"Origin": f"http://{host!s}:{port}", TOKEN_HEADER: srv.token, "Content-Type": "application/json"}
        request = json.dumps({"image": "test-0", "prompt": exs[0]["question"]})
        conn.request("POST", "/api/stream", body=request, headers=headers)
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type", "").startswith("text/event-stream")
        body = r.read().decode()
        events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
        spans = [e for e in events if e.get("type") == "span"]
        assert spans and all("via_copy" in e["parts"] for e in spans)
        assert events[-1]["type"] == "final"
    finally:
        srv.shutdown()
        srv.server_close()
