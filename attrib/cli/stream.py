"""``attrib demo``, ``attrib stream`` and ``attrib serve``: attributions streamed while the model thinks."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from attrib.cli.console import (
    add_generation_options,
    add_model_options,
    console,
    flag_label,
    generate_kwargs,
    load_flagger,
    out,
)

__all__ = ["register"]


def _region_options(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--regions",
        default=None,
        help="region method (default: the estimator's): color, dinov3 (needs --dinov3), grid, voronoi, blocks, "
        "given (stream: --regions-file)",
    )
    q.add_argument("--k", type=int, default=None, help="regions per image (default: the estimator's)")
    q.add_argument(
        "--dinov3", default=None, help="DINOv3 model directory or hub id, for --regions dinov3 (loaded once)"
    )


def _stream_options(q: argparse.ArgumentParser) -> None:
    add_generation_options(q)
    q.add_argument("--top", type=int, default=3, help="top regions shown per span")
    q.add_argument(
        "--no-verify", dest="no_verify", action="store_true", help="skip the per-example check against ablation"
    )
    q.add_argument(
        "--flagger", default=None, help="failure-flagger JSON ('none' disables; default: the model's own, if any)"
    )
    _safety_options(q)


def _safety_options(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--stop-on-flag",
        dest="stop_on_flag",
        action="store_true",
        help="end generation as soon as the failure flag rises (needs a flagger)",
    )
    q.add_argument(
        "--events",
        default=None,
        metavar="FILE",
        help="append every event (scores, trajectory statistics, flag state, timestamps) to this JSON-lines log",
    )


def _open_events(args: argparse.Namespace) -> Any:
    """The ``--events`` log, opened before any work (an unwritable path fails here); ``None`` without it."""
    if getattr(args, "events", None) is None:
        return None
    from attrib.streaming.events import EventLog

    try:
        return EventLog(args.events)
    except OSError as e:
        raise ValueError(f"--events {args.events}: cannot append to it ({e.strerror or e})") from None


def _check_safety(args: argparse.Namespace, flagger: Any) -> None:
    if getattr(args, "stop_on_flag", False) and flagger is None:
        raise ValueError(
            "--stop-on-flag needs a failure flagger: pass --flagger FILE (attrib trajectories --save-flagger); "
            "the model ships none that earns a default place"
        )


def _print_event(console_out: Console, ev: Any, flag: str = "FLAG") -> None:
    from attrib.streaming.stream import SpanEvent

    if isinstance(ev, SpanEvent):
        via = ev.parts.get("via_copy")
        tops = "  ".join(
            f"r{r}:{v:+.3f}" + (f" (copy {float(via[r]):+.3f})" if via is not None else "") for r, v in ev.top_regions
        )
        shares = "".join(f"  [magenta]{k} share {v:.3f}[/magenta]" for k, v in ev.shares.items())
        mark = f" [red bold]{escape(flag)}[/red bold]" if ev.flagged else ""
        console_out.print(
            f"  [dim]{ev.index:>2} @{ev.span_end_s:5.2f}s +{ev.latency_ms:4.1f}ms[/dim] {escape(ev.text)}"
            f"  [cyan]-> {tops}[/cyan]{shares}{mark}"
        )


def _show(console_out: Console, ev: Any, truth: str | None, flagger: Any) -> Any:
    """Print one event; return the result for the final one."""
    from attrib.streaming.stream import FinalEvent

    if not isinstance(ev, FinalEvent):
        _print_event(console_out, ev, flag_label(flagger))
        return None
    res = ev.result
    verdict = ""
    if res.correct is not None:
        verdict = " [green]right[/green]" if res.correct else f" [red]wrong[/red] (truth {escape(truth or '')})"
    console_out.print(f"  answer: [bold]{escape(str(res.answer))}[/bold]{verdict}")
    return res


def run_stream(
    console_out: Console,
    attributor: Any,
    image: Any,
    prompt: str,
    truth: str | None,
    args: Any,
    *,
    regions: Any = None,
    flagger: Any = None,
    events: Any = None,
) -> Any:
    """Stream one image and prompt, print each span as it arrives, then the answer and (unless skipped) the check."""

    res = None
    stop = bool(getattr(args, "stop_on_flag", False))
    with attributor.stream(
        image,
        prompt,
        truth=truth,
        max_new_tokens=args.max_new_tokens,
        flagger=flagger,
        top=args.top,
        regions=regions,
        stop_on_flag=stop,
        **generate_kwargs(args),
    ) as stream:
        sid = events.start(stream, model=attributor.name, flagger=flagger) if events is not None else None
        try:
            for ev in stream:
                if events is not None:
                    events.event(sid, ev)
                res = _show(console_out, ev, truth, flagger) or res
        except Exception as e:
            if events is not None:
                events.error(sid, f"{type(e).__name__}: {e}")
            raise
    if res is not None and res.stopped_on_flag:
        console_out.print(
            f"  [red]generation stopped at span {res.flagged_at}: the failure flag rose (--stop-on-flag)[/red]"
        )
    if res is None:
        raise RuntimeError("the stream ended without a final event")
    if not getattr(args, "no_verify", False):
        if not attributor.variant.ablation_modes:
            console_out.print(
                f"  [dim]no check against ablation: {attributor.variant.description} has no ablator[/dim]"
            )
            return res
        f = attributor.verify(res)
        if f.get("n_spans"):
            pear = f["pearson_vs_loo"]
            console_out.print(
                f"  [dim]check against ablation: Pearson vs leave-one-out "
                f"{'-' if pear is None else f'{pear:.3f}'}; "
                f"top-{f['k']} drop {f['topk_drop']:.3f} vs oracle {f['topk_drop_oracle']:.3f} "
                f"vs random {f['random_drop']:.3f}[/dim]"
            )
    return res


def _attributor(args: argparse.Namespace) -> Any:
    from attrib.streaming.stream import Attributor

    generate_kwargs(args)  # bad decoding options are refused before the model loads
    return Attributor.load(
        args.model,
        args.estimator,
        device=args.device,
        dtype=args.dtype,
        region_method=getattr(args, "regions", None),
        k=getattr(args, "k", None),
        dinov3=getattr(args, "dinov3", None),
        system=getattr(args, "system", None),
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from attrib.collect.datasets import open_dataset
    from attrib.io import atomic_write_json, atomic_write_text
    from attrib.streaming.report import render_report

    if args.stop_on_flag and args.flagger == "none":
        raise ValueError("--stop-on-flag needs a failure flagger, and --flagger none disables it")
    events = _open_events(args)
    t0 = time.perf_counter()
    attributor = _attributor(args)
    console.print(
        f"loaded {attributor.name} and its estimator ({attributor.region_method} regions, K={attributor.k}) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    spec = args.dataset or attributor.loaded.default_dataset
    if spec is None:
        raise ValueError(f"{attributor.name} has no default examples: pass --dataset (shapes:test or a JSONL file)")
    results = []
    flagger = load_flagger(args.flagger, attributor.loaded)
    _check_safety(args, flagger)
    for item in open_dataset(spec).items(args.n, args.start):
        family = f" ({escape(str(item.meta['family']))})" if "family" in item.meta else ""
        out.print(f"\n[bold]{escape(item.uid)}[/bold]{family}: {escape(item.question)}")
        if item.error is not None:
            console.print(f"  [red]skipped:[/red] {escape(item.error)}")
            continue
        regions = item.regions if attributor.region_method == "given" else None
        results.append(
            run_stream(
                out,
                attributor,
                item.load_image(),
                item.question,
                item.answer,
                args,
                regions=regions,
                flagger=flagger,
                events=events,
            )
        )
    if events is not None:
        events.close()
    outdir = Path(args.out)
    html_path = outdir / "report.html"
    named = attributor.loaded.named
    who = "the bundled model" if named is not None and named.default else attributor.name
    atomic_write_text(html_path, render_report(results, title=f"attrib demo: {who}, streamed"))
    atomic_write_json(outdir / "demo.json", {"results": [r.to_dict() for r in results]})
    n_right = sum(bool(r.correct) for r in results)
    console.print(f"\n{n_right}/{len(results)} answered right; wrote {html_path} and {outdir / 'demo.json'}")
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from attrib.io import atomic_write_json, atomic_write_text, load_image
    from attrib.streaming.report import render_report

    if args.stop_on_flag and args.flagger == "none":
        raise ValueError("--stop-on-flag needs a failure flagger, and --flagger none disables it")
    image = load_image(args.image)
    events = _open_events(args)
    regions: Any = None
    if args.regions_file is not None:
        regions = _regions_file(args.regions_file)
        args.regions = "given"
    elif args.regions == "given":
        raise ValueError("--regions given needs --regions-file (a label-map PNG or a JSON list of boxes)")
    attributor = _attributor(args)
    flagger = load_flagger(args.flagger, attributor.loaded)
    _check_safety(args, flagger)
    try:
        res = run_stream(
            out, attributor, image, args.prompt, args.truth, args, regions=regions, flagger=flagger, events=events
        )
    finally:
        if events is not None:
            events.close()
    if args.html:
        atomic_write_text(args.html, render_report([res], title="attrib stream"))
        console.print(f"wrote {args.html}")
    if args.json:
        atomic_write_json(args.json, res.to_dict())
    return 0


def _regions_file(path: str) -> dict[str, Any]:
    """``--regions-file``: a label-map image, or a JSON list of ``[x0, y0, x1, y1]`` boxes."""
    import json

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--regions-file {path} does not exist")
    if p.suffix.lower() == ".json":
        try:
            boxes = json.loads(p.read_text())
        except ValueError as e:
            raise ValueError(f"--regions-file {path} is not valid JSON: {e}") from None
        if not isinstance(boxes, list) or not all(isinstance(b, list) and len(b) == 4 for b in boxes):
            raise ValueError(f"--regions-file {path} must hold a list of [x0, y0, x1, y1] boxes")
        return {"boxes": boxes}
    return {"labels": str(p)}


def _cmd_serve(args: argparse.Namespace) -> int:
    from attrib.streaming.serve import is_loopback, make_server, run_until_interrupted

    if args.regions == "given":
        raise ValueError("serve cannot use --regions given: uploaded images carry no regions of their own")
    token = args.token or os.environ.get("ATTRIB_SERVE_TOKEN") or None
    if token is None and not is_loopback(args.host):
        # Refused before the model loads (make_server refuses it too, before binding).
        raise ValueError(
            f"--host {args.host} serves beyond this machine: pass --token SECRET (or set ATTRIB_SERVE_TOKEN), "
            "or bind to 127.0.0.1"
        )
    if args.stop_on_flag and args.flagger == "none":
        raise ValueError("--stop-on-flag needs a failure flagger, and --flagger none disables it")
    events = _open_events(args)
    attributor = _attributor(args)
    flagger = load_flagger(args.flagger, attributor.loaded)
    _check_safety(args, flagger)
    examples = None
    if args.dataset:
        from attrib.collect.datasets import open_dataset

        examples = list(open_dataset(args.dataset).items(args.examples, 0))
    srv = make_server(
        attributor,
        host=args.host,
        port=args.port,
        token=token,
        allowed_hosts=args.allow_host or (),
        flagger=flagger,
        max_new_tokens=args.max_new_tokens,
        examples=examples,
        time_limit_s=args.time_limit,
        events=events,
        stop_on_flag=args.stop_on_flag,
        **generate_kwargs(args),
    )
    host, port = srv.server_address[:2]
    shown = str(host)
    if shown in ("0.0.0.0", "::", ""):
        shown = "127.0.0.1"
    elif ":" in shown:
        shown = f"[{shown}]"
    how = "" if token is None else "; enter the token in the page, or add #token=YOUR_TOKEN to the address"
    console.print(f"attrib serve: open http://{escape(shown)}:{port}/{escape(how)}  (Ctrl-C stops)")
    try:
        run_until_interrupted(srv)
    finally:
        if events is not None:
            events.close()
    return 0


def register(sub: Any) -> None:
    """Add ``demo``, ``stream`` and ``serve``."""
    d = sub.add_parser("demo", help="stream attributions on the bundled model's examples (the main job)")
    add_model_options(d)
    d.add_argument("--estimator", default=None, help="estimator path stem (default: the one that ships with the model)")
    d.add_argument("--dataset", default=None, help="examples to stream (default: the model's own, e.g. shapes:test)")
    d.add_argument("--n", type=int, default=4, help="examples to stream")
    d.add_argument("--start", type=int, default=0, help="first example")
    d.add_argument("--out", default="out/demo", help="output directory (report.html, demo.json)")
    _region_options(d)
    _stream_options(d)
    d.set_defaults(fn=_cmd_demo)

    st = sub.add_parser("stream", help="stream attributions for one image and prompt, on any supported model")
    add_model_options(st)
    st.add_argument("--estimator", default=None, help="estimator path stem (required unless one ships with the model)")
    st.add_argument("--image", required=True, help="the image file")
    st.add_argument("--prompt", required=True, help="the question")
    st.add_argument("--truth", default=None, help="expected answer, if known")
    _region_options(st)
    st.add_argument(
        "--regions-file",
        dest="regions_file",
        default=None,
        help="this image's own regions: a label-map PNG (values 0..K-1) or a JSON list of [x0, y0, x1, y1] boxes",
    )
    st.add_argument("--html", default=None, help="write a self-contained HTML report here")
    st.add_argument("--json", default=None, help="write the result (spans, scores, answer) as JSON here")
    _stream_options(st)
    st.set_defaults(fn=_cmd_stream)

    sv = sub.add_parser("serve", help="a local web view that streams attributions live")
    add_model_options(sv)
    sv.add_argument(
        "--estimator", default=None, help="estimator path stem (default: the one that ships with the model)"
    )
    sv.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default 127.0.0.1: this machine only; any other needs --token)",
    )
    sv.add_argument(
        "--token",
        default=None,
        help="secret that uploads and generations must carry (default: $ATTRIB_SERVE_TOKEN, else a random one placed "
        "in the page; required with a non-loopback --host; at least 12 characters)",
    )
    sv.add_argument(
        "--allow-host",
        dest="allow_host",
        action="append",
        default=None,
        metavar="NAME[:PORT]",
        help="another name the Host header may carry (e.g. the machine's DNS name); repeatable",
    )
    sv.add_argument(
        "--time-limit",
        dest="time_limit",
        type=float,
        default=300.0,
        help="seconds a generation may run before its stream is closed (default 300)",
    )
    sv.add_argument("--port", type=int, default=8765, help="TCP port (0 picks a free one)")
    sv.add_argument("--flagger", default=None, help="failure-flagger JSON ('none' disables; default: the model's own)")
    _safety_options(sv)
    add_generation_options(sv)
    _region_options(sv)
    sv.add_argument("--dataset", default=None, help="examples offered in the page (default: the model's own)")
    sv.add_argument("--examples", type=int, default=12, help="how many examples of --dataset to offer")
    sv.set_defaults(fn=_cmd_serve)
