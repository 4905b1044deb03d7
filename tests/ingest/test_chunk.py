"""Chunker: the symbols each language's fixture defines, and the coverage invariant."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.chunk import TEXT_WINDOW_LINES, Chunk, chunk_file, module_path
from ingest.languages import SPECS

FIXTURES = Path(__file__).parent / "fixtures"

EXPECTED = {
    "sample.py": [
        ("function", "sample.top_level"), ("class", "sample.Greeter"),
        ("method", "sample.Greeter.__init__"), ("method", "sample.Greeter.message"),
        ("class", "sample.Greeter.Inner"), ("method", "sample.Greeter.Inner.deep"),
        ("function", "sample.fetch"), ("gap", "sample"),
    ],
    "sample.js": [
        ("function", "sample.add"), ("function", "sample.square"), ("class", "sample.Counter"),
        ("method", "sample.Counter.constructor"), ("method", "sample.Counter.increment"),
        ("function", "sample.exported"), ("class", "sample.Widget"),
        ("method", "sample.Widget.render"),
    ],
    "sample.ts": [
        ("interface", "sample.Shape"), ("type", "sample.Point"), ("enum", "sample.Color"),
        ("class", "sample.Circle"), ("method", "sample.Circle.area"),
        ("function", "sample.makeCircle"), ("namespace", "sample.Geometry"),
        ("function", "sample.Geometry.origin"), ("function", "sample.arrow"),
    ],
    "sample.tsx": [
        ("interface", "sample.Props"), ("function", "sample.Button"), ("function", "sample.Card"),
        ("class", "sample.Panel"), ("method", "sample.Panel.render"),
    ],
    "sample.go": [
        ("struct", "sample.Stack"), ("interface", "sample.Sizer"),
        ("method", "sample.Stack.Push"), ("method", "sample.Stack.Size"),
        ("function", "sample.Join"), ("function", "sample.main"),
    ],
    "sample.rs": [
        ("struct", "sample.Cache"), ("enum", "sample.Event"), ("trait", "sample.Store"),
        ("impl", "sample.Cache"), ("method", "sample.Cache.new"),
        ("method", "sample.Cache.insert"), ("method", "sample.Cache.get"),
        ("module", "sample.helpers"), ("function", "sample.helpers.double"),
        ("function", "sample.main"),
    ],
    "Sample.java": [
        ("class", "Sample.Account"), ("method", "Sample.Account.Account"),
        ("method", "Sample.Account.deposit"), ("interface", "Sample.Account.Listener"),
        ("enum", "Sample.Account.Kind"), ("interface", "Sample.Ledger"),
        ("class", "Sample.Entry"),
    ],
    "sample.c": [
        ("struct", "sample.point"), ("struct", "sample.complex_t"), ("enum", "sample.color"),
        ("function", "sample.add"), ("function", "sample.make_array"),
        ("function", "sample.main"),
    ],
    "sample.cpp": [
        ("namespace", "sample.shapes"), ("class", "sample.shapes.Shape"),
        ("class", "sample.shapes.Square"), ("method", "sample.shapes.Square.area"),
        ("function", "sample.shapes.maximum"), ("struct", "sample.Config"),
        ("function", "sample.shapes.total"), ("function", "sample.main"),
    ],
}


def assert_tiles(chunks: list[Chunk], text: str) -> None:
    """Chunks concatenate to the text, and their line spans follow one another."""
    assert "".join(c.text for c in chunks) == text, "chunks must concatenate to the file"
    assert all(c.text for c in chunks), "no empty chunk"
    line = 1
    for c in chunks:
        assert c.line_start == line, f"chunk {c.symbol} starts at {c.line_start}, not {line}"
        body = c.text[:-1] if c.text.endswith("\n") else c.text
        assert c.line_end == c.line_start + body.count("\n"), c
        line = c.line_end + 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_symbols(name: str) -> None:
    text = (FIXTURES / name).read_text()
    chunks = chunk_file(name, text)
    assert_tiles(chunks, text)
    found = {(c.kind, c.symbol) for c in chunks}
    missing = [e for e in EXPECTED[name] if e not in found]
    assert not missing, f"{name}: missing {missing}; found {sorted(found)}"


def test_every_grammar_has_a_fixture() -> None:
    from ingest.languages import language_of

    covered = {language_of(n) for n in EXPECTED}
    assert covered == set(SPECS), f"languages without a fixture: {set(SPECS) - covered}"


def test_definition_pulls_in_comment_above() -> None:
    text = (FIXTURES / "sample.go").read_text()
    push = next(c for c in chunk_file("sample.go", text) if c.symbol == "sample.Stack.Push")
    assert push.text.startswith("// Push adds a value."), push.text


def test_method_line_span() -> None:
    text = (FIXTURES / "sample.py").read_text()
    init = next(c for c in chunk_file("sample.py", text) if c.symbol.endswith("__init__"))
    lines = text.splitlines()
    assert "def __init__" in lines[init.line_start - 1]
    assert "self.name = name" in "\n".join(lines[init.line_start - 1 : init.line_end])


def test_syntax_errors_still_chunk() -> None:
    text = "def ok():\n    return 1\n\ndef broken(:\n    pass\n\nclass C:\n    def m(self):\n"
    chunks = chunk_file("broken.py", text)
    assert_tiles(chunks, text)
    assert ("function", "broken.ok") in {(c.kind, c.symbol) for c in chunks}


def test_markdown_sections() -> None:
    text = "# Title\n\nintro\n\n## Install\n\npip install\n\n```\n# not a heading\n```\n"
    chunks = chunk_file("docs/guide.md", text)
    assert_tiles(chunks, text)
    assert [c.text.splitlines()[0] for c in chunks] == ["# Title", "## Install"]
    assert {c.kind for c in chunks} == {"section"}


def test_text_windows_are_bounded() -> None:
    text = "".join(f"line {i}\n" for i in range(200))
    chunks = chunk_file("notes.txt", text)
    assert_tiles(chunks, text)
    assert max(c.line_end - c.line_start + 1 for c in chunks) <= TEXT_WINDOW_LINES


def test_module_path() -> None:
    assert module_path("pkg/mod.py") == "pkg.mod"
    assert module_path("pkg/__init__.py") == "pkg"
    assert module_path("src/lib.rs") == "src.lib"
    assert module_path("setup.py") == "setup"


def test_non_ascii_text_and_crlf() -> None:
    text = "# é\r\ndef f():\r\n    return 'ü'\r\n\r\nclass Ω:\r\n    pass\r\n"
    chunks = chunk_file("u.py", text)
    assert "".join(c.text for c in chunks) == text
    assert ("class", "u.Ω") in {(c.kind, c.symbol) for c in chunks}


def test_empty_file() -> None:
    assert chunk_file("empty.py", "") == []


_CODE_LINES = {
    "python": ["def f(x):", "    return x", "class A:", "    def m(self):", "        pass",
               "import os", "@dec", "x = 1", "# comment", ""],
    "javascript": ["function f() {", "}", "class A {", "  m() { return 1; }", "const g = () => 1;",
                   "export default class B {}", "// c", ""],
    "go": ["func f() {", "}", "type T struct {", "\tx int", "func (t *T) M() {}", "package p", ""],
    "rust": ["fn f() {", "}", "impl A {", "    fn m(&self) {}", "struct S;", "mod m {", ""],
    "c": ["int f(void) {", "}", "struct s {", "int x;", "};", "#include <x.h>", "/* c */", ""],
}
_EXT = {"python": "py", "javascript": "js", "go": "go", "rust": "rs", "c": "c"}


@settings(max_examples=150, deadline=None)
@given(
    language=st.sampled_from(sorted(_CODE_LINES)),
    picks=st.lists(st.integers(0, 50), max_size=60),
    noise=st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    final_newline=st.booleans(),
)
def test_coverage_property_on_generated_code(language: str, picks: list[int], noise: str,
                                             final_newline: bool) -> None:
    lines = _CODE_LINES[language]
    text = "\n".join(lines[p % len(lines)] if p < 45 else noise for p in picks)
    text += "\n" if final_newline and text else ""
    chunks = chunk_file(f"gen.{_EXT[language]}", text)
    assert "".join(c.text for c in chunks) == text


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=400), name=st.sampled_from(["a.md", "b.txt", "c.toml", "d.py"]))
def test_coverage_property_on_any_text(text: str, name: str) -> None:
    chunks = chunk_file(name, text)
    assert "".join(c.text for c in chunks) == text
