"""How the command line talks to its user, under typer: every usage error as one `error:` line (plus at most one
`try: ... --help` line, exit 2), and help in click's plain 80-column layout naming arguments as users type them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer
from typer._click import exceptions as click_errors
from typer._click.core import ParameterSource
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import Abort

EXIT_INTERRUPTED = 130
CONFIG_META = "voiceclone.config"  # ctx.meta key: the --config file the flag defaults came from


def one_line_errors(call: Callable[[], Any]) -> int:
    """Run a click entry point without its standalone error display and return the exit code: every usage error
    (a bad flag value, a missing argument, an unknown option) is one `error:` line plus one `try:` line, exit 2."""
    try:
        result = call()
    except click_errors.NoArgsIsHelpError as e:
        typer.echo(e.format_message(), err=True)
        return e.exit_code
    except click_errors.UsageError as e:
        typer.echo(f"error: {_usage_message(e)}", err=True)
        if e.ctx is not None:
            typer.echo(f"try: {e.ctx.command_path} --help", err=True)
        return e.exit_code
    except click_errors.ClickException as e:
        typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        return e.exit_code
    except (Abort, KeyboardInterrupt):  # typer's Abort (its click has none); Ctrl-C outside a command's body
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


def _usage_message(e: click_errors.UsageError) -> str:
    """The error on one line; a bad value that came from a --config file names the file and the key."""
    param, ctx = getattr(e, "param", None), e.ctx
    config = ctx.meta.get(CONFIG_META) if ctx is not None else None
    if param is not None and config is not None and ctx.get_parameter_source(param.name) == ParameterSource.DEFAULT_MAP:
        value = ctx.default_map.get(param.name)
        return " ".join(f"{config}: {param.name.replace('_', '-')}: invalid value {value!r}: {e.message}".split())
    return " ".join(e.format_message().split())


class Group(TyperGroup):
    """The `voiceclone` command group: one-line usage errors (see `one_line_errors`)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        code = one_line_errors(lambda: super(Group, self).main(args, prog_name, complete_var, False, **extra))
        if standalone_mode:
            sys.exit(code)
        return code


class Command(TyperCommand):
    """A command whose help names its arguments as users type them (`MANIFEST`, not `{manifest} <path>`)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [self.options_metavar, *(p.metavar or p.name.upper() for p in self._arguments(ctx))]

    def format_options(self, ctx, formatter) -> None:
        arguments = [(p.metavar or p.name.upper(), p.help or "") for p in self._arguments(ctx)]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        options = [p.get_help_record(ctx) for p in self.get_params(ctx) if p.param_type_name == "option"]
        with formatter.section("Options"):
            formatter.write_dl([record for record in options if record])

    def _arguments(self, ctx) -> list:
        return [p for p in self.get_params(ctx) if p.param_type_name == "argument"]
