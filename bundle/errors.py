"""Errors raised while reading, writing or validating a bundle."""


class BundleError(ValueError):
    """A bundle is malformed or unsafe. The message says which file or field and why."""
