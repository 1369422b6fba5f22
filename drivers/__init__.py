"""Drivers turn hardware into readings and events. See :mod:`drivers.base` for the contract."""

from __future__ import annotations

import importlib
import pkgutil
import re

from drivers.base import Driver

# Bridges speak a vendor or standard protocol on top of a driver's transport; both are found by name.
_PACKAGES = ("drivers", "firmware_bridges")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class UnknownDriver(LookupError):
    pass


def available_drivers() -> list[str]:
    names = []
    for package_name in _PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            if module.name != "base" and not module.name.startswith("_"):
                names.append(module.name)
    return sorted(names)


def get_driver(name: str) -> Driver:
    """The ``DRIVER`` of module ``drivers.<name>`` or ``firmware_bridges.<name>``."""
    if _NAME.match(name or ""):
        for package_name in _PACKAGES:
            try:
                module = importlib.import_module(f"{package_name}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package_name}.{name}":
                    raise   # the driver exists but one of its own imports is missing: say so
                continue
            driver = getattr(module, "DRIVER", None)
            if isinstance(driver, Driver):
                return driver
    raise UnknownDriver(f"unknown driver {name!r}; expected one of: {', '.join(available_drivers())}")
