"""The dashboard: `margincall dashboard --deployment FILE` (docs/dashboard.md).

- `chain`: what the pages show, read through the SDK and the engine's events reader;
- `render`: HTML fragments (Jinja2 templates) and the price-and-liquidations SVG;
- `app`: the Starlette app, the block poller and the server-sent events;
- `cli`: the click command.
"""
