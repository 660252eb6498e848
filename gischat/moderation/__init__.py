"""Moderation: who may moderate (`tokens`), what they can do (`service`), and the trail they leave (`audit`)."""
