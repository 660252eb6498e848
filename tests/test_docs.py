"""The documentation stays true: every setting is documented and the examples are the defaults."""

from __future__ import annotations

from pathlib import Path

from gischat.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_env_example_holds_the_defaults() -> None:
    assert Settings(_env_file=ROOT / ".env.example") == Settings(_env_file=None)


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        variable = name.upper()
        assert f"`{variable}`" in readme, f"{variable} missing from README's settings table"
        assert f"{variable}=" in example, f"{variable} missing from .env.example"


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.index("## ")]
    assert "pip install . && gischat" in head
    assert 'pip install -e ".[test]" && pytest' in head
