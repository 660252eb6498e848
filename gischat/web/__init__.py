"""The HTTP face: the FastAPI app, its REST routes in both dialects, the web client and `/about`."""
