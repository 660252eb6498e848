"""The chat itself: what happens to each message, for a websocket or a `PUT`, from admission to fan-out."""
