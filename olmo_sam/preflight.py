"""Checks every command runs before any work, each a one-line error naming what the user gave.

* Values: :data:`POSITIVE_INT`, :data:`NON_NEGATIVE_INT`, :data:`POSITIVE_FLOAT`,
  :data:`NON_NEGATIVE_FLOAT` (click types: zero
  or a negative is an error, never a silent default; an omitted option is ``None``), and
  :data:`DEVICE` (a torch device string that exists on this machine).
* Outputs: :func:`check_out` -- the output path (``--out``) is not a file where a directory goes
  (or the reverse) and can be created and written, checked before the command computes anything.
* Inputs: :func:`check_safetensors` (a truncated ``*.safetensors`` file is one line naming it;
  JSON and YAML files are read by :mod:`olmo_sam.files`, likewise); :func:`check_local_model`
  tells a missing local directory from a Hugging Face hub id.
* Errors: :func:`cli_errors` shows configuration and file errors as ``Error: <one line>`` with exit
  code 1 (click's usage errors, exit code 2 with "Try --help", are kept for what click parses).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Optional, Sequence

import click
from olmo_core.exceptions import OLMoConfigurationError

from .config import ConfigError
from .files import read_json
from .seeds import MAX_SEED

__all__ = [
    "POSITIVE_INT",
    "NON_NEGATIVE_INT",
    "POSITIVE_FLOAT",
    "NON_NEGATIVE_FLOAT",
    "DEVICE",
    "DeviceType",
    "comma_list",
    "device_problem",
    "check_out",
    "out_dir_callback",
    "out_file_callback",
    "model_callback",
    "check_safetensors",
    "check_local_model",
    "looks_local",
    "cli_errors",
    "SEED",
    "FLOAT",
    "CommandError",
]

#: an integer >= 1 (sizes, counts, intervals that must happen)
POSITIVE_INT = click.IntRange(min=1)
#: an integer >= 0 (0 has a documented meaning, e.g. "no evaluation")
NON_NEGATIVE_INT = click.IntRange(min=0)
#: a seed: OLMo-core's ``seed_all`` takes [0, 2^32 - 1]
SEED = click.IntRange(min=0, max=MAX_SEED)


class FiniteFloatRange(click.FloatRange):
    """click's ``FloatRange`` without ``nan`` and ``inf`` (which pass its comparisons)."""

    def convert(self, value, param, ctx):
        x = super().convert(value, param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return x

    def _describe_range(self) -> str:  # (click's would print "x<=None" for an unbounded one)
        return super()._describe_range() if (self.min, self.max) != (None, None) else ""


#: a float > 0 (magnitudes, budgets)
POSITIVE_FLOAT = FiniteFloatRange(min=0, min_open=True)
#: a float >= 0 (a recipe's learning rate: 0 is a frozen run, used to check weight loading)
NON_NEGATIVE_FLOAT = FiniteFloatRange(min=0)
#: any finite float
FLOAT = FiniteFloatRange()


def comma_list(kind: Callable[[str], Any] = str, *, choices: Sequence[str] = (), keep: Sequence[str] = ()) -> Callable:
    """click ``callback=`` of a repeatable, comma-separated option (``--gammas 0.01,0.02 --gammas
    0.03``): its entries read by ``kind`` (``float``: a finite number; ``int``: a whole one) and
    among ``choices`` when given, none twice; the words in ``keep`` (a preset such as
    ``table10``) pass as they are. A value given but empty (``--lrs ''``) is refused, not read as
    "not given"."""

    def parse(ctx, param, values):
        out: list = []
        for text in (x.strip() for v in values or () for x in str(v).split(",")):
            if not text:
                continue
            if text in keep:
                value: Any = text
            elif choices and text not in choices:
                raise click.BadParameter(f"{text!r} is not one of {', '.join(choices)}")
            else:
                value = _entry(kind, text)
            if value in out:
                raise click.BadParameter(f"{text} is given twice; give each value once")
            out.append(value)
        if values and not out:
            raise click.BadParameter("the value is empty; give at least one entry (comma-separated)")
        return tuple(out)

    return parse


def _entry(kind: Callable[[str], Any], text: str) -> Any:
    if kind is str:
        return text
    if kind is int and re.fullmatch(r"[+-]?\d+", text):  # (exact: a large seed is not rounded through a float)
        return int(text)
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not math.isfinite(x) or (kind is int and not x.is_integer()):
        raise click.BadParameter(f"{text!r} is not a {'whole number' if kind is int else 'finite number'}")
    return int(x) if kind is int else x


class DeviceType(click.ParamType):
    """A torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``) that exists on this machine;
    the value stays the string the user typed."""

    name = "device"

    def convert(self, value, param, ctx):
        import torch

        text = str(value).strip()
        problem = device_problem(text)
        if problem:
            self.fail(problem, param, ctx)
        dev = torch.device(text)
        if dev.type == "cpu":
            return text
        if dev.type == "cuda":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if n == 0:
                self.fail(f"{text!r}: no CUDA GPU is visible on this machine; use cpu", param, ctx)
            if dev.index is not None and dev.index >= n:
                self.fail(f"{text!r}: this machine has {n} CUDA GPU(s) (cuda:0 to cuda:{n - 1})", param, ctx)
            return text
        if dev.type == "mps":
            if not torch.backends.mps.is_available():
                self.fail(f"{text!r}: MPS is not available on this machine; use cpu", param, ctx)
            return text
        raise AssertionError(dev)  # (device_problem admits these three types only)


def device_problem(text: str) -> Optional[str]:
    """What is wrong with ``text`` as a device of this package (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``), whatever this machine has (a study is planned where it will not run); ``None`` if
    nothing."""
    import torch

    try:
        dev = torch.device(str(text).strip())
    except (RuntimeError, TypeError, ValueError):
        return f"{text!r} is not a torch device; write cpu, cuda, cuda:N or mps"
    if dev.type not in ("cpu", "cuda", "mps"):
        return f"{text!r}: device type {dev.type!r} is not supported here; use cpu, cuda[:N] or mps"
    return None


DEVICE = DeviceType()


def _flag(param: Optional[click.Parameter]) -> str:
    if param is None:
        return "--out"
    return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name


def check_out(path: str | Path, *, kind: str = "dir", flag: str = "--out") -> Path:
    """``path`` as an output the command can create and write: for ``kind='dir'`` not an existing
    file, for ``kind='file'`` not an existing directory; its nearest existing ancestor a writable
    directory on a writable file system. Creates nothing."""
    p = Path(path)
    if kind == "dir" and p.exists() and not p.is_dir():
        raise OLMoConfigurationError(f"{flag} {p}: exists and is a file, not a directory; choose another {flag}")
    if kind == "file" and p.is_dir():
        raise OLMoConfigurationError(f"{flag} {p}: is a directory, expected a file path; choose another {flag}")
    probe = p if (kind == "dir" and p.is_dir()) else p.parent
    probe = Path(os.path.abspath(probe))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OLMoConfigurationError(f"{flag} {p}: cannot be created, {probe} is a file; choose another {flag}")
    read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    if read_only or not os.access(probe, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if read_only else "is not writable"
        raise OLMoConfigurationError(f"{flag} {p}: {probe} {why}; choose another {flag} or fix its permissions")
    return p


def _out_callback(kind: str) -> Callable:
    def callback(ctx, param, value):
        if value is None:
            return value
        try:
            check_out(value, kind=kind, flag=_flag(param))
        except OLMoConfigurationError as e:
            raise click.ClickException(str(e)) from None
        return value

    return callback


def model_callback(ctx, param, value):
    """click ``callback=`` for a Hugging Face model given as a local directory or a hub id
    (:func:`check_local_model`, checked as soon as it is parsed)."""
    if value is None:
        return value
    try:
        check_local_model(value, flag=_flag(param))
    except OLMoConfigurationError as e:
        raise click.ClickException(str(e)) from None
    return value


#: click ``callback=`` for an output directory option (checked as soon as it is parsed)
out_dir_callback = _out_callback("dir")
#: click ``callback=`` for an output file option
out_file_callback = _out_callback("file")


def _first_line(error: BaseException) -> str:
    return " ".join((str(error).strip().splitlines() or [""])[0].split())[:200]


def check_safetensors(directory: str | Path) -> None:
    """Every ``*.safetensors`` file in ``directory`` has a complete header (a truncated or corrupt
    file is one line naming it); reads no tensors."""
    from safetensors import safe_open

    for f in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except Exception as e:  # noqa: BLE001 - SafetensorError and OSError alike mean an unusable file
            raise OLMoConfigurationError(
                f"{f}: the model weights could not be read ({type(e).__name__}: {_first_line(e)}); the "
                "*.safetensors file is truncated or corrupt: download or copy it again"
            ) from None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_local(text: str) -> bool:
    """Whether ``text`` can only be a local path, not a Hugging Face hub id (``name`` or
    ``org/name``): it exists, starts with ``.``, ``/`` or ``~``, or has more than one ``/``."""
    return (
        Path(text).expanduser().exists()
        or text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or not _HUB_ID.match(text)
    )


def check_local_model(source: str | Path, *, flag: str) -> bool:
    """True if ``source`` is a local directory (its JSON config and safetensors checked); False if
    it can only be a Hugging Face hub id. A path that looks local (``./x``, ``/x``, ``~/x``, more
    than one ``/``, or an existing file) and is not a directory is one line naming it."""
    text = str(source)
    p = Path(text).expanduser()
    if p.is_dir():
        olmo_core = (p / "model_and_optim").is_dir() or any(p.glob("step*/model_and_optim"))
        export = (
            " (an OLMo-core checkpoint: export it with 'olmo-sam export-hf CHECKPOINT --out DIR')" if olmo_core else ""
        )
        if not (p / "config.json").exists():
            if olmo_core:
                raise OLMoConfigurationError(
                    f"{flag} {text}: no config.json, not a Hugging Face model directory{export}"
                )
        else:
            config = read_json(p / "config.json", what="model config.json")
            if not isinstance(config, dict) or "model_type" not in config:
                raise OLMoConfigurationError(
                    f"{flag} {text}: its config.json is not a Hugging Face model config (no 'model_type'){export}"
                )
        check_safetensors(p)
        return True
    if looks_local(text):
        what = "is a file, not a model directory" if p.exists() else "no such directory"
        raise OLMoConfigurationError(f"{flag} {text}: {what} (and not a Hugging Face hub id such as org/name)")
    return False


class CommandError(RuntimeError):
    """A failure a command reports as one line though no setting is wrong: a download that fails
    its checksum, a model that is not quantized the way it was asked to be."""


def cli_errors(fn: Callable) -> Callable:
    """Run a command, showing configuration, file and :class:`CommandError` errors as
    ``Error: <line>`` (exit code 1), and an interruption (Ctrl-C, or a training run stopped by a
    signal: :class:`olmo_sam.train.RunCanceled`) as ``Interrupted: <line>`` (exit code 130). The
    ``olmo-sam`` group runs every sub-command through it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (OLMoConfigurationError, CommandError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
            raise click.ClickException(_message(e)) from None
        except KeyboardInterrupt as e:
            click.echo(f"Interrupted{': ' + _message(e) if str(e) else ''}", err=True)
            sys.exit(130)

    return wrapper


def _message(e: BaseException) -> str:
    """One line; an error whose text is a block to copy (``keep_lines``: install commands) keeps
    its lines."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    if getattr(e, "keep_lines", False):
        return str(e).rstrip()
    return " ".join(str(e).split())


@contextlib.contextmanager
def errors_by_flag(names: Collection[str], flag_of: Mapping[str, str] = {}) -> Iterator[None]:  # noqa: B006
    """A bad value of one of the config fields ``names`` that a command's flags set is named by its
    flag, as the user gave it (``--gammas[0]: ...``; ``flag_of``: a field whose flag is not
    ``--<its name with dashes>``), not by the field (``gammas[0]``)."""
    try:
        yield
    except ConfigError as e:
        head = re.match(r"\w+", e.path or "")
        if head is None or head.group(0) not in names:
            raise
        name = head.group(0)
        flag = flag_of.get(name, "--" + name.replace("_", "-"))
        raise ConfigError.at(flag + e.path[len(name) :], e.problem) from None
