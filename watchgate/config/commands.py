"""Upstream commands and paths: splitting, `~` and `$VAR` expansion, and derived server names."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping

from watchgate.config.errors import InvalidSetting, invalid, join_index

# The key in plugin sections for entries that apply to every server.
GLOBAL_KEY = "_global"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
MAX_NAME_LENGTH = 64

_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|(?P<dollar>\$))")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand(text: str, path: str, variables: Mapping[str, str]) -> str:
    """Expand a leading `~` or `~user`, then `${VAR}` and `$VAR`, in one value.

    `$$` is a literal `$`, and a `$` that starts no variable name stays as it
    is. An unset variable is an error, because passing the literal text
    `$TOKEN` to a server fails in ways that are hard to trace back.
    """
    if text.startswith("~"):
        text = os.path.expanduser(text)

    def replace(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        name = match["plain"] or match["braced"]
        if not _VARIABLE_NAME.fullmatch(name):
            raise invalid(path, text, "a variable reference of the form ${NAME} or $NAME")
        if name not in variables:
            raise InvalidSetting(
                path,
                f"invalid value {text!r}: environment variable {name} is not set (set it, or write $$ for a literal $)",
            )
        return variables[name]

    return _VARIABLE.sub(replace, text)


def split_command(command: str | list[str], path: str, variables: Mapping[str, str]) -> tuple[str, ...]:
    """Return the argument list of a command, with every argument expanded.

    A string is split like a POSIX shell splits words (quotes group, nothing
    else is interpreted). Expansion happens after splitting, so a quoted
    `$VAR` is expanded as well.
    """
    if isinstance(command, str):
        try:
            arguments = shlex.split(command)
        except ValueError as exc:
            raise invalid(path, command, f"a command line that splits into words ({exc})") from None
        argument_paths = [path] * len(arguments)
    else:
        arguments = list(command)
        argument_paths = [join_index(path, index) for index in range(len(arguments))]

    if not arguments:
        raise invalid(path, command, "a non-empty command")
    if not arguments[0]:
        raise invalid(argument_paths[0], arguments[0], "a program name")

    expanded = []
    for argument, argument_path in zip(arguments, argument_paths, strict=True):
        if "\0" in argument:
            raise invalid(argument_path, argument, "an argument without NUL characters")
        expanded.append(expand(argument, argument_path, variables))
    return tuple(expanded)


# Programs that run a package or script named by a later argument.
_LAUNCHERS = {"npx", "uvx", "node", "bunx", "pipx", "deno", "uv", "bun", "pnpx"}
_PYTHON = re.compile(r"python(\d+(\.\d+)?)?")
# Subcommands after a launcher, as in `uv run`, `pipx run`, `deno run`, `bun x`.
_SUBCOMMANDS = {"run", "x", "exec", "tool"}
# Options whose value is a separate argument and names no server.
_OPTIONS_WITH_VALUE = {
    "-p",
    "--package",
    "--from",
    "--with",
    "--with-requirements",
    "--python",
    "--directory",
    "--project",
    "--spec",
    "--index-url",
    "-r",
    "--require",
    "--import",
}
_SCRIPT_SUFFIXES = (".js", ".mjs", ".cjs", ".ts", ".mts", ".py", ".pyz")
_NAME_PREFIXES = ("mcp-server-", "mcp_server_", "server-")


def derive_server_name(command: tuple[str, ...]) -> str | None:
    """Guess a server name from its command, or return None when nothing usable remains.

    `npx -y @modelcontextprotocol/server-filesystem ~/x` gives "filesystem" and
    `uvx mcp-server-fetch==1.0` gives "fetch": launchers, their subcommands and
    options are skipped, then the scope, version and common prefixes of the
    package name are removed.
    """
    return _clean_name(_package_argument(command))


def _package_argument(command: tuple[str, ...]) -> str:
    program = os.path.basename(command[0])
    if program not in _LAUNCHERS and not _PYTHON.fullmatch(program):
        return program

    remaining = list(command[1:])
    while remaining and program in {"uv", "pipx", "deno", "bun"} and remaining[0] in _SUBCOMMANDS:
        remaining.pop(0)
    while remaining:
        argument = remaining.pop(0)
        if argument == "-m" and remaining:
            return remaining[0]
        if argument in _OPTIONS_WITH_VALUE:
            if remaining:
                remaining.pop(0)
            continue
        if not argument.startswith("-"):
            return argument
    return program


def _clean_name(argument: str) -> str | None:
    if argument.startswith("@") and "/" in argument:
        argument = argument.split("/", 1)[1]
    elif "/" in argument:
        argument = argument.rstrip("/").rsplit("/", 1)[-1]
    if argument.endswith(_SCRIPT_SUFFIXES):
        argument = argument.rsplit(".", 1)[0]

    # Version pins: `pkg@1.2`, `pkg==1.2`, `pkg>=1`, `pkg[extra]`.
    argument = re.split(r"[@=<>!~\[]", argument, maxsplit=1)[0]
    for prefix in _NAME_PREFIXES:
        if argument.startswith(prefix) and len(argument) > len(prefix):
            argument = argument[len(prefix) :]
            break

    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", argument).strip("-.")[:MAX_NAME_LENGTH]
    return name or None


def check_server_name(name: str, path: str) -> str:
    """Return `name` if it can name a server in key paths, file names and sockets."""
    if not NAME_PATTERN.fullmatch(name) or name in {".", ".."} or len(name) > MAX_NAME_LENGTH:
        raise invalid(
            path,
            name,
            f"a name of 1 to {MAX_NAME_LENGTH} characters from A-Z, a-z, 0-9, '_', '.' and '-'",
        )
    if name == GLOBAL_KEY:
        raise invalid(path, name, f"a name other than {GLOBAL_KEY} (the key for entries that apply to every server)")
    return name


def resolve_path(value: str, path: str, base_dir: str, variables: Mapping[str, str]) -> str:
    """Expand `value` and make it absolute, reading a relative path from `base_dir`."""
    expanded = expand(value, path, variables)
    if "\0" in expanded:
        raise invalid(path, value, "a path without NUL characters")
    return os.path.normpath(os.path.join(base_dir, expanded))
