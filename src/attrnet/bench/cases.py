"""The bench's cases (`Bench`: one method per case; see attrnet.bench for what each measures)."""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import torch
import torch.nn as nn

from attrnet.bench.folder import PilFolder, pil_transform
from attrnet.bench.measure import MB, PeakMemory, clock, sync
from attrnet.bench.precision_modes import mode_name, precision_modes
from attrnet.bench.runtimes import predict_runtimes
from attrnet.config import Config, DataConfig, config_from_dict
from attrnet.data.cache import decode_all
from attrnet.data.formats import assign_partition, read_table, split_indices
from attrnet.engine import distributed as ddp
from attrnet.engine.optim import build_optimizer
from attrnet.engine.setup import first_epoch_order, loader_images, make_loader, prepare_data
from attrnet.engine.train import make_training, train_one_epoch
from attrnet.errors import AttrnetError
from attrnet.inference.model import AttributeModel
from attrnet.inference.sources import ModelInfo
from attrnet.losses import masked_bce
from attrnet.models.build import build_model
from attrnet.precision import Precision
from attrnet.predict import iter_files
from attrnet.preprocessing import Preprocessing

log = logging.getLogger(__name__)


class _ForcedDist:
    """DistInfo for a world of one that still takes the distributed code path (loss all-reduce per step)."""

    rank, world_size, local_rank, enabled, is_main = 0, 1, 0, True, True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, args, device: torch.device, root: Path, workdir: Path):
        gpu = device.type == "cuda"
        self.device, self.root, self.workdir = device, root, workdir
        self.image_size = args.image_size or (128 if gpu else 64)
        self.batch_size = args.batch_size or (512 if gpu else 32)
        self.backbone = args.backbone
        self.seed_steps = 200 if gpu else 20
        self.warm_epochs = 3 if gpu else 2
        self.repeats = getattr(args, "repeats", 0) or (5 if gpu else 3)  # precision_modes
        self.explicit = set(args.cases.split(",")) if args.cases != "all" else set()
        table = read_table(DataConfig(root=str(root), format="celeba"))
        self.names = table.names[: args.attributes]
        self.table = table.select(self.names)  # the loops that read JPEGs need no decoded cache
        self.train_idx = split_indices(assign_partition(self.table, 0.0, 0.0, 0), "train")
        self.cache_dir = workdir / "cache"
        self.data = None            # PreparedData, once the cache is built
        self.trained_state = None   # the attrnet_warm model's weights, for predict_folder
        self.base = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if gpu else None,
                     "torch": torch.__version__, "backbone": self.backbone, "attributes": len(self.names),
                     "image_size": self.image_size, "batch_size": self.batch_size, "cpu_cores": os.cpu_count(),
                     # compute threads: torch's intra-op pool (OMP_NUM_THREADS sets it; default one per core)
                     "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}

    # -- helpers
    def config(self, **train) -> Config:
        raw = {"data": {"root": str(self.root), "format": "celeba", "attributes": list(self.names),
                        "image_size": self.image_size, "cache_dir": str(self.cache_dir), "val_fraction": 0.0,
                        "test_fraction": 0.0, "cache_on_device": "auto"},
               "model": {"backbone": self.backbone, "pretrained": False},
               "train": {"epochs": 1 + self.warm_epochs, "batch_size": self.batch_size, "device": str(self.device),
                         **train}}
        return config_from_dict(raw, "bench")

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return build_model(self.config().model, len(self.names), 3).to(self.device)

    def prepared(self):
        if self.data is None:
            self.data = prepare_data(self.config(), progress=False, device=self.device)
        return self.data

    def row(self, case: str, **extra) -> dict:
        return {"case": case, **self.base, "load_avg_1m": round(os.getloadavg()[0], 2), **extra}

    def measure(self, case: str, fn: Callable[[], dict]) -> dict:
        """Run one case; add peak GPU memory (allocator) and peak process RSS, both for this case alone."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        with PeakMemory() as mem:
            out = fn()
            sync(self.device)
        row = self.row(case, **out)
        row["peak_gpu_mem_mb"] = (round(torch.cuda.max_memory_allocated(self.device) / MB, 1)
                                  if self.device.type == "cuda" else None)
        row["peak_rss_mb"] = round(mem.rss / MB, 1)
        return row

    def skip_reason(self, case: str) -> str | None:
        if case == "attrnet_warm_compile" and self.device.type != "cuda" and case not in self.explicit:
            return "torch.compile on CPU spends minutes compiling; name the case in --cases to run it"
        if case == "seed_loop" and self.image_size <= 32:
            # one image a step in train mode: BatchNorm after the last stage sees a single 1x1 value per channel
            return "the seed's one-image steps need --image-size above 32 (BatchNorm on a 1x1 map of one image)"
        if case == "attrnet_warm_ddp1":
            if self.device.type != "cuda":
                return "needs CUDA (an NCCL process group)"
            if not (torch.distributed.is_available() and torch.distributed.is_nccl_available()):
                return "this torch has no NCCL"
        return None

    # -- cases
    def seed_loop(self) -> dict:
        table, dev = self.table, self.device
        warmup = 5 if dev.type == "cuda" else 2
        idx = self.train_idx[: self.seed_steps + warmup]
        tf = pil_transform(self.image_size, flip=False)
        ds = PilFolder([table.image_dir / table.files[i] for i in idx], np.nan_to_num(table.labels[idx]), tf)
        items = [ds[i] for i in range(len(ds))]   # pre-decoded float tensors on the host, as the seed did
        xs, ys = torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
        model = self.model().train()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        loss_fn = nn.BCEWithLogitsLoss()

        def step(i: int) -> float:
            x, y = xs[i % len(xs)], ys[i % len(ys)].to(dev)
            opt.zero_grad()
            outputs = model(x.unsqueeze(0).to(dev))[0]
            loss = sum(loss_fn(o.unsqueeze(0), t.unsqueeze(0).float()) for o, t in zip(outputs, y))
            loss.backward()
            opt.step()
            return loss.item()  # the seed's epoch_loss += loss.item(): a host sync every image

        for i in range(warmup):
            step(i)
        t0 = clock(dev)
        for i in range(self.seed_steps):
            step(warmup + i)
        seconds = clock(dev) - t0
        return {"precision": "fp32", "batch_size": 1, "steps": self.seed_steps, "n_images": self.seed_steps,
                "seconds": round(seconds, 3), "train_images_per_s": round(self.seed_steps / seconds, 2)}

    def dataloader_eager(self) -> dict:
        table, dev, cuda = self.table, self.device, self.device.type == "cuda"
        idx = self.train_idx
        workers = os.cpu_count() or 1
        ds = PilFolder([table.image_dir / table.files[i] for i in idx], table.labels[idx],
                        pil_transform(self.image_size, flip=True))
        loader = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=True, num_workers=workers,
                                             pin_memory=cuda, drop_last=len(ds) >= self.batch_size)
        precision = Precision.from_config(self.config(), dev)  # train.precision=auto, as attrnet
        model = self.model()
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(model, self.config(), dev)

        def step(x, y):
            x = x.to(dev, non_blocking=True)
            if precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast():
                logits = model(x)
            loss = masked_bce(logits, y.to(dev, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        model.train()
        step(*next(iter(torch.utils.data.DataLoader(ds, batch_size=self.batch_size))))  # untimed: kernel set-up
        t0, steps, images = clock(dev), 0, 0
        for x, y in loader:  # worker start-up included, as in every epoch of such a loop
            step(x, y)
            steps, images = steps + 1, images + len(x)
        seconds = clock(dev) - t0
        return {"precision": mode_name(precision), "num_workers": workers,
                "steps": steps, "n_images": images, "seconds": round(seconds, 3),
                "train_images_per_s": round(images / seconds, 1)}

    def _trainer(self, cfg: Config, dist=None) -> dict:
        """attrnet's training set-up, made as fit() makes it (setup.make_loader, train.make_training)."""
        data, dev = self.prepared(), self.device
        images = loader_images(data, dev, cfg.data.cache_on_device)
        loader = make_loader(images, data, data.indices("train"), cfg.train.batch_size, dev, True, cfg.train.seed)
        t = make_training(cfg, len(self.names), dev, dist or ddp.DistInfo(), len(loader))
        return {"model": t.model, "train_model": t.step_model, "loader": loader, "opt": t.optimizer,
                "sched": t.scheduler, "precision": t.precision, "on_device": isinstance(images, torch.Tensor)}

    def _epochs(self, cfg: Config, t: dict, epochs: range, dist=None) -> float:
        t0 = clock(self.device)
        for epoch in epochs:
            train_one_epoch(t["train_model"], t["loader"], t["opt"], t["sched"], cfg, t["precision"], epoch,
                            dist=dist or ddp.DistInfo(), progress=False)
        return clock(self.device) - t0

    @staticmethod
    def _precision_name(t: dict) -> str:
        return mode_name(t["precision"])

    def attrnet_cold(self) -> dict:
        """As fit() starts on a new data set: the first epoch trains while the cache is decoded, each batch as
        soon as its rows are (decoded in that epoch's order); then the rest is decoded and the cache published."""
        cfg = self.config()
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.data = None
        t0 = clock(self.device)
        self.data = prepare_data(cfg, progress=False, first_batches=first_epoch_order(cfg), device=self.device)
        decoder = type(self.data.decoded).__name__  # DeviceCacheBuild: on the GPU (data.decode=auto)
        t_setup = clock(self.device) - t0
        t = self._trainer(cfg)
        self._epochs(cfg, t, range(1))
        t_epoch = clock(self.device) - t0
        self.data.finish_decoding()
        seconds = clock(self.device) - t0
        images = len(t["loader"]) * cfg.train.batch_size
        return {"precision": self._precision_name(t), "overlapped": True, "n_images": images, "decoder": decoder,
                "setup_seconds": round(t_setup, 3), "first_epoch_seconds": round(t_epoch - t_setup, 3),
                "finish_decode_seconds": round(seconds - t_epoch, 3),
                "seconds": round(seconds, 3), "train_images_per_s": round(images / seconds, 1)}

    def _warm(self, dist=None, **train) -> dict:
        cfg = self.config(**train)
        t = self._trainer(cfg, dist)
        warmup_s = self._epochs(cfg, t, range(1), dist)   # compiles, autotunes, fills the page cache
        seconds = self._epochs(cfg, t, range(1, 1 + self.warm_epochs), dist)
        images = len(t["loader"]) * cfg.train.batch_size * self.warm_epochs
        if dist is None and not train:
            self.trained_state = {k: v.detach().cpu().clone() for k, v in t["model"].state_dict().items()}
        return {"precision": self._precision_name(t), "cache_on_device": t["on_device"],
                "compile": bool(cfg.train.compile), "epochs": self.warm_epochs, "n_images": images,
                "warmup_epoch_seconds": round(warmup_s, 3), "seconds": round(seconds, 3),
                "train_images_per_s": round(images / seconds, 1)}

    def attrnet_warm(self) -> dict:
        self.prepared()
        return self._warm()

    def attrnet_warm_compile(self) -> dict:
        self.prepared()
        return self._warm(compile=True)

    def attrnet_warm_ddp1(self) -> dict:
        import torch.distributed as dist

        self.prepared()
        if dist.is_initialized():
            raise AttrnetError("a process group is already initialised; run the bench outside torchrun")
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
               "LOCAL_RANK": "0"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl")
            return {**self._warm(dist=_ForcedDist()), "world_size": 1, "backend": "nccl"}
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def predict_folder(self) -> dict:
        """attrnet predict's path: inference.AttributeModel (its precision rule) fed by predict.iter_files."""
        table, dev = self.table, self.device
        net = self.model()
        if self.trained_state is not None:
            net.load_state_dict(self.trained_state)
        cfg = self.config()
        info = ModelInfo(kind="attribute_net", attributes=list(self.names), thresholds=np.full(len(self.names), 0.5),
                         preprocessing=Preprocessing(image_size=cfg.image_hw()), config=cfg.to_dict())
        model = AttributeModel(net, info, dev, Precision.from_config(cfg, dev))
        paths = [table.image_dir / table.files[i] for i in self.train_idx]
        for _ in iter_files(model, paths[: self.batch_size], self.batch_size):
            pass  # untimed: nvjpeg and kernel set-up
        t0, n, bad = clock(dev), 0, 0
        for done, probs, unreadable in iter_files(model, paths, self.batch_size):
            n, bad = n + len(done), bad + len(unreadable)
        seconds = clock(dev) - t0
        return {"precision": mode_name(model.precision),
                "decode": "nvjpeg (GPU)" if dev.type == "cuda" else "DataLoader workers (CPU)",
                "trained_weights": self.trained_state is not None, "n_images": n, "unreadable": bad,
                "seconds": round(seconds, 3), "predict_images_per_s": round(n / seconds, 1)}

    def precision_modes(self) -> dict:
        return precision_modes(self)

    def predict_runtimes(self) -> dict:
        return predict_runtimes(self)

    def cache_memory(self) -> dict:
        """Decode into a fresh cache in a child process, so its peak memory is this build's alone."""
        cache = self.workdir / "cache-memory"
        shutil.rmtree(cache, ignore_errors=True)
        spec = {"root": str(self.root), "names": list(self.names), "size": self.image_size, "cache": str(cache)}
        code = "import sys, attrnet.bench.cases as b; b._cache_memory_child(sys.argv[1])"
        try:
            proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)  # it can be many GB
        if proc.returncode != 0:
            raise AttrnetError(f"cache_memory child failed: {proc.stderr.strip()[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def run(self, case: str) -> dict:
        reason = self.skip_reason(case)
        if reason:
            return self.row(case, skipped=reason)
        if case == "cache_memory":  # a subprocess: this process's own memory is beside the point
            return self.row(case, **self.cache_memory())
        try:
            return self.measure(case, getattr(self, case))
        except Exception as exc:  # e.g. out of GPU memory, or a compiler failure: report it and go on
            log.exception("bench case %s failed", case)
            return self.row(case, error=f"{type(exc).__name__}: {str(exc)[:500]}")
        finally:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def _cache_memory_child(spec_json: str) -> None:
    """In a fresh interpreter: decode every image into an empty cache; print one JSON line of memory figures."""
    spec = json.loads(spec_json)
    table = read_table(DataConfig(root=spec["root"], format="celeba")).select(spec["names"])
    size = (spec["size"], spec["size"])
    gc.collect()
    before = psutil.Process().memory_info().rss
    with PeakMemory(children=True) as mem:
        t0 = time.perf_counter()
        decoded = decode_all(table.paths, size, cache_root=spec["cache"], progress=False)
        seconds = time.perf_counter() - t0
    st = os.stat(decoded.path / "images.npy")
    n = len(table)
    print(json.dumps({
        "n_images": n, "image_size": spec["size"], "seconds": round(seconds, 3),
        "decode_images_per_s": round(n / seconds, 1),
        "cache_mb": round(st.st_size / MB, 1),
        "rss_before_decode_mb": round(before / MB, 1),
        # ru_maxrss counts file pages of the memory-mapped cache that the kernel holds resident (reclaimable,
        # and growing with n); the anonymous part is the process's own heap, which streaming keeps flat.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB, 1),
        "peak_anon_rss_mb": round(mem.anon / MB, 1),
        "peak_workers_anon_rss_mb": round(mem.children_anon / MB, 1),
        "decode_workers": os.cpu_count() if n > 256 else 0,
        "peak_gpu_mem_mb": None,
    }))
