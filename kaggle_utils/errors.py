"""The kit's user-facing error base: the CLI prints these as one line and exits non-zero (bugs keep tracebacks)."""


class KitError(Exception):
    """Bad input or environment: the message names the file or setting and what is wrong."""
