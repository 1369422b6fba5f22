"""The small core every device family stands on, and the only part of the agent a family imports.

- :mod:`.model`      what a driver hands over: Reading, Event, EvidenceFile, the DeviceSink it calls
- :mod:`.state`      a family's own small durable state (StateStore, from ``DeviceSink.store``)
- :mod:`.config`     config primitives: the strict base, secrets, DeviceConfig, YAML loading whose
                     errors name file, line, key path and what was expected
- :mod:`.units`      durations and sizes in configs (``30s``, ``64MiB``)
- :mod:`.driver`     the Driver/Runner contract and the capabilities a runner declares
- :mod:`.commands`   what a command handler is (Refused, CommandContext, parse_args)
- :mod:`.registry`   finding a family by its ``driver:`` name (or dotted module path)
- :mod:`.backoff`    the one backoff (Backoff config, Retry delays)
- :mod:`.clock`      injectable time (Clock, VirtualClock for tests)
- :mod:`.boundary`   where outside bytes come in: failures counted, logged once, reported
- :mod:`.ratelimit`  token bucket and log throttle
- :mod:`.loopwatch`  the event loop's 50 ms budget, watched
- :mod:`.stats`      percentiles
- :mod:`.transport`  the bridges' links: TCP listen and dial, UDP, serial, their limits, answers
                     after the commit (a family brings only its framer and session), and the one
                     serial-line options model (Modbus RTU, HJ 212, GB/T 26875.3)

It imports nothing of the agent above it and no family (pyproject.toml's import contracts).
"""
