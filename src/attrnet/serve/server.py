"""Running the application with uvicorn: load the model once, check the address, serve until stopped."""

from __future__ import annotations

import ipaddress
import logging
import socket

from attrnet.errors import AttrnetError
from attrnet.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, settings: ServeSettings) -> str | None:
    """What to tell the user before binding `host`: None on loopback or with an API key."""
    if is_loopback(host) or settings.api_key:
        return None
    return (f"serving on {host}: every machine that can reach this address can use the API, and there is no "
            f"authentication; add --api-key KEY (or the ATTRNET_API_KEY environment variable) to require a key "
            f"on /v1/*, or bind 127.0.0.1")


def check_port_free(host: str, port: int) -> None:
    """An error the user can act on, before the model is loaded, when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise AttrnetError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                               f"or --host") from None


def serve(source: str, host: str = "127.0.0.1", port: int = 8000, runtime: str = "torch", device: str = "auto",
          settings: ServeSettings | None = None, log_level: str = "info", precision: str = "auto") -> None:
    """Load the model at `source` and serve it until interrupted (blocks)."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
    except ImportError:
        raise AttrnetError("attrnet serve needs FastAPI and uvicorn: pip install 'attrnet[serve]'") from None
    # after the check above: the app module imports FastAPI and prometheus_client as it loads
    from attrnet.inference import load_model
    from attrnet.serve.app import create_app

    settings = settings or ServeSettings()
    # a malformed body is the client's error, answered with a 4xx: not worth a warning in the server's log each time
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    check_port_free(host, port)
    model = load_model(source, device=device, runtime=runtime, precision=precision)
    app = create_app(model, settings)
    log.info("serving %d attributes of %s (%s runtime) on http://%s:%d/", len(model.attributes), source,
             model.runtime, host if ":" not in host else f"[{host}]", port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, server_header=False,
                timeout_graceful_shutdown=10)
