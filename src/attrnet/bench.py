"""`attrnet bench`: training and prediction throughput, one dict (one JSON line) per case.

Cases, on one CelebA-layout folder of 178x218 JPEGs (CelebA's size) with 40 attributes:
  seed_loop             the original script's loop: one image per optimizer step, fp32, Adam, a BCE per attribute,
                        images pre-decoded into float tensors, loss.item() every step
  dataloader_eager      a plain batched loop: torch DataLoader (PIL decode + torchvision transforms per image,
                        one worker per core), bf16 autocast + channels_last on GPU, fp32 on CPU; one epoch
  attrnet_cold          attrnet's pipeline from nothing: decode into an empty cache, then the first epoch
  attrnet_warm          attrnet's epochs once the cache exists (after one untimed warm-up epoch)
  attrnet_warm_compile  the same with train.compile=true (CPU: only when named in --cases)
  attrnet_warm_ddp1     the same inside DistributedDataParallel with world size 1 (CUDA only): per-rank DDP cost
  predict_folder        attrnet.predict.Predictor over the JPEG folder (nvjpeg on GPU, DataLoader workers on CPU)
  cache_memory          peak memory of building the decoded cache, in a subprocess of its own
Every case uses the same network (attrnet's ResNet with one linear classifier per attribute), so the
differences are the loops' and pipelines' alone.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import psutil
import torch
import torch.nn as nn

from attrnet.config import Config, DataConfig, config_from_dict
from attrnet.data.augment import IMAGENET_MEAN, IMAGENET_STD
from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)

CASES = ("seed_loop", "dataloader_eager", "attrnet_cold", "attrnet_warm", "attrnet_warm_compile",
         "attrnet_warm_ddp1", "predict_folder", "cache_memory")
CELEBA_40 = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
             "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
             "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
             "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
             "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
CELEBA_SIZE = (178, 218)   # width, height
DISTINCT_IMAGES = 512      # drawn once; the other files are hard links to them (drawing one takes ~15 ms)
MB = 2 ** 20


# ---------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> float:
    """Wall time after the device's queued work is done (GPU kernels run asynchronously)."""
    _sync(device)
    return time.perf_counter()


def _anon_rss(pid: int | str = "self") -> int:
    """Anonymous resident memory (heap, not file pages such as a memory-mapped cache), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    info = psutil.Process(None if pid == "self" else int(pid)).memory_info()
    return info.rss - getattr(info, "shared", 0)


class PeakMemory:
    """Largest resident memory of this process seen while the block runs, sampled every `interval` seconds by
    a thread: rss (all of it), anon (its heap: no file pages) and, with children=True, children_anon (the
    sum of its child processes' heaps; their RSS would count the pages they share with this one many times)."""

    def __init__(self, interval: float = 0.02, children: bool = False):
        self.interval, self.children = interval, children
        self.proc = psutil.Process()
        self.rss = self.anon = self.children_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        self.rss = max(self.rss, self.proc.memory_info().rss)
        self.anon = max(self.anon, _anon_rss())
        if self.children:
            total = 0
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.Error, OSError):
                    total += _anon_rss(child.pid)
            self.children_anon = max(self.children_anon, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "PeakMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ---------------------------------------------------------------- data


def ensure_synthetic_celeba(folder: Path, n: int, n_attributes: int) -> Path:
    """A CelebA-layout folder of n 178x218 JPEGs with n_attributes random +-1 labels, all in the train split.

    DISTINCT_IMAGES faces are drawn once (beside folder); the n files are hard links to them (copies where the
    file system has no hard links). Labels are random (each attribute with its own positive rate): enough
    for throughput. Reused when it already holds the same n and attributes.
    """
    from attrnet.atomic import write_text
    from attrnet.data.synthetic import ATTR_FILE, IMAGE_DIR, PARTITION_FILE, write_synthetic_celeba

    spec = {"version": 1, "n": n, "attributes": n_attributes, "distinct": min(n, DISTINCT_IMAGES),
            "size": list(CELEBA_SIZE)}
    marker = folder / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec and (folder / ATTR_FILE).is_file():
        return folder
    k = spec["distinct"]
    source = folder.parent / f"distinct-{CELEBA_SIZE[0]}x{CELEBA_SIZE[1]}-{k}"
    if not (source / ATTR_FILE).is_file():
        log.info("drawing %d distinct %dx%d faces into %s", k, *CELEBA_SIZE, source)
        write_synthetic_celeba(source, k, seed=0, size=CELEBA_SIZE)
    img_dir = folder / IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(n)))
    files = [f"{i + 1:0{width}d}.jpg" for i in range(n)]
    for i, name in enumerate(files):
        dst = img_dir / name
        if dst.exists():
            dst.unlink()
        src = source / IMAGE_DIR / f"{i % k + 1:06d}.jpg"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    names = CELEBA_40[:n_attributes] + [f"Attribute_{j + 1}" for j in range(len(CELEBA_40), n_attributes)]
    rng = np.random.default_rng(0)
    rates = rng.uniform(0.05, 0.8, n_attributes)
    chunks = []
    for start in range(0, n, 10_000):  # in chunks: a few hundred thousand rows stay a few MB of text
        values = np.where(rng.random((min(10_000, n - start), n_attributes)) < rates, " 1", "-1")
        chunks.append("".join(f + " " + " ".join(row) + "\n" for f, row in zip(files[start:], values.tolist())))
    write_text(folder / PARTITION_FILE, "".join(f"{name} 0\n" for name in files))
    write_text(folder / ATTR_FILE, f"{n}\n{' '.join(names)}\n" + "".join(chunks))
    marker.write_text(json.dumps(spec))
    return folder


class _PilFolder(torch.utils.data.Dataset):
    """The plain way: open each JPEG with PIL and run torchvision's transforms on it, one image at a time."""

    def __init__(self, paths: list[Path], labels: np.ndarray, transform):
        self.paths, self.labels, self.transform = paths, torch.as_tensor(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), self.labels[i]


def _pil_transform(size: int, flip: bool):
    from torchvision import transforms

    steps = [transforms.Resize((size, size))]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# ---------------------------------------------------------------- the bench


class _ForcedDist:
    """DistInfo for a world of one that still takes the distributed code path (loss all-reduce per step)."""

    rank, world_size, local_rank, enabled, is_main = 0, 1, 0, True, True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, args, device: torch.device, root: Path, workdir: Path):
        from attrnet.data.formats import assign_partition, read_table, split_indices

        gpu = device.type == "cuda"
        self.device, self.root, self.workdir = device, root, workdir
        self.image_size = args.image_size or (128 if gpu else 64)
        self.batch_size = args.batch_size or (512 if gpu else 32)
        self.backbone = args.backbone
        self.seed_steps = 200 if gpu else 20
        self.warm_epochs = 3 if gpu else 2
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
                     "image_size": self.image_size, "batch_size": self.batch_size, "cpu_cores": os.cpu_count()}

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
        from attrnet.models.build import build_model

        torch.manual_seed(0)
        return build_model(self.config().model, len(self.names), 3).to(self.device)

    def prepared(self):
        from attrnet.engine.setup import prepare_data

        if self.data is None:
            self.data = prepare_data(self.config(), progress=False)
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
            _sync(self.device)
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
        tf = _pil_transform(self.image_size, flip=False)
        ds = _PilFolder([table.image_dir / table.files[i] for i in idx], np.nan_to_num(table.labels[idx]), tf)
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
        t0 = _clock(dev)
        for i in range(self.seed_steps):
            step(warmup + i)
        seconds = _clock(dev) - t0
        return {"precision": "fp32", "batch_size": 1, "steps": self.seed_steps, "n_images": self.seed_steps,
                "seconds": round(seconds, 3), "train_images_per_s": round(self.seed_steps / seconds, 2)}

    def dataloader_eager(self) -> dict:
        from attrnet.engine.train import build_optimizer
        from attrnet.losses import masked_bce

        table, dev, cuda = self.table, self.device, self.device.type == "cuda"
        idx = self.train_idx
        workers = os.cpu_count() or 1
        ds = _PilFolder([table.image_dir / table.files[i] for i in idx], table.labels[idx],
                        _pil_transform(self.image_size, flip=True))
        loader = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=True, num_workers=workers,
                                             pin_memory=cuda, drop_last=len(ds) >= self.batch_size)
        model = self.model()
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(model, self.config(), dev)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

        def step(x, y):
            x = x.to(dev, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = model(x)
            loss = masked_bce(logits, y.to(dev, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        model.train()
        step(*next(iter(torch.utils.data.DataLoader(ds, batch_size=self.batch_size))))  # untimed: kernel set-up
        t0, steps, images = _clock(dev), 0, 0
        for x, y in loader:  # worker start-up included, as in every epoch of such a loop
            step(x, y)
            steps, images = steps + 1, images + len(x)
        seconds = _clock(dev) - t0
        return {"precision": "bf16-autocast+channels_last" if cuda else "fp32", "num_workers": workers,
                "steps": steps, "n_images": images, "seconds": round(seconds, 3),
                "train_images_per_s": round(images / seconds, 1)}

    def _trainer(self, cfg: Config, dist=None) -> dict:
        """attrnet's training set-up, made as fit() makes it (setup.make_loader, train.make_training)."""
        from attrnet.engine import distributed as ddp
        from attrnet.engine.setup import loader_images, make_loader
        from attrnet.engine.train import make_training

        data, dev = self.prepared(), self.device
        images = loader_images(data, dev, cfg.data.cache_on_device)
        loader = make_loader(images, data, data.indices("train"), cfg.train.batch_size, dev, True, cfg.train.seed)
        t = make_training(cfg, len(self.names), dev, dist or ddp.DistInfo(), len(loader))
        return {"model": t.model, "train_model": t.step_model, "loader": loader, "opt": t.optimizer,
                "sched": t.scheduler, "precision": t.precision, "on_device": isinstance(images, torch.Tensor)}

    def _epochs(self, cfg: Config, t: dict, epochs: range, dist=None) -> float:
        from attrnet.engine import distributed as ddp
        from attrnet.engine.train import train_one_epoch

        t0 = _clock(self.device)
        for epoch in epochs:
            train_one_epoch(t["train_model"], t["loader"], t["opt"], t["sched"], cfg, t["precision"], epoch,
                            dist=dist or ddp.DistInfo(), progress=False)
        return _clock(self.device) - t0

    @staticmethod
    def _precision_name(t: dict) -> str:
        p = t["precision"]
        return ("bf16-autocast" if p.bf16 else "fp32") + ("+channels_last" if p.channels_last else "")

    def attrnet_cold(self) -> dict:
        """As fit() starts on a new data set: the first epoch trains while the cache is decoded, each batch as
        soon as its rows are (decoded in that epoch's order); then the rest is decoded and the cache published."""
        from attrnet.engine.setup import first_epoch_order, prepare_data

        cfg = self.config()
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.data = None
        t0 = _clock(self.device)
        self.data = prepare_data(cfg, progress=False, first_batches=first_epoch_order(cfg))
        t_setup = _clock(self.device) - t0
        t = self._trainer(cfg)
        self._epochs(cfg, t, range(1))
        t_epoch = _clock(self.device) - t0
        self.data.finish_decoding()
        seconds = _clock(self.device) - t0
        images = len(t["loader"]) * cfg.train.batch_size
        return {"precision": self._precision_name(t), "overlapped": True, "n_images": images,
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
        from attrnet.predict import Predictor

        table, dev = self.table, self.device
        model = self.model()
        if self.trained_state is not None:
            model.load_state_dict(self.trained_state)
        predictor = Predictor(model, list(self.names), np.full(len(self.names), 0.5),
                              (self.image_size, self.image_size), False, "squash", dev)
        paths = [table.image_dir / table.files[i] for i in self.train_idx]
        for _ in predictor.iter_predict(paths[: self.batch_size], self.batch_size):
            pass  # untimed: nvjpeg and kernel set-up
        t0, n, bad = _clock(dev), 0, 0
        for done, probs, unreadable in predictor.iter_predict(paths, self.batch_size):
            n, bad = n + len(done), bad + len(unreadable)
        seconds = _clock(dev) - t0
        return {"precision": "bf16-autocast+channels_last" if predictor.bf16 else "fp32",
                "decode": "nvjpeg (GPU)" if dev.type == "cuda" else "DataLoader workers (CPU)",
                "trained_weights": self.trained_state is not None, "n_images": n, "unreadable": bad,
                "seconds": round(seconds, 3), "predict_images_per_s": round(n / seconds, 1)}

    def cache_memory(self) -> dict:
        """Decode into a fresh cache in a child process, so its peak memory is this build's alone."""
        cache = self.workdir / "cache-memory"
        shutil.rmtree(cache, ignore_errors=True)
        spec = {"root": str(self.root), "names": list(self.names), "size": self.image_size, "cache": str(cache)}
        code = "import sys, attrnet.bench as b; b._cache_memory_child(sys.argv[1])"
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
    from attrnet.data.cache import decode_all
    from attrnet.data.formats import read_table

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


def _summary(rows: dict[str, dict], device: torch.device) -> dict | None:
    speed = {case: r["train_images_per_s"] for case, r in rows.items() if "train_images_per_s" in r}
    if len(speed) < 2:
        return None
    out = {"case": "summary", "device": str(device), "train_images_per_s": speed}
    seed, warm, ddp1 = speed.get("seed_loop"), speed.get("attrnet_warm"), speed.get("attrnet_warm_ddp1")
    if seed and warm:
        out["attrnet_warm_over_seed_loop"] = round(warm / seed, 1)
    if warm and ddp1:
        out["ddp1_overhead_pct"] = round(100 * (warm / ddp1 - 1), 1)
    return out


def run_bench(args) -> Iterator[dict]:
    """Yield one dict per case named in args.cases (see the module docstring), then a summary."""
    from attrnet.engine.setup import resolve_device

    cases = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        raise AttrnetError(f"unknown bench case(s) {', '.join(unknown) or '(none)'}; valid: all, {', '.join(CASES)}")
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="attrnet-bench-") if own_workdir else args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.data:
            root = Path(args.data)  # --n does not apply: every image of the folder (its train split) is used
        else:
            n = args.n or (20000 if device.type == "cuda" else 256)
            root = ensure_synthetic_celeba(workdir / f"celeba-{n}x{args.attributes}", n, args.attributes)
        bench = Bench(args, device, root, workdir)
        rows: dict[str, dict] = {}
        for case in cases:
            log.info("bench: %s", case)
            rows[case] = bench.run(case)
            yield rows[case]
        summary = _summary(rows, device)
        if summary:
            yield summary
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
