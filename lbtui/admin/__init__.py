"""The admin side of lbtui: the admin HTTP API (api.py) and its JSON shapes (schema.py), the `lbtui ctl`
client (client.py, ctl.py), and Prometheus metrics. Headless: nothing here imports textual, rich or httpx."""
