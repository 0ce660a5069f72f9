"""The ``sira`` command line.

    sira serve   [--config PATH] [--host H] [--port P] [--workers N]   run the gateway in the foreground
    sira check   [--config PATH]                                       validate config, start plugins, report
    sira plugins list [--config PATH]                                  installed plugins and what is enabled
    sira plugins info ID                                               one plugin's distribution, docs, config
    sira start   [--config PATH] [--host H] [--port P] [--workers N]   run the gateway in the background
    sira status  [--config PATH]                                       is the background gateway up?
    sira stop    [--config PATH]                                       stop it (SIGTERM, drains open streams)

Errors for a bad config or a busy port are one line on stderr and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import msgspec

from .config import KernelConfig, load_config
from .errors import ConfigError
from .server import CONFIG_ENV

__all__ = ["CLI_ENTRY_POINT_GROUP", "CLIError", "admin_client", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """A one-line error for the user."""


def _config_path(args: argparse.Namespace) -> str:
    if args.config:
        return str(args.config)
    return os.environ.get(CONFIG_ENV) or "kernel.toml"


def _load(args: argparse.Namespace) -> KernelConfig:
    path = _config_path(args)
    if not args.config and not Path(path).exists():
        raise CLIError(f"no config file: {path} (pass --config PATH or set ${CONFIG_ENV})")
    return load_config(path)


def _apply_overrides(config: KernelConfig, args: argparse.Namespace) -> None:
    if getattr(args, "host", None):
        config.server.host = args.host
    if getattr(args, "port", None) is not None:
        config.server.port = args.port
    if getattr(args, "workers", None) is not None:
        config.server.workers = args.workers
    if getattr(args, "admin_port", None) is not None:
        config.server.admin_port = args.admin_port
    if getattr(args, "no_admin", False):
        config.server.admin = False


def _bind(host: str, port: int, what: str = "port") -> socket.socket:
    """Bind a listening socket, or fail with one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted connections when the listening
    # socket says it is TCP (proto 0 leaves Nagle on and adds ~40 ms to kept-alive responses).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise CLIError(f"{what} {port} on {host} is already in use") from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise CLIError(f"cannot bind {host}:{port}: address not available on this machine") from None
        raise CLIError(f"cannot bind {host}:{port}: {err.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _check_port(host: str, port: int, what: str = "port") -> None:
    _bind(host, port, what).close()


# -- serve -------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = _load(args)
    _apply_overrides(config, args)
    server = config.server
    sockets = [_bind(server.host, server.port)]
    if server.admin:
        if server.admin_port == 0 or server.admin_port == server.port:
            raise CLIError("server.admin_port must be set and differ from server.port (or set server.admin = false)")
        sockets.append(_bind(server.admin_host, server.admin_port, "admin port"))
    os.environ[CONFIG_ENV] = os.path.abspath(_config_path(args))
    os.environ["SIRA_SERVER_HOST"] = server.host
    os.environ["SIRA_SERVER_PORT"] = str(server.port)
    os.environ["SIRA_ADMIN_PORT"] = str(server.admin_port)
    os.environ["SIRA_ADMIN"] = "1" if server.admin else "0"
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:  # pragma: no cover
        http = "h11"
    uv_config = uvicorn.Config(
        "sira_kernel.server:create_app",
        factory=True,
        host=server.host,
        port=server.port,
        workers=server.workers,
        loop=loop,
        http=http,
        lifespan="on",
        access_log=server.access_log,
        log_level="warning" if config.logging.level in ("warning", "error") else "info",
        timeout_graceful_shutdown=int(server.graceful_timeout),
        server_header=False,
    )
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        print(f"sira: serving {'admin API' if sock is not sockets[0] else 'API'} on http://{host}:{port}",
              file=sys.stderr)
    try:
        if server.workers > 1:
            Multiprocess(uv_config, sockets=sockets).run()
        else:
            uvicorn.Server(uv_config).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
    return EXIT_OK


# -- check and plugins -------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from .kernel import Kernel
    from .logs import configure_logging

    config = _load(args)
    configure_logging(config.logging.format, "error")
    report: dict[str, Any] = {}

    async def run() -> None:
        async with Kernel(config) as kernel:
            report["infos"] = kernel.plugins.infos()
            report["health"] = await kernel.health()

    anyio.run(run)
    enabled = set(config.enabled_plugins())
    failed = 0
    print(f"config: {config.source}: ok")
    for info in report["infos"]:
        if info.id not in enabled and info.state == "discovered":
            continue
        line = f"  {info.id:<24} {info.state:<10}"
        if info.distribution:
            line += f" {info.distribution} {info.version or ''}"
        if info.reason:
            line += f"  -- {info.reason}"
        if info.state == "failed":
            failed += 1
        print(line.rstrip())
    skipped = [p for p in config.kernel.plugins if p not in enabled]
    for plugin_id in skipped:
        env = config.plugins.get(plugin_id, {}).get("when_env")
        print(f"  {plugin_id:<24} {'skipped':<10} (${env} is not set)")
    print(f"health: {report['health'].status}")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_plugins_list(args: argparse.Namespace) -> int:
    from importlib_metadata import entry_points

    from .plugins import ENTRY_POINT_GROUP

    enabled: set[str] = set()
    configured: dict[str, str] = {}
    path = _config_path(args)
    if Path(path).exists():
        config = load_config(path)
        enabled = set(config.enabled_plugins())
        configured = {pid: config.entry_point_for(pid) for pid in config.kernel.plugins}
    print(f"{'ID':<24} {'ENABLED':<8} DISTRIBUTION")
    seen = set()
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in seen:
            continue
        seen.add(ep.name)
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?"
        print(f"{ep.name:<24} {'yes' if ep.name in enabled else 'no':<8} {dist}")
    for instance, entry in configured.items():
        if instance not in seen:
            mark = "yes" if instance in enabled else "no"
            note = f"(instance of {entry})" if entry != instance else "(not installed)"
            print(f"{instance:<24} {mark:<8} {note}")
    return EXIT_OK


def cmd_plugins_info(args: argparse.Namespace) -> int:
    import inspect

    from importlib_metadata import entry_points

    from .plugins import ENTRY_POINT_GROUP

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == args.id]
    if not found:
        raise CLIError(f"no installed plugin has the id {args.id!r} (see 'sira plugins list')")
    ep = found[0]
    print(f"id:           {ep.name}")
    if ep.dist:
        print(f"distribution: {ep.dist.name} {ep.dist.version}")
    print(f"entry point:  {ep.value}")
    try:
        cls = ep.load()
    except Exception as exc:
        print(f"import:       FAILED ({type(exc).__name__}: {exc})")
        return EXIT_FAILED
    print(f"kernel API:   {getattr(cls, 'sira_api', '?')}")
    for attr in ("requires", "provides"):
        values = [v if isinstance(v, str) else v.__name__ for v in getattr(cls, attr, ())]
        if values:
            print(f"{attr + ':':<14}{', '.join(values)}")
    doc = inspect.getdoc(cls)
    if doc:
        print("\n" + doc)
    schema = getattr(cls, "Config", None)
    if schema is not None:
        print(f"\n[plugins.{ep.name}]")
        for field in msgspec.structs.fields(schema):
            default = field.default if field.default is not msgspec.NODEFAULT else None
            if field.default_factory is not msgspec.NODEFAULT:
                default = field.default_factory()
            if field.required:
                default = "(required)"
            print(f"  {field.encode_name} = {default!r}")
    return EXIT_OK


# -- background server -------------------------------------------------------------------------------


def _data_dir(config: KernelConfig) -> Path:
    base = Path(config.source).parent if config.source and not config.source.startswith("<") else Path.cwd()
    path = Path(config.kernel.data_dir)
    return path if path.is_absolute() else base / path


def _pid_file(config: KernelConfig) -> Path:
    return _data_dir(config) / "sira.pid"


def _read_pid_file(pid_file: Path) -> tuple[int, str | None, int | None, int | None] | None:
    """(pid, host, port, admin port) from a pid file written by ``sira start``; None if unreadable."""
    try:
        fields = pid_file.read_text().split()
        pid = int(fields[0])
        host, port = (fields[1], int(fields[2])) if len(fields) >= 3 else (None, None)
        admin = int(fields[3]) if len(fields) >= 4 else None
    except (OSError, ValueError, IndexError):
        return None
    return pid, host, port, admin


def _read_pid(pid_file: Path) -> int | None:
    entry = _read_pid_file(pid_file)
    if entry is None:
        return None
    pid = entry[0]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _local_url(config: KernelConfig) -> str:
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


def cmd_start(args: argparse.Namespace) -> int:
    config = _load(args)
    _apply_overrides(config, args)
    pid_file = _pid_file(config)
    running = _read_pid(pid_file)
    if running:
        raise CLIError(f"sira is already running (pid {running}, {pid_file})")
    _check_port(config.server.host, config.server.port)
    if config.server.admin:
        _check_port(config.server.admin_host, config.server.admin_port, "admin port")
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log_path = pid_file.parent / "sira.log"
    command = [sys.executable, "-m", "sira_kernel", "serve", "--config", os.path.abspath(_config_path(args)),
               "--host", config.server.host, "--port", str(config.server.port),
               "--workers", str(config.server.workers), "--admin-port", str(config.server.admin_port)]
    if not config.server.admin:
        command.append("--no-admin")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    admin = config.server.admin_port if config.server.admin else 0
    pid_file.write_text(f"{process.pid} {config.server.host} {config.server.port} {admin}\n")
    url = _local_url(config)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pid_file.unlink(missing_ok=True)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise CLIError("sira exited during start: " + (" | ".join(tail) or f"exit code {process.returncode}"))
        try:
            status, _ = _get(f"{url}/health/live", 0.5)
            if status == 200:
                print(f"sira started (pid {process.pid}) on {url}; log: {log_path}")
                return EXIT_OK
        except OSError:
            pass
        time.sleep(0.1)
    raise CLIError(f"sira did not answer on {url} within 30s; see {log_path}")


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    pid_file = _pid_file(config)
    pid = _read_pid(pid_file)
    if pid is None:
        print("sira is not running")
        return EXIT_FAILED
    entry = _read_pid_file(pid_file)
    if entry is not None and entry[1] is not None and entry[2] is not None:
        config.server.host, config.server.port = entry[1], entry[2]  # where `sira start` put it
    url = _local_url(config)
    try:
        status, body = _get(f"{url}/health/ready")
        report = msgspec.json.decode(body)
        print(f"sira is running (pid {pid}) on {url}: {report.get('status', status)}")
        for plugin in report.get("plugins", []):
            if plugin["state"] != "discovered":
                reason = f"  -- {plugin['reason']}" if plugin.get("reason") else ""
                print(f"  {plugin['id']:<24} {plugin['state']}{reason}")
    except (OSError, msgspec.DecodeError):
        print(f"sira process {pid} is running but does not answer on {url}")
        return EXIT_FAILED
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    config = _load(args)
    pid_file = _pid_file(config)
    pid = _read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        print("sira is not running")
        return EXIT_OK
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + config.server.graceful_timeout + 10
    while time.monotonic() < deadline:
        if _read_pid(pid_file) is None:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        print(f"sira (pid {pid}) did not stop in time; killed")
    pid_file.unlink(missing_ok=True)
    print(f"sira stopped (pid {pid})")
    return EXIT_OK


# -- argument parsing --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sira", description="Sira, the AI gateway.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", help=f"kernel.toml to use (default: ${CONFIG_ENV} or ./kernel.toml)")
        return p

    def with_server(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", help="address to listen on (overrides server.host)")
        p.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
        p.add_argument("--workers", type=int, help="worker processes (overrides server.workers)")
        p.add_argument("--admin-port", type=int, help="admin listener port (overrides server.admin_port)")
        p.add_argument("--no-admin", action="store_true", help="do not serve the admin listener")

    serve = with_config(sub.add_parser("serve", help="run the gateway in the foreground"))
    with_server(serve)
    serve.set_defaults(func=cmd_serve)
    with_config(sub.add_parser("check", help="validate the config and start every plugin once")).set_defaults(
        func=cmd_check
    )
    plugins = sub.add_parser("plugins", help="installed plugins")
    plugins_sub = plugins.add_subparsers(dest="plugins_command", required=True)
    with_config(plugins_sub.add_parser("list", help="list installed plugins")).set_defaults(func=cmd_plugins_list)
    info = plugins_sub.add_parser("info", help="show one plugin")
    info.add_argument("id")
    info.set_defaults(func=cmd_plugins_info)
    start = with_config(sub.add_parser("start", help="run the gateway in the background"))
    with_server(start)
    start.set_defaults(func=cmd_start)
    with_config(sub.add_parser("status", help="is the background gateway running?")).set_defaults(func=cmd_status)
    with_config(sub.add_parser("stop", help="stop the background gateway")).set_defaults(func=cmd_stop)
    _plugin_commands(sub, with_config)
    return parser


CLI_ENTRY_POINT_GROUP = "sira_kernel.cli"
"""Entry-point group through which plugin distributions add ``sira`` subcommands.

The value is a function ``add_commands(subparsers, with_config) -> None`` that adds parsers to the
``sira`` command's subparsers; each parser sets ``func=`` to a function of the parsed arguments
returning an exit code. ``with_config(parser)`` adds the standard ``--config`` option, and
:func:`admin_client` gives such a command an HTTP client for the running gateway's admin API.
A command that fails to load is skipped with a one-line warning; the kernel's own commands win.
"""


def _plugin_commands(sub: Any, with_config: Any) -> None:
    from importlib_metadata import entry_points

    taken = set(sub.choices)
    for ep in entry_points(group=CLI_ENTRY_POINT_GROUP):
        if ep.name in taken:
            continue
        try:
            ep.load()(sub, with_config)
        except Exception as exc:  # a broken plugin command must not break `sira`
            print(f"sira: warning: command {ep.name!r} from {ep.value} failed to load: {exc}", file=sys.stderr)


def admin_client(args: argparse.Namespace, timeout: float = 30.0) -> Any:
    """An ``httpx.Client`` for the admin API of the gateway that ``--config`` describes.

    The key comes from ``$SIRA_ADMIN_KEY``, else ``server.master_key``; the address from the config
    (or the pid file written by ``sira start``).
    """
    import httpx

    config = _load(args)
    entry = _read_pid_file(_pid_file(config))
    host = config.server.admin_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = config.server.admin_port
    if entry is not None and entry[3] and _read_pid(_pid_file(config)) is not None:
        port = entry[3]  # where `sira start` put the admin listener
    key = os.environ.get("SIRA_ADMIN_KEY") or (config.server.master_key.reveal() if config.server.master_key else "")
    if not key:
        raise CLIError("no admin key: set $SIRA_ADMIN_KEY or server.master_key")
    if ":" in host:
        host = f"[{host}]"
    return httpx.Client(base_url=f"http://{host}:{port}", headers={"authorization": f"Bearer {key}"}, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CLIError, ConfigError) as exc:
        message = exc.message if isinstance(exc, ConfigError) else str(exc)
        print(f"sira: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
