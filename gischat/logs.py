"""`gischat.logs.JsonFormatter`: the name LOG_CONFIG files written for earlier releases use.

The formatter lives in `gischat.observability.logs`; this name stays so those files keep working.
"""

from gischat.observability.logs import JsonFormatter

__all__ = ["JsonFormatter"]
