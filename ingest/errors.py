"""Errors of the ingest package: each message says what the user can do next."""


class IngestError(Exception):
    """Base of every expected failure in `ingest`; the CLI prints it as one line."""


class NotADirectory(IngestError):
    """The repository path is not a directory."""


class UnreadableFileError(IngestError):
    """A file listed for indexing could not be read."""
