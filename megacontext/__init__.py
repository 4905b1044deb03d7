"""The MegaContext: a repository as a tree of gists in DuckDB, and the models around it.

Owns tensors, the frozen base model (through `adapter`, the only module importing
transformers), the DuckDB store (all SQL in `store`) and the tree builder. Never prints and
never imports typer or rich: progress is reported through callbacks.
"""
