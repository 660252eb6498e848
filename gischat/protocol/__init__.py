"""The wire, pure (no I/O): both dialects' messages, parsing, GeoJSON screening, refusals, the AsyncAPI document."""
