"""The web console: what a field technician at the cabinet sees in a browser on the gateway's
port. Off unless the config has a ``web:`` section (:mod:`agent.web.config`).

Modules, one job each:

- :mod:`.config`     the ``web:`` section
- :mod:`.passwords`  scrypt hashes, and ``edge-agent web-passwd``
- :mod:`.sessions`   logins: sessions that expire, CSRF tokens, rate-limited attempts
- :mod:`.server`     the aiohttp application on the agent's loop: middlewares, start and stop
- :mod:`.api`        the pages' JSON: overview, devices (read, write), events and evidence, pictures
- :mod:`.editor`     the rule editor: shapes drawn on a picture into a config diff, checked, applied
- :mod:`.events`     recent events with their evidence, kept in memory for the events page
- :mod:`.metrics`    ``/metrics`` for Prometheus
- ``static/``        plain HTML, CSS and JavaScript (no build step)

README.md beside this file says why aiohttp and how it fits the agent.
"""
