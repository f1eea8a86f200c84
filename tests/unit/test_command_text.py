"""A command's help written once as its function's docstring (cli/options.py)."""

from __future__ import annotations

import argparse
import sys

import pytest

from sottovoce.cli.options import CommandText, command_text, no_options, subcommand


def _documented(args: argparse.Namespace) -> int:
    """do a thing to NAME

    The first paragraph of what it does,
    on two lines.

    exit codes: 0 done; 1 error

    examples:
      sottovoce thing bob --data-dir ~/.a \\
        --long-option value
      sottovoce thing carol
    """
    return 0


def test_the_docstring_gives_help_description_example_and_heading() -> None:
    assert command_text(_documented) == CommandText(
        help="do a thing to NAME",
        description="The first paragraph of what it does, on two lines.\n\n"
                    "exit codes: 0 done; 1 error",
        example="  sottovoce thing bob --data-dir ~/.a --long-option value\n"
                "  sottovoce thing carol",
        heading="examples",
    )


def _no_heading(args: argparse.Namespace) -> int:
    """help

    description

    sottovoce thing
    """
    return 0


def _too_short(args: argparse.Namespace) -> int:
    """help only"""
    return 0


@pytest.mark.parametrize("func", [_no_heading, _too_short, lambda args: 0])
def test_a_docstring_that_is_not_a_commands_help_is_refused(func: object) -> None:
    with pytest.raises(ValueError, match="not a command's help"):
        command_text(func)  # type: ignore[arg-type]


def test_a_docstring_and_the_same_text_as_arguments_declare_the_same_command() -> None:
    def by_doc(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        return subcommand(sub, "thing", func=_documented, options=no_options)

    def by_args(
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
    ) -> argparse.ArgumentParser:
        text = command_text(_documented)
        return subcommand(sub, "thing", func=_documented, options=no_options, help=text.help,
                          description=text.description, example=text.example,
                          heading=text.heading)

    helps = []
    for declare in (by_doc, by_args):
        parser = argparse.ArgumentParser(prog="sottovoce")
        made = declare(parser.add_subparsers(dest="command"))
        helps.append((parser.format_help(), made.format_help()))
        assert parser.parse_args(["thing"]).func is _documented
    assert helps[0] == helps[1]
    top, own = helps[0]
    assert "do a thing to NAME" in top
    assert own.endswith("examples:\n  sottovoce thing bob --data-dir ~/.a --long-option value\n"
                        "  sottovoce thing carol\n")
    assert "on two lines.\n\nexit codes: 0 done; 1 error" in own


def _pasted(args: argparse.Namespace) -> int:
    """do a thing

    {program} runs it.

    example:
      {program} thing bob
    """
    return 0


def test_program_in_a_docstring_is_the_program_as_it_can_be_pasted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["/nowhere/bin/sv"])  # not the one PATH finds
    text = command_text(_pasted)
    assert (text.description, text.example) == ("/nowhere/bin/sv runs it.",
                                                 "  /nowhere/bin/sv thing bob")
