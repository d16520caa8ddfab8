"""ksmtuned-py: a drop-in replacement for the ksmtuned daemon."""

__version__ = "0.1.0"
