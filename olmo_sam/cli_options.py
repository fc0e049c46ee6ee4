"""One vocabulary on the command line: options whose old spellings still work, hidden.

Every concept has one flag across commands (``docs/cli.md`` lists them). A renamed flag keeps its
old spelling for one release as a hidden alias: passing it still works (same value, same type and
checks) and prints a one-line deprecation note on stderr; ``--help`` shows only the new name.

* :func:`option` -- ``click.option`` with ``old=("--out-dir", ...)``.
* :func:`old_positional` -- an output directory that used to be a positional argument and is now
  ``--out``: the positional form still works, hidden from the usage line.
* :func:`old_command_name` -- a renamed sub-command under its old name, hidden.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import click

__all__ = ["option", "old_positional", "old_command_name", "deprecation_note"]

#: ctx.meta key: primary option name -> raw value given through an old spelling
_META = "olmo_sam.old_spellings"
_UNSET = getattr(click.core, "UNSET", None)


def deprecation_note(old: str, new: str) -> None:
    click.echo(f"olmo-sam: {old} is deprecated and will be removed in the next release; use {new}", err=True)


def _given(opts, name: str) -> bool:
    value = opts.get(name, _UNSET)
    return value is not _UNSET and value is not None and value != ()


class _Primary(click.Option):
    """The current spelling: takes the value an old spelling brought (see :class:`_OldSpelling`)."""

    def handle_parse_result(self, ctx, opts, args):
        pending = ctx.meta.get(_META, {})
        if self.name in pending and not _given(opts, self.name):
            opts = {**opts, self.name: pending.pop(self.name)}
        return super().handle_parse_result(ctx, opts, args)


def _hand_over(ctx, opts, *, name: str, primary: click.Parameter, old: str, new: str) -> None:
    """The value given under the old spelling ``old`` goes to ``primary`` (error if both given)."""
    if not _given(opts, name):
        return
    if _given(opts, primary.name) or primary.name in ctx.params and (
        ctx.get_parameter_source(primary.name) == click.core.ParameterSource.COMMANDLINE
    ):
        raise click.UsageError(f"{old} is the old spelling of {new}; give {new} only")
    deprecation_note(old, new)
    ctx.meta.setdefault(_META, {})[primary.name] = opts[name]


class _OldSpelling(click.Option):
    """A hidden, deprecated spelling of another option; it hands its raw value over."""

    def __init__(self, *args, primary: click.Option, **kwargs):
        super().__init__(*args, hidden=True, expose_value=False, **kwargs)
        self.primary = primary

    def handle_parse_result(self, ctx, opts, args):
        _hand_over(ctx, opts, name=self.name, primary=self.primary, old=self.opts[0], new=self.primary.opts[0])
        return None, args


class _OldPositional(click.Argument):
    """A positional argument kept for the option that replaced it; absent from the usage line."""

    def __init__(self, *args, primary: click.Option, shown_as: str, **kwargs):
        super().__init__(*args, required=False, expose_value=False, **kwargs)
        self.primary = primary
        self.shown_as = shown_as

    def get_usage_pieces(self, ctx):
        return []

    def handle_parse_result(self, ctx, opts, args):
        _hand_over(ctx, opts, name=self.name, primary=self.primary, old=f"{self.shown_as} as a positional argument",
                   new=f"{self.primary.opts[0]} {self.shown_as}")  # fmt: skip
        return None, args


def _same_shape(primary: click.Option) -> dict:
    """Parser settings of ``primary`` for its alias; values are converted by ``primary`` itself."""
    shape: dict = {"type": click.UNPROCESSED, "multiple": primary.multiple, "nargs": primary.nargs}
    if primary.is_flag:
        shape = {"is_flag": True, "flag_value": True}
    return shape


def option(*decls: str, old: Sequence[str] = (), **kwargs: Any) -> Callable:
    """``click.option(*decls, **kwargs)``, plus hidden deprecated aliases ``old`` (e.g.
    ``("--out-dir",)``) that set the same parameter."""

    def decorator(f):
        f = click.option(*decls, cls=_Primary, **kwargs)(f)
        primary = f.__click_params__[-1]
        for i, spelling in enumerate(old):
            f = click.option(spelling, f"_old_{primary.name}_{i}", cls=_OldSpelling, primary=primary,
                             **_same_shape(primary))(f)  # fmt: skip
        return f

    return decorator


def old_positional(metavar: str) -> Callable:
    """Keep a positional output argument (``metavar``, e.g. ``OUT_DIR``) working for the ``--out``
    option declared just before (below) this decorator."""

    def decorator(f):
        primary = next((p for p in reversed(getattr(f, "__click_params__", [])) if isinstance(p, _Primary)), None)
        if primary is None:
            raise TypeError("old_positional must sit above the olmo_sam.cli_options.option it feeds")
        return click.argument(f"_old_{primary.name}_positional", cls=_OldPositional, primary=primary,
                              shown_as=metavar, type=click.UNPROCESSED)(f)  # fmt: skip

    return decorator


def old_command_name(group: click.Group, old: str, command: click.Command) -> click.Command:
    """Register ``command`` in ``group`` also under its former name ``old``, hidden, with a note."""

    class OldName(type(command)):  # type: ignore[misc]
        def parse_args(self, ctx, args):
            parent = ctx.parent.command_path if ctx.parent is not None else group.name
            deprecation_note(f"'{parent} {old}'", f"'{parent} {command.name}'")
            return super().parse_args(ctx, args)

    alias = copy.copy(command)
    alias.__class__ = OldName
    alias.name = old
    alias.hidden = True
    group.add_command(alias, old)
    return alias
