"""The small status page at /about: rules, rooms and live counts.

Its style and script are static files, so the page can carry a Content-Security-Policy that
forbids inline code, like the web client's.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from gischat.settings import Settings

TEMPLATE = """<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gischat</title>
<link rel="icon" href="static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="static/about.css">
</head>
<body>
<h1>gischat</h1>
<p>Real-time chat for GIS people. Connect with the QTribu plugin for QGIS or any websocket client.</p>
<h2>Rules</h2>
<p>{rules}</p>
<p>Language: <strong>{lang}</strong> · nicknames of {min_author} to {max_author} letters, digits, <code>_</code>
or <code>-</code> · messages up to {max_message} characters · images fit in {max_image}&nbsp;px ·
layers up to {max_features} features</p>
<h2>Rooms</h2>
<table>
<thead><tr><th>Room</th><th>Websocket</th><th class="count">Connected</th></tr></thead>
<tbody id="rooms">
{rows}
</tbody>
</table>
<p><a href="./">Web chat</a> · <a href="docs">API documentation</a> · <a href="status">status</a> · <a href="version">version</a></p>
<script type="module" src="static/about.js"></script>
</body>
</html>
"""

ROW = '<tr><td>{name}</td><td><code>room/{path}/ws</code></td><td class="count" data-room="{name}">{count}</td></tr>'


# Only this instance's own files and its /status: the page shows operator text (rules, room
# names), escaped, and nothing a client sent.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def render(settings: Settings, counts: list[tuple[str, int]]) -> str:
    """Everything user-configurable is escaped: rules and room names come from the environment."""
    rows = "\n".join(
        ROW.format(name=escape(name), path=escape(quote(name, safe="")), count=count)
        for name, count in counts
    )
    return TEMPLATE.format(
        lang=escape(settings.main_lang),
        rules=escape(settings.rules),
        min_author=settings.min_author_length,
        max_author=settings.max_author_length,
        max_message=settings.max_message_length,
        max_image=settings.max_image_size,
        max_features=settings.max_geojson_features,
        rows=rows,
    )
