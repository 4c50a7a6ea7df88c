"""`attrnet serve MODEL --ray`: the same FastAPI app (routes, page, errors) as a Ray Serve deployment, for more
than one process or machine (pip install 'attrnet[ray]').

Each replica builds the app once (serve.ingress with a builder: the model is loaded on the replica, once), and
batches the images of the requests it receives with serve.batch (max_batch, max_wait_ms) instead of attrnet's
own asyncio batcher. Replicas: a fixed number, or autoscaling bounds (Ray Serve starts and stops them by the
requests waiting per replica). On a cluster, `serve run attrnet.serve.ray_serve:app_builder model=...` and
`serve deploy` with a config file do the same (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from attrnet.errors import AttrnetError
from attrnet.inference import load_model
from attrnet.serve.app import create_app  # FastAPI: Ray Serve's own dependency
from attrnet.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def require_ray():
    try:
        import ray  # optional: the ray extra
        from ray import serve
    except ImportError:
        raise AttrnetError("serving on Ray needs Ray Serve: pip install 'attrnet[ray]'") from None
    return ray, serve


class ServeBatcher:
    """attrnet.serve.batching.Batcher's interface over Ray Serve's @serve.batch: the images of concurrent
    requests reaching this replica go through the network together (up to max_batch, waiting at most
    max_wait_ms), in one inference thread, off the event loop."""

    def __init__(self, infer: Callable[[torch.Tensor], np.ndarray], max_batch: int = 32, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int, float], None] | None = None):
        _, serve = require_ray()
        self.infer, self.on_batch = infer, on_batch
        self._executor: ThreadPoolExecutor | None = None

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=max_wait_ms / 1000.0)
        async def batched(images: list[torch.Tensor]) -> list[np.ndarray]:
            start = time.perf_counter()
            probs = await asyncio.get_running_loop().run_in_executor(self._executor, self.infer, torch.stack(images))
            if self.on_batch is not None:
                self.on_batch(len(images), time.perf_counter() - start)
            return list(probs)
        self._batched = batched

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attrnet-inference")

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._executor = None

    @property
    def running(self) -> bool:
        return self._executor is not None

    async def submit(self, images: list[torch.Tensor]) -> np.ndarray:
        if not self.running:
            raise RuntimeError("the batcher is not running (start() it in the application's lifespan)")
        return np.stack(await asyncio.gather(*(self._batched(img) for img in images)))


@dataclass
class Replicas:
    """A fixed number of replicas, or autoscaling between min and max (target: requests waiting per replica)."""

    count: int = 1
    min: int | None = None
    max: int | None = None
    target_ongoing_requests: float = 4.0
    cpus: float = 1.0  # CPUs Ray reserves for each replica

    def options(self) -> dict[str, Any]:
        actor = {"ray_actor_options": {"num_cpus": self.cpus}}
        if self.min is None and self.max is None:
            return {"num_replicas": self.count, **actor}
        lo, hi = self.min if self.min is not None else 1, self.max if self.max is not None else max(1, self.min or 1)
        if lo > hi:
            raise AttrnetError(f"--min-replicas {lo} is above --max-replicas {hi}")
        return {"autoscaling_config": {"min_replicas": lo, "max_replicas": hi,
                                       "target_ongoing_requests": self.target_ongoing_requests}, **actor}


def deployment(source: str, settings: ServeSettings | None = None, replicas: Replicas | None = None,
               runtime: str = "torch", device: str = "cpu", precision: str = "auto"):
    """The bound Ray Serve application: one deployment whose replicas each load `source` and serve the app."""
    _, serve = require_ray()
    settings, replicas = settings or ServeSettings(), replicas or Replicas()

    def build_app():  # runs on each replica: the model is loaded there, once
        model = load_model(source, device=device, runtime=runtime, precision=precision)
        return create_app(model, settings, make_batcher=ServeBatcher)

    # a replica takes enough requests at once to fill a batch (Ray's default of 5 would cap it)
    @serve.deployment(name="attrnet", max_ongoing_requests=max(32, 2 * settings.max_batch), **replicas.options())
    @serve.ingress(build_app)
    class Attrnet:
        pass

    return Attrnet.bind()


def app_builder(args: dict[str, str]):
    """For `serve run attrnet.serve.ray_serve:app_builder model=RUN [replicas=2] [max_batch=32] ...` and `serve
    deploy` config files (import_path + args)."""
    settings = ServeSettings(max_batch=int(args.get("max_batch", 32)), max_wait_ms=float(args.get("max_wait_ms", 5)),
                             api_key=args.get("api_key"))
    replicas = Replicas(count=int(args.get("replicas", 1)), cpus=float(args.get("cpus_per_replica", 1)))
    return deployment(args["model"], settings, replicas, args.get("runtime", "torch"), args.get("device", "cpu"),
                      args.get("precision", "auto"))


def run(source: str, host: str, port: int, settings: ServeSettings, replicas: Replicas, address: str | None = None,
        runtime: str = "torch", device: str = "cpu", precision: str = "auto", blocking: bool = True) -> str:
    """Start (or join, with address) a Ray cluster, deploy, and serve on host:port until interrupted; returns the URL
    (at once when not blocking)."""
    ray, serve = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(source, settings, replicas, runtime, device, precision), name="attrnet", route_prefix="/",
              blocking=False)
    url = f"http://{host}:{port}"
    log.info("serving %s on Ray Serve at %s/ (%s)", source, url, replicas.options())
    if blocking:
        try:
            while True:
                time.sleep(3600)
        finally:
            serve.shutdown()
    return url
