"""Drivers: one package per transport/device family that turns hardware into readings and events
(Modbus, RTSP cameras). Each defines ``DRIVER`` (an :class:`agent.core.driver.Driver`) and imports
nothing of the agent but :mod:`agent.core`; :mod:`agent.core.registry` finds it by name."""
