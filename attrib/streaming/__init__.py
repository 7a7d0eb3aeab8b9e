"""Streaming: per-span region attributions while the model generates, and the ways to see them.

- :mod:`attrib.streaming.stream`: :class:`Attributor` and its event stream;
- :mod:`attrib.streaming.report`: self-contained HTML reports;
- :mod:`attrib.streaming.serve`: the live local web view (``attrib serve``).
"""

from attrib.streaming.stream import AttributionStream, Attributor, FinalEvent, Flagger, SpanEvent, StreamResult

__all__ = ["AttributionStream", "Attributor", "FinalEvent", "Flagger", "SpanEvent", "StreamResult"]
