"""The `volagent` command line: run, status, check-config, paths, doctor, gc.

`volagent status` must start about as fast as a bare interpreter. Its usual arguments are
read without argparse (anything unusual falls through to argparse), the daemon renders the
answer (so no JSON parser is loaded), the config is read with tomllib alone and only when
the file could name a socket, and every heavier module (the daemon, the full config,
docker, boto3) is imported only by the command that uses it.
"""

# Imports inside functions are the point of this module: each command loads only its own.
# ruff: noqa: PLC0415

from __future__ import annotations

import os
import sys

from volagent import __version__

TYPE_CHECKING = False  # typing costs an import on the fast path; annotations stay lazy
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from volagent.config import Config

# Must equal the defaults in volagent.config (a test checks); repeated here because
# importing that module would double the start-up time of `volagent status`.
DEFAULT_CONFIG_PATH = "/etc/volagent/volagent.toml"
DEFAULT_SOCKET = "/run/volagent/volagent.sock"

EXIT_BY_STATUS = {"ok": 0, "degraded": 1, "critical": 2}
EXIT_UNREACHABLE = 3
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="volagent",
        description="Keeps the rack's shared filesystem mounted and container volume "
        "directories ready before containers start.",
    )
    parser.add_argument("--version", action="version", version=f"volagent {__version__}")
    parser.add_argument(
        "--config", metavar="PATH", help=f"config file (env VOLAGENT_CONFIG; {DEFAULT_CONFIG_PATH})"
    )
    # --config is also accepted after the subcommand; SUPPRESS keeps a global one
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")

    status = sub.add_parser(
        "status",
        parents=[common],
        help="ask the daemon how things are (exit 0 ok, 1 degraded, 2 critical, 3 unreachable)",
    )
    status.add_argument("--json", action="store_true", help="print the status document")
    status.add_argument("--rack", action="store_true", help="add every host of the rack")
    status.add_argument(
        "--socket", metavar="PATH", help="the daemon's socket (env VOLAGENT_SOCKET; [api] socket)"
    )
    status.add_argument(
        "-v", "--verbose", action="store_true", help="list every volume, not only problems"
    )
    status.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="give up after (5)"
    )

    sub.add_parser("check-config", parents=[common], help="validate and print the effective config")

    paths = sub.add_parser(
        "paths", parents=[common], help="print the host path of each container path"
    )
    paths.add_argument("--app", required=True)
    paths.add_argument("--service", required=True)
    paths.add_argument("--rack", help="default: rack in the config")
    paths.add_argument("paths", nargs="+", metavar="PATH", help="absolute container path")

    sub.add_parser(
        "doctor", parents=[common], help="check this host and say what to fix (exit 0 all pass)"
    )

    gc = sub.add_parser(
        "gc",
        parents=[common],
        help="list namespaces no container has used, and the trash; move them into the "
        "trash, restore, purge",
    )
    gc.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="unused this long (default 30); with --purge: in the trash this long (default 7)",
    )
    phase = gc.add_mutually_exclusive_group()
    phase.add_argument(
        "--delete", action="store_true", help="move them into the trash (default: list only)"
    )
    phase.add_argument("--restore", metavar="NAME", help="put a trash entry back")
    phase.add_argument(
        "--purge", action="store_true", help="remove what has been in the trash that long"
    )
    gc.add_argument(
        "--ignore-stale",
        nargs="+",
        action="extend",
        metavar="HOST",
        help="with --delete: go ahead although these hosts are stale",
    )
    return parser


class StatusArgs:
    """The arguments of `volagent status`, as argparse would give them."""

    def __init__(self) -> None:
        self.command = "status"
        self.config: str | None = None
        self.json = False
        self.rack = False
        self.socket: str | None = None
        self.verbose = False
        self.timeout = 5.0


_STATUS_FLAGS = {"--json": "json", "--rack": "rack", "-v": "verbose", "--verbose": "verbose"}
_STATUS_VALUES = {"--socket": "socket", "--config": "config", "--timeout": "timeout"}


def parse_status_fast(argv: list[str]) -> StatusArgs | None:
    """`[--config P] status [options]` without loading argparse; None for anything else
    (help, abbreviations, mistakes), which argparse then handles and explains."""
    args = StatusArgs()
    i, seen_command = 0, False
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if arg == "status" and not seen_command:
            seen_command = True
        elif seen_command and not eq and arg in _STATUS_FLAGS:
            setattr(args, _STATUS_FLAGS[arg], True)
        elif name in _STATUS_VALUES and (seen_command or name == "--config"):
            if eq:
                value = inline
            elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                i += 1
                value = argv[i]
            else:
                return None
            if name == "--timeout":
                try:
                    args.timeout = float(value)
                except ValueError:
                    return None
            else:
                setattr(args, _STATUS_VALUES[name], value)
        else:
            return None
        i += 1
    return args if seen_command else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        fast = parse_status_fast(argv)
        if fast is not None:
            return cmd_status(fast)
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        if command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if command == "status":
            return cmd_status(args)
        if command == "run":
            from volagent import daemon

            return daemon.main(args.config)
        if command == "check-config":
            return cmd_check_config(args)
        if command == "paths":
            return cmd_paths(args)
        return cmd_ops(args, command)
    except BrokenPipeError:
        # the reader went away (`volagent status | head`): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# --- status ------------------------------------------------------------------------------
def cmd_status(args: StatusArgs | argparse.Namespace) -> int:
    """Asks the daemon; it renders the answer and names the verdict in a header."""
    from volagent.api import client

    socket_path = status_socket(args.socket, args.config)
    # JSON for a program comes compact (the daemon's fast encoder); a person gets it indented
    query = (["pretty=1"] if _isatty(sys.stdout) else []) if args.json else ["format=text"]
    if args.rack:
        query.append("rack=1")
    if not args.json and use_color(sys.stdout):
        query.append("color=1")
    if not args.json and args.verbose:
        query.append("verbose=1")
    try:
        code, headers, body = client.request(
            socket_path, "GET", "/v1/status?" + "&".join(query), timeout=args.timeout
        )
    except client.Unreachable as exc:
        print(f"volagent: cannot reach the daemon: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    verdict = headers.get("x-volagent-status", "")
    if code != 200 or verdict not in EXIT_BY_STATUS:
        from volagent.terminal import printable

        detail = printable(body.decode("utf-8", "replace").strip()[:500])
        print(
            f"volagent: {socket_path} answered {code} without a status"
            + (f": {detail}" if detail else ""),
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return EXIT_BY_STATUS[verdict]


def use_color(stream: Any) -> bool:
    """Colour only on a terminal that can show it, and never with NO_COLOR set."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return _isatty(stream)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def status_socket(explicit: str | None, config_path: str | None) -> str:
    """--socket, else VOLAGENT_SOCKET, else [api] socket of the config, else the default."""
    if explicit:
        return explicit
    env = os.environ.get("VOLAGENT_SOCKET")
    if env:
        return env
    path = config_path or os.environ.get("VOLAGENT_CONFIG") or DEFAULT_CONFIG_PATH
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if path != DEFAULT_CONFIG_PATH:
            _note(f"config file {path} does not exist; trying {DEFAULT_SOCKET}")
        return DEFAULT_SOCKET
    except OSError as exc:
        _note(f"cannot read config file {path} ({exc.strerror}); trying {DEFAULT_SOCKET}")
        return DEFAULT_SOCKET
    if b"socket" not in raw:  # no key of the file can name a socket: skip the TOML parser
        return DEFAULT_SOCKET
    import tomllib

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        _note(f"config file {path} is invalid ({exc}); trying {DEFAULT_SOCKET}")
        return DEFAULT_SOCKET
    api = data.get("api")
    chosen = api.get("socket") if isinstance(api, dict) else None
    if isinstance(chosen, str) and chosen:
        return chosen
    return DEFAULT_SOCKET


def _note(text: str) -> None:
    print(f"volagent: {text}", file=sys.stderr)


# --- commands that need the full config ----------------------------------------------------
def _load_config(args: argparse.Namespace) -> Config | None:
    from volagent import config
    from volagent.errors import ConfigError

    try:
        return config.load(args.config)
    except ConfigError as exc:
        where = config.config_path(args.config)
        print(f"volagent: invalid config {where}: {exc}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    if cfg is None:
        return EXIT_USAGE
    from volagent import config

    sys.stdout.write(config.to_toml(cfg))
    return 0


def cmd_paths(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    if cfg is None:
        return EXIT_USAGE
    from volagent.errors import NamespaceViolation
    from volagent.volumes.namespace import host_path

    rack = args.rack or cfg.rack
    if not rack:
        print("volagent: no rack: pass --rack or set rack in the config", file=sys.stderr)
        return EXIT_USAGE
    out: list[str] = []
    for path in args.paths:
        try:
            out.append(host_path(cfg.mount_point, rack, args.app, args.service, path))
        except NamespaceViolation as exc:
            print(f"volagent: cannot map {path}: {exc.reason}", file=sys.stderr)
            return EXIT_USAGE
    print("\n".join(out))
    return 0


def cmd_ops(args: argparse.Namespace, command: str) -> int:
    """`doctor` and `gc`: their modules are loaded only when asked for, so `status` stays
    quick."""
    cfg = _load_config(args)
    if cfg is None:
        return EXIT_USAGE
    if command == "doctor":
        from volagent.ops.doctor import run as doctor

        return int(doctor.main(args, cfg))
    if command == "gc":
        from volagent.ops.gc import command as gc

        return int(gc.main(args, cfg))
    raise AssertionError(f"no such command: {command}")  # argparse knows the commands
