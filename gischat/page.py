"""The small HTML page shown to people who open the instance's URL in a browser."""

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
<style>
body {{ font-family: system-ui, sans-serif; max-width: 42rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
h1 {{ margin-bottom: 0.2rem; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid #ddd; }}
td.count {{ text-align: right; font-variant-numeric: tabular-nums; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style>
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
<script>
async function refresh() {{
  try {{
    const response = await fetch("status", {{cache: "no-store"}});
    const status = await response.json();
    for (const room of status.rooms) {{
      const cell = document.querySelector(`td.count[data-room="${{CSS.escape(room.name)}}"]`);
      if (cell) cell.textContent = room.nb_connected_users;
    }}
  }} catch (error) {{ /* keep the last counts */ }}
}}
setInterval(refresh, 10000);
</script>
</body>
</html>
"""

ROW = '<tr><td>{name}</td><td><code>room/{path}/ws</code></td><td class="count" data-room="{name}">{count}</td></tr>'


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
