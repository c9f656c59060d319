"""Start `qlora4080 serve`: check the address, load the checkpoint, start the decoding thread, run uvicorn."""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from pathlib import Path

from ..console import console, warn
from ..errors import QloraError

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Fail in a second, before a model loads for a minute, when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise QloraError(f"port {port} on {host} is already in use", where="--port",
                                 hint="stop the program using it, or pass another --port") from None
            raise QloraError(f"cannot listen on {host}:{port}: {error.strerror or error}", where="--host",
                             hint="use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None


def default_model_id(checkpoint: str) -> str:
    """The name clients pass as `model`: the checkpoint's folder name (`demo` for checkpoints/demo)."""
    return Path(checkpoint.rstrip("/")).name or checkpoint


def serve(checkpoint: str, *, host: str, port: int, api_key: str | None, model_id: str | None, batch_size: int,
          threads: int | None) -> None:
    import uvicorn

    from ..infer import load_for_chat
    from .app import Served, build_app
    from .engine import Engine

    if not is_loopback(host) and not api_key:
        warn(f"listening on {host} WITHOUT an API key: anyone who can reach this machine's port {port} can use the "
             "model. Pass --api-key KEY (clients send 'Authorization: Bearer KEY'), or bind 127.0.0.1.")
    check_port_free(host, port)
    with console.status(f"loading {checkpoint}"):
        chat = load_for_chat(checkpoint)
    engine = Engine(chat, batch_size=batch_size, threads=threads)
    name = model_id or default_model_id(checkpoint)
    app = build_app(Served(chat, engine, name, api_key, created=int(time.time())))
    engine.start()
    shown_host = f"[{host}]" if ":" in host else host
    console.print(f"[bold]serving[/] {chat.description} as model [bold]{name}[/] "
                  f"(context {chat.context or 'unknown'} tokens, "
                  f"{'one answer at a time' if batch_size == 1 else f'up to {batch_size} answers decoded together'})")
    console.print(f"OpenAI base_url: http://{shown_host}:{port}/v1{'  (API key required)' if api_key else ''}; "
                  "Ctrl-C stops", highlight=False)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    finally:
        engine.stop()
