"""Streaming: per-span region attributions while the model generates, and the ways to see them.

- [`attrib.streaming.stream`][attrib.streaming.stream]: [`Attributor`][attrib.streaming.stream.Attributor] and its event
stream;
- [`attrib.streaming.report`][attrib.streaming.report]: self-contained HTML reports;
- [`attrib.streaming.serve`][attrib.streaming.serve]: the live local web view (``attrib serve``).
"""

from attrib.streaming.stream import AttributionStream, Attributor, FinalEvent, Flagger, SpanEvent, StreamResult

__all__ = ["AttributionStream", "Attributor", "FinalEvent", "Flagger", "SpanEvent", "StreamResult"]
