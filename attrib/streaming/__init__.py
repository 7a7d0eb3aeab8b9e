"""Streaming: per-span region attributions while the model generates, and the ways to see them.

- [`attrib.streaming.stream`][attrib.streaming.stream]: [`Attributor`][attrib.streaming.stream.Attributor] and its event
stream;
- [`attrib.streaming.events`][attrib.streaming.events]: a JSON-lines log of streamed events;
- [`attrib.streaming.report`][attrib.streaming.report]: self-contained HTML reports;
- [`attrib.streaming.serve`][attrib.streaming.serve]: the live local web view (``attrib serve``).
"""

from attrib.streaming.events import EventLog, read_events
from attrib.streaming.stream import AttributionStream, Attributor, FinalEvent, Flagger, SpanEvent, StreamResult

__all__ = [
    "AttributionStream",
    "Attributor",
    "EventLog",
    "FinalEvent",
    "Flagger",
    "SpanEvent",
    "StreamResult",
    "read_events",
]
