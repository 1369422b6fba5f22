"""Where the agent finds a device family by the name in a device's ``driver:`` key: the ``DRIVER``
of module ``drivers.<name>`` or ``firmware_bridges.<name>``, or of any importable module named by
a dotted path (``mycompany.agent_plugins.lift``), so a family can live outside this repository."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from typing import Any

from agent.core.driver import Driver

# Bridges speak a vendor or standard protocol on top of a driver's transport; both are found by name.
_PACKAGES = ("drivers", "firmware_bridges")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class UnknownDriver(LookupError):
    pass


def available_drivers() -> list[str]:
    names = []
    for package_name in _PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                names.append(module.name)
    return sorted(names)


def get_driver(name: str) -> Driver:
    """The ``DRIVER`` of module ``drivers.<name>`` or ``firmware_bridges.<name>``, or of the module
    a dotted name names."""
    if _NAME.match(name or ""):
        candidates = [f"{package_name}.{name}" for package_name in _PACKAGES]
    elif _DOTTED.match(name or ""):
        candidates = [name]
    else:
        candidates = []
    for module_name in candidates:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise   # the driver exists but one of its own imports is missing: say so
            continue
        driver = getattr(module, "DRIVER", None)
        if isinstance(driver, Driver):
            return driver
    raise UnknownDriver(f"unknown driver {name!r}; expected one of: {', '.join(available_drivers())}, "
                        "or the dotted name of a module that defines DRIVER")


def family_sections() -> dict[str, str]:
    """Top-level config sections the families of ``drivers/`` and ``firmware_bridges/`` declare
    (``Driver.section``): section name -> driver name. Imports every family package (their
    ``__init__`` holds the Driver and its options, not the heavy libraries they run on)."""
    sections: dict[str, str] = {}
    for name in available_drivers():
        section = get_driver(name).section
        if section is not None:
            if section in sections:
                raise ValueError(f"drivers {sections[section]} and {name} both declare the config section {section!r}")
            sections[section] = name
    return sections


def find_decoder(name: str) -> Callable[[str], dict[str, Any]]:
    """The frame decoder `edge-agent decode NAME` means: the driver's own (``Driver.decode``), or a
    protocol a family names in ``Driver.decoders()``. Raises UnknownDriver."""
    try:
        return get_driver(name).decode
    except UnknownDriver:
        pass
    for driver_name in available_drivers():
        decoder = get_driver(driver_name).decoders().get(name)
        if decoder is not None:
            return decoder
    protocols = sorted({p for d in available_drivers() for p in get_driver(d).decoders()})
    raise UnknownDriver(f"no decoder for {name!r}; expected a driver ({', '.join(available_drivers())}) or a "
                        f"protocol ({', '.join(protocols) or 'none'})")
