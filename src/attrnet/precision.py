"""The one home of the precision rule: bf16 autocast or fp32, channels_last or not, for a device.

Training, validation, evaluate and predict all resolve their precision here, so they agree.

train.precision=auto picks the fastest setting that keeps accuracy:
  CUDA: bf16 autocast + channels_last;
  CPU with native bf16 (avx512_bf16 or amx_bf16), when CPU_AUTO_BF16 (measured): bf16 autocast, with
      channels_last when CPU_BF16_CHANNELS_LAST (measured: docs/benchmarks.md, "CPU precision");
  any other CPU or device: fp32 in the default memory format.
bf16 and fp32 can be forced; train.channels_last=true/false overrides the memory format.

One exception, on a CPU: images of CPU_BF16_MIN_SIDE - 1 pixels or less stay fp32 under auto. There a
ResNet's last stage starts with a stride-2 3x3 convolution on a 1x1 map, and oneDNN's bf16 backward-weights
kernel for that shape (gemm, torch 2.14) returns garbage, up to inf, for the taps that see only padding
(fp32 is exact: their gradient is 0). Such images are too small for bf16 to matter to speed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from attrnet.errors import AttrnetError

PRECISIONS = ("auto", "bf16", "fp32")
ENV_CPU_BF16 = "ATTRNET_CPU_BF16"       # 0/1: overrides the detection (tests; a CPU that misreports itself)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# Whether auto adds channels_last to bf16 autocast on a CPU. Measured with `attrnet bench --device cpu
# --cases precision_modes` on a 2-core AMD EPYC (Zen 5, avx512_bf16) at 64 and 128 px: see
# docs/benchmarks.md. Re-measure on a new processor family before changing it.
CPU_BF16_CHANNELS_LAST = True
# Whether auto uses bf16 at all on a CPU with native bf16: faster there (docs/benchmarks.md: 1.4-2.4x), and
# the full-length CelebA run (configs/celeba.yaml at 64 px, 40 epochs) ends within the seed-to-seed spread
# of fp32's (docs/benchmarks.md, "Accuracy"). train.precision=fp32 forces fp32.
CPU_AUTO_BF16 = True
CPU_BF16_MIN_SIDE = 17  # see the module doc: below this, auto stays fp32 on a CPU

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str] | None:
    """The CPU flags of /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def _torch_says_bf16() -> bool:
    """torch's own check (private helpers, absent from some builds: then no)."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # a private helper that changed shape: do not guess
            pass
    return False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or amx_bf16); ATTRNET_CPU_BF16=0/1 overrides."""
    env = os.environ.get(ENV_CPU_BF16, "").strip()
    if env:
        if env not in ("0", "1"):
            raise ValueError(f"{ENV_CPU_BF16} must be 0 or 1 (or unset to detect), got {env!r}")
        return env == "1"
    flags = _cpuinfo_flags()
    if flags is not None:
        return any(f in flags for f in CPU_BF16_FLAGS)
    return _torch_says_bf16()


def _channels_last_setting(value: Any) -> bool | None:
    """auto -> None; True/False and the strings true/false -> that boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
        return None if value.lower() == "auto" else value.lower() == "true"
    raise ValueError(f"channels_last must be auto, true or false, got {value!r}")


@dataclass(frozen=True, eq=False)
class Precision:
    """How a network runs on a device: bf16 autocast or fp32, channels_last memory format or not.

    reason says why (for the log line); it takes no part in comparisons."""

    bf16: bool
    channels_last: bool
    device_type: str
    reason: str = ""

    def _key(self) -> tuple:
        return self.bf16, self.channels_last, self.device_type

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Precision) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def resolve(cls, precision: str, channels_last: Any, device: torch.device, *,
                image_hw: tuple[int, int] | None = None) -> "Precision":
        """precision auto|bf16|fp32 and channels_last auto|True|False, for `device` (see the module doc).

        image_hw: the network's input size, where known (from_config passes it): tiny images stay fp32 on a
        CPU."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
        cl = _channels_last_setting(channels_last)
        device_type = torch.device(device).type
        if precision != "auto":
            bf16, reason = precision == "bf16", f"{precision} asked for"
            if bf16 and device_type == "cpu" and image_hw is not None and min(image_hw) < CPU_BF16_MIN_SIDE:
                log.warning("bf16 on a CPU with %d px images: oneDNN's bf16 weight gradients of a strided "
                            "convolution on a 1x1 map can be garbage; train.precision=fp32 is exact there",
                            min(image_hw))
        elif device_type == "cuda":
            bf16, reason = True, "auto: CUDA"
        elif device_type == "cpu":
            native = cpu_has_native_bf16()
            bf16 = native and CPU_AUTO_BF16
            reason = "auto: this CPU " + ("has" if native else "has no") + " native bf16"
            if native and not CPU_AUTO_BF16:
                reason += ", but auto keeps fp32 here (CPU_AUTO_BF16 off; train.precision=bf16 forces it)"
            if bf16 and image_hw is not None and min(image_hw) < CPU_BF16_MIN_SIDE:
                bf16 = False
                reason += f", but images of {min(image_hw)} px stay fp32 (oneDNN's bf16 gradients on 1x1 maps)"
        else:
            bf16, reason = False, f"auto: fp32 on {device_type}"
        if cl is None:
            cl = device_type == "cuda" or (device_type == "cpu" and bf16 and CPU_BF16_CHANNELS_LAST)
        else:
            reason += ", channels_last " + ("asked for" if cl else "turned off")
        return cls(bf16, cl, device_type, reason)

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> "Precision":
        """Precision.resolve(cfg.train.precision, cfg.train.channels_last, device, image_hw=cfg.image_hw()), with a
        bad value reported as the user's mistake (an AttrnetError naming the key)."""
        try:
            return cls.resolve(cfg.train.precision, cfg.train.channels_last, device, image_hw=cfg.image_hw())
        except ValueError as exc:  # a bad train.precision / train.channels_last, or ATTRNET_CPU_BF16
            msg = str(exc)
            raise AttrnetError(f"train.{msg}" if msg.startswith(("precision", "channels_last")) else msg) from None

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def describe(self) -> str:
        """e.g. "bf16 autocast, channels_last" or "fp32"."""
        return ("bf16 autocast" if self.bf16 else "fp32") + (", channels_last" if self.channels_last else "")

    def as_dict(self) -> dict:
        """The resolved choice, for a run's config or metrics: {"precision": "bf16", "channels_last": True}."""
        return {"precision": self.name, "channels_last": self.channels_last}

    def autocast(self) -> contextlib.AbstractContextManager:
        """torch.autocast to bf16 on this device, or a context that does nothing (fp32)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)
