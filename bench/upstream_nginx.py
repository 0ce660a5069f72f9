"""nginx as the canned non-stream upstream: one worker, a generated config in a temp dir.

nginx cannot pick its answer by looking into the request body, so it only serves the non-stream
``chat.completion`` (``return 200``, which nginx also allows for POST); streams come from
``upstream_stream.py``. :func:`find_nginx` installs Debian's ``nginx-light`` when nginx is
missing and apt is usable, and returns ``None`` when that does not work (the caller then falls
back to the Python upstream).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from canned import CHAT_COMPLETION

__all__ = ["apt_install", "find_nginx", "nginx_argv", "write_config"]

_CONFIG = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location ~ /v1/chat/completions$ {{
            default_type application/json;
            return 200 '{body}';
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def apt_install(*packages: str) -> bool:
    """``apt-get install -y packages`` when apt is there and we are root; True on success."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def run(*argv: str) -> bool:
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        return done.returncode == 0

    if run("apt-get", "install", "-y", "-q", *packages):
        return True
    # The package lists may be missing or stale (fresh container): refresh once and retry.
    run("apt-get", "update", "-q")
    return run("apt-get", "install", "-y", "-q", *packages)


def find_nginx(install: bool = True) -> str | None:
    """The nginx binary, installing ``nginx-light`` (then ``nginx``) if allowed and needed."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if install and (apt_install("nginx-light") or apt_install("nginx")):
        return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    return None


def write_config(tmp: Path, port: int) -> Path:
    """Write the nginx config for 127.0.0.1:port under ``tmp`` and return its path."""
    body = CHAT_COMPLETION.decode()
    if any(c in body for c in "$'\\"):
        raise ValueError("the canned body must not contain $, ' or \\ (nginx would interpret them)")
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(_CONFIG.format(tmp=tmp, port=port, body=body))
    return conf


def nginx_argv(nginx: str, tmp: Path, conf: Path) -> list[str]:
    """The command running nginx in the foreground with its prefix, config and logs in ``tmp``."""
    return [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
