"""mcagent: a coding agent whose memory of a repository is a MegaContext.

The command-line edge: parses flags, resolves settings, calls `megacontext` and `ingest`,
renders results. The only package that prints.
"""

__version__ = "0.1.0"
