"""How the per-attribute losses become one update (see base.py for the contract).

    w = make_weighting("cagrad", num_tasks=40, alpha=0.4)
    loss = w.backward(attribute_bce(logits, y), features)   # features: only for gradient methods

Methods: ew (the default: mean over known labels), uw, dwa, rlw, famo (loss-based), mgda, pcgrad, cagrad,
imtl_g (gradient methods on the shared representation).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from attrnet.weighting.base import FeatureCut, Reduce, SharedFeatures, Weighting, cut
from attrnet.weighting.equal import EqualWeighting
from attrnet.weighting.famo import FAMO
from attrnet.weighting.gradient import IMTLG, MGDA, CAGrad, PCGrad
from attrnet.weighting.loss_based import DynamicWeightAverage, RandomLossWeighting, UncertaintyWeighting

METHODS: dict[str, type[Weighting]] = {cls.name: cls for cls in (
    EqualWeighting, UncertaintyWeighting, DynamicWeightAverage, RandomLossWeighting, FAMO,
    MGDA, PCGrad, CAGrad, IMTLG)}

COMMON_ARGS = ("num_tasks", "device", "reduce", "world_size", "seed")

__all__ = ["METHODS", "FeatureCut", "Reduce", "SharedFeatures", "Weighting", "cut", "hyper_parameters",
           "make_weighting"]


def hyper_parameters(name: str) -> dict[str, Any]:
    """A method's own keyword arguments and their defaults."""
    sig = inspect.signature(METHODS[name].__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if k not in ("self", *COMMON_ARGS) and p.kind == p.KEYWORD_ONLY}


def make_weighting(name: str, num_tasks: int, *, device: torch.device | str = "cpu", reduce: Reduce | None = None,
                   world_size: int = 1, seed: int = 0, **args: Any) -> Weighting:
    """The weighting called `name` with its hyper-parameters `args` (the others at their defaults)."""
    if name not in METHODS:
        raise ValueError(f"unknown weighting {name!r}; valid: {', '.join(METHODS)}")
    unknown = sorted(set(args) - set(hyper_parameters(name)))
    if unknown:
        raise ValueError(f"weighting {name} has no argument {unknown[0]!r}; valid: "
                         f"{', '.join(hyper_parameters(name)) or 'none'}")
    return METHODS[name](num_tasks, device=device, reduce=reduce, world_size=world_size, seed=seed, **args)
