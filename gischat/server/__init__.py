"""The only part that knows uvicorn: the process runner and the guarded HTTP and websocket protocols."""
