"""Which language a path is, and which tree-sitter nodes are definitions in each grammar.

Grammars come from the per-language wheels (`tree-sitter-python`, …): they are compiled in,
so nothing is downloaded at run time. A definition table maps node types to our kinds;
`definition_name` knows the few grammars whose name is not in a `name` field.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import PurePosixPath

import tree_sitter as ts

# Kinds that hold nested definitions which become chunks of their own.
CONTAINERS = frozenset({"class", "struct", "interface", "trait", "impl", "namespace", "module"})
COMMENTS = frozenset({"comment", "line_comment", "block_comment"})


@dataclass(frozen=True)
class LanguageSpec:
    """How to find definitions in one tree-sitter grammar."""

    name: str
    module: str  # the grammar wheel's module
    entry: str  # the function in it that returns the language pointer
    definitions: dict[str, str]  # node type -> kind
    wrappers: frozenset[str] = frozenset()  # node types wrapping one definition (export, …)


_JS_DEFS = {
    "function_declaration": "function",
    "generator_function_declaration": "function",
    "class_declaration": "class",
    "method_definition": "function",
    "lexical_declaration": "function",  # only `const f = () => …` (see definition_name)
    "variable_declaration": "function",
}
_TS_DEFS = _JS_DEFS | {
    "abstract_class_declaration": "class",
    "interface_declaration": "interface",
    "type_alias_declaration": "type",
    "enum_declaration": "enum",
    "internal_module": "namespace",
    "module": "namespace",
    "function_signature": "function",
    "abstract_method_signature": "function",
}
_C_DEFS = {
    "function_definition": "function",
    "struct_specifier": "struct",
    "union_specifier": "union",
    "enum_specifier": "enum",
    "type_definition": "type",
}

SPECS: dict[str, LanguageSpec] = {
    spec.name: spec
    for spec in (
        LanguageSpec(
            "python", "tree_sitter_python", "language",
            {"function_definition": "function", "class_definition": "class"},
            frozenset({"decorated_definition"}),
        ),
        LanguageSpec(
            "javascript", "tree_sitter_javascript", "language", _JS_DEFS,
            frozenset({"export_statement"}),
        ),
        LanguageSpec(
            "typescript", "tree_sitter_typescript", "language_typescript", _TS_DEFS,
            frozenset({"export_statement", "ambient_declaration", "expression_statement"}),
        ),
        LanguageSpec(
            "tsx", "tree_sitter_typescript", "language_tsx", _TS_DEFS,
            frozenset({"export_statement", "ambient_declaration", "expression_statement"}),
        ),
        LanguageSpec(
            "go", "tree_sitter_go", "language",
            {
                "function_declaration": "function",
                "method_declaration": "method",
                "type_declaration": "type",
            },
        ),
        LanguageSpec(
            "rust", "tree_sitter_rust", "language",
            {
                "function_item": "function",
                "function_signature_item": "function",
                "struct_item": "struct",
                "enum_item": "enum",
                "union_item": "union",
                "trait_item": "trait",
                "impl_item": "impl",
                "mod_item": "module",
                "macro_definition": "macro",
                "type_item": "type",
            },
        ),
        LanguageSpec(
            "java", "tree_sitter_java", "language",
            {
                "class_declaration": "class",
                "interface_declaration": "interface",
                "enum_declaration": "enum",
                "record_declaration": "class",
                "annotation_type_declaration": "interface",
                "method_declaration": "function",
                "constructor_declaration": "function",
            },
        ),
        LanguageSpec("c", "tree_sitter_c", "language", _C_DEFS),
        LanguageSpec(
            "cpp", "tree_sitter_cpp", "language",
            _C_DEFS | {"class_specifier": "class", "namespace_definition": "namespace"},
            frozenset({"template_declaration"}),
        ),
    )
}

_EXTENSIONS = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".go": "go", ".rs": "rust", ".java": "java", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".hxx": "cpp", ".h++": "cpp", ".ipp": "cpp",
    ".md": "markdown", ".markdown": "markdown", ".rst": "restructuredtext",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".txt": "text",
    ".cfg": "ini", ".ini": "ini", ".html": "html", ".htm": "html", ".css": "css",
    ".xml": "xml", ".sql": "sql",
}
_NAMES = {"Makefile": "make", "Dockerfile": "docker", "README": "text", "LICENSE": "text"}


def language_of(path: str) -> str:
    """The language name of a path, from its extension; "text" when unknown."""
    p = PurePosixPath(path)
    return _EXTENSIONS.get(p.suffix.lower()) or _NAMES.get(p.name, "text")


@functools.cache
def parser_for(language: str) -> ts.Parser | None:
    """A tree-sitter parser for a language with a grammar, else None."""
    spec = SPECS.get(language)
    if spec is None:
        return None
    module = __import__(spec.module)
    return ts.Parser(ts.Language(getattr(module, spec.entry)()))


def definition_name(node: ts.Node, language: str) -> str | None:
    """The symbol name a definition node introduces, or None when it is not a named definition."""
    t = node.type
    if t in ("lexical_declaration", "variable_declaration"):
        return _bound_function_name(node)
    if t == "method_declaration" and language == "go":
        return _go_method_name(node)
    if t == "type_declaration" and language == "go":
        spec = next((c for c in node.named_children if c.type == "type_spec"), None)
        return _text(spec.child_by_field_name("name")) if spec else None
    if t == "impl_item":
        return _text(_first_type_identifier(node.child_by_field_name("type")))
    if t == "type_definition":
        return _text(_declarator_name(node.child_by_field_name("declarator")))
    if t == "function_definition" and language in ("c", "cpp"):
        return _text(_declarator_name(node.child_by_field_name("declarator")))
    if t in ("struct_specifier", "union_specifier", "enum_specifier", "class_specifier") \
            and node.child_by_field_name("body") is None:
        return None  # a use of the type (`struct point p;`), not its definition
    return _text(node.child_by_field_name("name"))


def definition_kind(node: ts.Node, spec: LanguageSpec) -> str:
    """The kind of a definition node, refined where the node type alone is too coarse."""
    kind = spec.definitions[node.type]
    if node.type == "type_declaration" and spec.name == "go":
        spec_node = next((c for c in node.named_children if c.type == "type_spec"), None)
        body = spec_node.child_by_field_name("type") if spec_node else None
        kind = {"struct_type": "struct", "interface_type": "interface"}.get(
            body.type if body else "", "type"
        )
    if node.type == "type_definition":
        inner = node.child_by_field_name("type")
        if inner is not None and inner.child_by_field_name("body") is not None:
            kind = spec.definitions.get(inner.type, "type")
    return kind


def _bound_function_name(node: ts.Node) -> str | None:
    """`const f = () => …` names a function; other declarations are plain statements."""
    declarators = [c for c in node.named_children if c.type == "variable_declarator"]
    if len(declarators) != 1:
        return None
    value = declarators[0].child_by_field_name("value")
    if value is None or value.type not in (
        "arrow_function", "function_expression", "function", "generator_function", "class",
    ):
        return None
    return _text(declarators[0].child_by_field_name("name"))


def _go_method_name(node: ts.Node) -> str | None:
    name = _text(node.child_by_field_name("name"))
    receiver = node.child_by_field_name("receiver")
    recv_type = _first_type_identifier(receiver)
    return f"{_text(recv_type)}.{name}" if recv_type is not None and name else name


def _first_type_identifier(node: ts.Node | None) -> ts.Node | None:
    if node is None:
        return None
    if node.type == "type_identifier":
        return node
    for child in node.named_children:
        found = _first_type_identifier(child)
        if found is not None:
            return found
    return None


def _declarator_name(node: ts.Node | None) -> ts.Node | None:
    """Follow a C/C++ declarator chain (pointer, reference, function) down to its name."""
    while node is not None:
        if node.type in (
            "identifier", "field_identifier", "type_identifier", "qualified_identifier",
            "destructor_name", "operator_name", "primitive_type",
        ):
            return node
        inner = node.child_by_field_name("declarator")
        if inner is None:
            inner = next((c for c in node.named_children if "declarator" in c.type
                          or c.type.endswith("identifier")), None)
        node = inner
    return None


def _text(node: ts.Node | None) -> str | None:
    if node is None or node.text is None:
        return None
    return node.text.decode("utf-8", errors="replace").replace("::", ".")
