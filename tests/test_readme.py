"""The README tells the truth about the set-up commands, the CI entry point and the schema."""

from __future__ import annotations

from pathlib import Path

from tappa_local import schema
from tappa_local.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    head = README.split("```")[1]
    assert "make demo" in head and "make test" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_schema_table_is_current() -> None:
    assert schema.markdown_table() in README


def test_every_command_is_documented() -> None:
    build_parser()  # every command registers
    for name in COMMANDS:
        assert f"tappa-local {name}" in README, name
    assert "tappa-convert" in README
