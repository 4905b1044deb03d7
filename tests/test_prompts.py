"""Every shipped prompt renders with its variables, and refuses to render without them."""

import pytest

import prompts


@pytest.mark.parametrize("name", prompts.names())
def test_prompt_renders(name: str) -> None:
    needed = prompts.variables(name)
    text = prompts.render(name, **{v: f"<{v}>" for v in needed})
    assert all(f"<{v}>" in text for v in needed)
    assert "$" not in text
    if needed:
        with pytest.raises(KeyError):
            prompts.render(name)


def test_prompts_exist() -> None:
    assert "ask_system" in prompts.names()
