"""Edge agent: reads city hardware and uplinks it to the central platform through a SQLite outbox."""

__version__ = "0.1.0"
