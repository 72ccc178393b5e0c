"""Each command's parameters, declared once, for typer and for the fast path.

A command is a plain function; each parameter says what it is in its annotation, with the
arguments typer.Option / typer.Argument take, and its default after `=`:

    def chkpnt(
        veid: Annotated[str | None, Argument(metavar="[VEID]", help="the VE")] = None,
        pid: Annotated[int | None, Option("--pid", help="root of the process tree")] = None,
        ...

A module's commands hang on a `Group` (`@app.command()`, as on a typer.Typer).  Nothing
here imports typer: cli/app.py turns groups and commands into the typer app
(`typer_command`) when help, completion or an error message is needed, and cli/main.py
first tries `parse`, which reads the same declarations and gives the values typer would
give, or None whenever typer might see the command line differently (an unknown option,
--help, a value that does not convert, a missing argument, anything it does not handle):
then typer parses it, and its help, messages and exit codes are the only ones.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple


class _Decl:
    """typer.Option/typer.Argument's arguments, kept until a typer parameter is built."""

    __slots__ = ("decls", "kwargs")

    def __init__(self, *decls: str, **kwargs: Any) -> None:
        self.decls = decls
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}{(*self.decls, *self.kwargs.items())}"


class Option(_Decl):
    """An option: `Option("--name", help=...)` (typer.Option's arguments)."""


class Argument(_Decl):
    """A positional argument: `Argument(metavar="FILE", help=...)` (typer.Argument's)."""


class Exit(Exception):
    """End a command with this exit code (cli/main.py returns it), as typer.Exit does."""

    def __init__(self, code: int = 0) -> None:
        super().__init__(code)
        self.code = code


# --------------------------------------------------------------------------- groups


class Command(NamedTuple):
    name: str
    func: Callable[..., Any]
    kwargs: dict[str, Any]  # typer's command() arguments (context_settings, ...)


class Group:
    """A command group: typer.Typer's arguments and its commands, built into a typer.Typer
    by cli/app.py only when typer is needed."""

    def __init__(self, **typer_kwargs: Any) -> None:
        self.kwargs = typer_kwargs
        self.commands: dict[str, Command] = {}

    def command(
        self, name: str | None = None, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            cmd = name or func.__name__.lower().replace("_", "-")  # typer's default name
            self.commands[cmd] = Command(cmd, func, kwargs)
            return func

        return register


# --------------------------------------------------------------------------- declarations

_REQUIRED: Any = object()
_FAST_TYPES = (bool, int, str)
_FAST_KWARGS = frozenset({"help", "metavar", "show_default"})  # change no parsing


class Param(NamedTuple):
    """One parameter of a command, as its declaration says."""

    name: str
    decl: Any  # Option or Argument (or a typer.Option/typer.Argument)
    type: Any  # the annotation without Annotated and without None
    optional: bool  # `T | None`
    default: Any  # _REQUIRED when there is none

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def _split(annotation: Any) -> tuple[Any, bool, Any]:
    """Annotated[T | None, Option(...)] -> (T, True, the Option)."""
    decl = None
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        # ours, or a typer.Option/typer.Argument (typer's path takes it, the fast path not)
        decls = [x for x in extras if isinstance(x, _Decl) or hasattr(x, "param_decls")]
        decl = decls[0] if len(decls) == 1 else None
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(rest) < len(typing.get_args(annotation))
        annotation = rest[0] if len(rest) == 1 else annotation
    return annotation, optional, decl


def params(func: Callable[..., Any]) -> list[Param]:
    """The declared parameters of a command, in order (TypeError if one is undeclared)."""
    code = func.__code__  # no inspect: it costs more to import than a command's parsing
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    defaults = dict(zip(names[code.co_argcount - len(func.__defaults__ or ()) :],
                        func.__defaults__ or (), strict=True))  # fmt: skip
    defaults.update(func.__kwdefaults__ or {})
    out = []
    for name in names:
        annotation = func.__annotations__.get(name)
        if isinstance(annotation, str):  # from __future__ import annotations
            annotation = eval(annotation, func.__globals__)
        typ, optional, decl = _split(annotation)
        if decl is None:
            raise TypeError(f"{func.__qualname__}: parameter {name} has no Option/Argument")
        out.append(Param(name, decl, typ, optional, defaults.get(name, _REQUIRED)))
    return out


# --------------------------------------------------------------------------- the fast path


def _fast(ps: list[Param]) -> bool:
    """Whether `parse` reads these parameters exactly as typer does."""
    for p in ps:
        if not isinstance(p.decl, _Decl):
            return False
        if p.type not in _FAST_TYPES or not set(p.decl.kwargs) <= _FAST_KWARGS:
            return False
        if isinstance(p.decl, Option):
            if not p.decl.decls or any(
                not d.startswith("--") or "/" in d or "=" in d for d in p.decl.decls
            ):
                return False
            if p.type is bool and (p.default is not False or p.optional):
                return False
        elif p.decl.decls or p.type is bool:
            return False
    return True


def _convert(typ: Any, text: str) -> Any:
    if typ is int:
        return int(text) if text.isascii() and text.isdigit() else _REQUIRED
    return text


def parse(func: Callable[..., Any], args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments typer would call `func` with for `args`, or None when typer
    must parse them (help, an error, or a form this parser does not take on)."""
    try:
        ps = params(func)
    except Exception:
        return None
    if not _fast(ps):
        return None
    options = {d: p for p in ps if isinstance(p.decl, Option) for d in p.decl.decls}
    arguments = [p for p in ps if isinstance(p.decl, Argument)]
    values: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-"):
            positional.append(token)
            continue
        name, eq, text = token.partition("=")
        p = options.get(name)
        if p is None:  # --help, --, a short or unknown option: typer's to answer
            return None
        if p.type is bool:
            if eq:
                return None
            values[p.name] = True
            continue
        if not eq:
            if i == len(args) or args[i].startswith("-"):
                return None
            text = args[i]
            i += 1
        value = _convert(p.type, text)
        if value is _REQUIRED:
            return None
        values[p.name] = value
    if len(positional) > len(arguments):
        return None
    for p, text in zip(arguments, positional, strict=False):
        value = _convert(p.type, text)
        if value is _REQUIRED:
            return None
        values[p.name] = value
    for p in ps:
        if p.name not in values:
            if p.required:
                return None
            values[p.name] = p.default
    return values


# --------------------------------------------------------------------------- typer


def typer_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` as typer sees a command: the same name, help and parameters, with each
    Option/Argument made a typer.Option/typer.Argument (imports typer)."""
    import inspect

    import typer

    made = {Option: typer.Option, Argument: typer.Argument}
    sig = []
    for p in params(func):
        typ = p.type | None if p.optional else p.type
        if isinstance(p.decl, _Decl):
            info = made[type(p.decl)](*p.decl.decls, **p.decl.kwargs)
        else:
            info = p.decl
        sig.append(
            inspect.Parameter(
                p.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=inspect.Parameter.empty if p.required else p.default,
                annotation=typing.Annotated[typ, info],
            )
        )

    def command(**kwargs: Any) -> Any:
        try:
            return func(**kwargs)
        except Exit as e:  # as typer.Exit: typer's runner (and CliRunner) return its code
            raise typer.Exit(e.code) from None

    command.__name__ = func.__name__
    command.__qualname__ = func.__qualname__
    command.__doc__ = func.__doc__
    command.__module__ = func.__module__
    command.__signature__ = inspect.Signature(sig)  # type: ignore[attr-defined]
    return command


# Help and usage errors in click's plain format, not rich's panels: rendering them with
# rich imports typer.rich_utils (rich.markdown with markdown-it, rich.traceback with
# pygments), ~80 ms of the ~150 a `cpt --help` took (issue 13: help at most the
# interpreter's start + 60 ms).  The words are the same.
PLAIN: dict[str, Any] = {"rich_markup_mode": None}


def typer_group(group: Group) -> Any:
    """A Group as a typer.Typer (imports typer)."""
    import typer

    app = typer.Typer(**{**PLAIN, **group.kwargs})
    for cmd in group.commands.values():
        app.command(cmd.name, **cmd.kwargs)(typer_command(cmd.func))
    return app
