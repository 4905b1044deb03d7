"""Errors of the megacontext package: each message says what the user can do next."""


class MegaContextError(Exception):
    """Base of every expected failure in `megacontext`; the CLI prints it as one line."""


class ModelNotFound(MegaContextError):
    """The base model (or its files) could not be found or loaded."""


class StoreLocked(MegaContextError):
    """Another process holds the index database open for writing."""


class SchemaTooNew(MegaContextError):
    """The index was written by a newer mcagent."""


class NotIndexed(MegaContextError):
    """There is no index yet where one was expected."""


class NothingToIndex(MegaContextError):
    """The repository has no file that can be indexed."""


class StoreCorrupt(MegaContextError):
    """The index database cannot be read."""


class ModelUnsupported(MegaContextError, ValueError):
    """The base model lacks what a requested feature needs (e.g. a Llama-shaped layer)."""


class RunMismatch(MegaContextError, ValueError):
    """A training run's checkpoint does not fit the run being resumed."""
