"""The AsyncAPI 3.0 document of both websocket dialects, generated from the wire models (see `document`)."""
