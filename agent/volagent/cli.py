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
    from typing import Any, NoReturn

    from volagent.config import Config

# Must equal the defaults in volagent.config (a test checks); repeated here because
# importing that module would double the start-up time of `volagent status`.
DEFAULT_CONFIG_PATH = "/etc/volagent/volagent.toml"
DEFAULT_SOCKET = "/run/volagent/volagent.sock"

EXIT_BY_STATUS = {"ok": 0, "degraded": 1, "critical": 2}
EXIT_UNREACHABLE = 3
EXIT_INVALID = 2  # an invalid config or name (check-config, paths, doctor, gc)
# A command line volagent cannot parse: EX_USAGE of sysexits.h, not argparse's 2, which
# `volagent status` gives for "critical".
EXIT_USAGE = 64
STATUS_TIMEOUT_MAX_S = 3600.0

# Each command's help: what it does and examples (also the man page's, scripts/cli-docs).
DESCRIPTIONS = {
    "run": (
        "Runs the daemon in the foreground: keeps the shared filesystem mounted, prepares "
        "container volume directories, serves the status socket and, with [guard] enabled, "
        "Docker's authorization plugin. Logs JSON lines on stdout (under systemd each with its "
        "syslog priority). Exit 0 on SIGTERM or SIGINT, 2 on an invalid config.",
        [
            "systemctl start volagent               how a host runs it",
            "volagent --config examples/local.toml run",
        ],
    ),
    "status": (
        "Asks the running daemon how things are: the verdict, what to fix, the mount, Docker, "
        "the guard and the containers' volumes. Exit 0 ok, 1 degraded, 2 critical, 3 daemon "
        "unreachable.",
        [
            "volagent status",
            "volagent status -v                     every volume, not only problems",
            "volagent status --json | jq .mount",
            "volagent status --rack                 every host sharing the filesystem",
        ],
    ),
    "check-config": (
        "Validates the config file and prints the effective config (every key, defaults "
        "included) as TOML. Exit 0 when valid, 2 when not, naming the key.",
        ["volagent check-config", "volagent check-config --config my-rack.toml"],
    ),
    "paths": (
        "Prints the host path of each container path of a service: where its data lives on "
        "the shared filesystem. Exit 2 on invalid names or paths.",
        [
            "volagent paths --app shop --service web /var/www/html",
            "volagent paths --rack prod --app shop --service db /data /backup",
        ],
    ),
    "doctor": (
        "Checks this host for what volagent needs, in the order a boot needs it (NFS client, "
        "amazon-efs-utils, instance metadata, AWS permissions, DNS, TCP 2049, Docker, the "
        "guard in daemon.json) and says what to fix. Exit 0 when nothing failed, 1 otherwise.",
        [
            "volagent doctor",
            "volagent doctor --json | jq '.checks[] | select(.status == \"fail\")'",
        ],
    ),
    "gc": (
        "Lists the namespaces no container has used for a while, with their sizes, and the "
        "trash; deletes in two phases: --delete moves them into the trash, --purge removes "
        "what has been there long enough, --restore puts one back.",
        [
            "volagent gc",
            "volagent gc --delete --older-than 60",
            "volagent gc --restore myrack-web@20261129T193012Z",
            "volagent gc --purge --older-than 7",
        ],
    ),
}


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class Parser(argparse.ArgumentParser):
        """argparse, with EX_USAGE for a command line it cannot parse; `commands` holds each
        command's parser (see usage_error)."""

        commands: dict[str, argparse.ArgumentParser]

        def error(self, message: str) -> Any:
            self.print_usage(sys.stderr)
            self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        text, examples = DESCRIPTIONS[name]
        made = parser.commands[name] = sub.add_parser(
            name,
            parents=[common],
            description=text,
            epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )
        return made

    parser = Parser(
        prog="volagent",
        description="Keeps the rack's shared filesystem mounted and container volume "
        "directories ready before containers start.",
        epilog=f"exit {EXIT_USAGE} (EX_USAGE) for a command line volagent cannot parse; "
        "`volagent COMMAND --help` for each command's",
    )
    parser.commands = {}
    parser.add_argument("--version", action="version", version=f"volagent {__version__}")
    parser.add_argument(
        "--config", metavar="PATH", help=f"config file (env VOLAGENT_CONFIG; {DEFAULT_CONFIG_PATH})"
    )
    # --config is also accepted after the subcommand; SUPPRESS keeps a global one
    common = Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    command("run", help="run the daemon in the foreground")

    status = command(
        "status",
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

    def seconds(text: str) -> float:
        try:
            return status_timeout(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    status.add_argument(
        "--timeout", type=seconds, default=5.0, metavar="SECONDS", help="give up after (5)"
    )

    command("check-config", help="validate and print the effective config")

    paths = command("paths", help="print the host path of each container path")
    paths.add_argument("--app", required=True, help="the app (label convox.app)")
    paths.add_argument("--service", required=True, help="the service (label convox.service)")
    paths.add_argument("--rack", help="default: rack in the config")
    paths.add_argument("paths", nargs="+", metavar="PATH", help="absolute container path")

    doctor = command("doctor", help="check this host and say what to fix (exit 0 all pass)")
    doctor.add_argument("--json", action="store_true", help="print the checks as a JSON document")

    gc = command(
        "gc",
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


def usage_error(parser: argparse.ArgumentParser, command: str, problem: str) -> NoReturn:
    """A command line the parser took but the command cannot use (arguments that go only
    together): the command's usage and the problem on stderr, exit EX_USAGE, as for any
    command line volagent cannot parse."""
    commands: dict[str, argparse.ArgumentParser] = getattr(parser, "commands", {})
    commands.get(command, parser).error(problem)


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


def status_timeout(text: str) -> float:
    """`volagent status --timeout`: seconds, more than 0 and at most STATUS_TIMEOUT_MAX_S;
    ValueError saying why for anything else (a negative, NaN or infinite timeout made the
    socket call fail with a traceback, exit 1: "degraded" to a monitor)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= STATUS_TIMEOUT_MAX_S:  # NaN fails this too
        raise ValueError(f"{text}: must be more than 0 and at most {STATUS_TIMEOUT_MAX_S:g} s")
    return value


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
                    args.timeout = status_timeout(value)
                except ValueError:
                    return None  # argparse refuses it, with the usage (EX_USAGE)
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
            from volagent.daemon import lifecycle

            return lifecycle.main(args.config)
        if command == "check-config":
            return cmd_check_config(args)
        if command == "paths":
            return cmd_paths(args)
        if command == "gc":
            from volagent.ops.gc import command as gc

            problem = gc.usage_problem(args)
            if problem is not None:
                usage_error(parser, command, problem)
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
    return chosen if isinstance(chosen, str) and chosen else DEFAULT_SOCKET


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
        return EXIT_INVALID
    from volagent import config

    sys.stdout.write(config.to_toml(cfg))
    return 0


def cmd_paths(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    if cfg is None:
        return EXIT_INVALID
    from volagent.errors import NamespaceViolation
    from volagent.volumes.namespace import host_path

    rack = args.rack or cfg.rack
    if not rack:
        print("volagent: no rack: pass --rack or set rack in the config", file=sys.stderr)
        return EXIT_INVALID
    out: list[str] = []
    for path in args.paths:
        try:
            out.append(host_path(cfg.mount_point, rack, args.app, args.service, path))
        except NamespaceViolation as exc:
            print(f"volagent: cannot map {path}: {exc.reason}", file=sys.stderr)
            return EXIT_INVALID
    print("\n".join(out))
    return 0


def cmd_ops(args: argparse.Namespace, command: str) -> int:
    """`doctor` and `gc`: their modules are loaded only when asked for, so `status` stays
    quick."""
    cfg = _load_config(args)
    if cfg is None:
        return EXIT_INVALID
    if command == "doctor":
        from volagent.ops.doctor import run as doctor

        return int(doctor.main(args, cfg))
    if command == "gc":
        from volagent.ops.gc import command as gc

        return int(gc.main(args, cfg))
    raise AssertionError(f"no such command: {command}")  # argparse knows the commands
