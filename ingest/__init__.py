"""Turn a repository's files into chunk records: walk (git-aware listing) and chunk (tree-sitter).

Never imports torch or the model: everything here is plain text processing.
"""
