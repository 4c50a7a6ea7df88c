"""LibMTL's loss weightings (LibMTL 1.1.5 from PyPI) on attrnet's network, for weighting_step_time.py.

LibMTL is not a dependency of attrnet and none of its code is copied here. Get it with

    pip install --no-deps --target /tmp/libmtl LibMTL==1.1.5    # then: --libmtl-path /tmp/libmtl

or `pip install --no-deps LibMTL==1.1.5` into the venv (--no-deps: it must not touch torch).

LibMTL's weightings are mixins of AbsWeighting that its Trainer merges with an architecture
(class MTLmodel(architecture, weighting), then init_param()). `libmtl_weighting` does that merge around an
attrnet AttributeNet instead: task_num = the attributes, the shared parameters are the backbone's
(everything not under heads.), rep_grad=False: LibMTL's per-parameter mode, one backward pass through the
whole network per task, each task's gradient of all shared parameters one row of a [tasks, parameters]
matrix. Its backward(losses, **weight_args) gets attrnet's per-attribute loss vector and the
hyper-parameters LibMTL's own config defaults give (LibMTL.config.prepare_args: MGDA mgda_gn='none',
CAGrad calpha=0.5 rescale=1; EW, PCGrad and IMTL take none), then the optimizer steps, as in LibMTL's
Trainer. LibMTL's IMTL is IMTL-L + IMTL-G (a learned loss scale, trained by the same optimizer) where
attrnet's imtl_g is IMTL-G alone; LibMTL's EW sums the losses where attrnet's ew averages them.

Unknown labels: LibMTL has no notion of them (one loss per task, every sample labelled); it cannot mask.
It gets attrnet's masked per-attribute means (attribute_bce(...).per_attribute()): each attribute's mean
over its known labels in the batch, and 0 with a zero gradient for an attribute with no known label, which
MGDA then takes as the min-norm point (no backbone update) and IMTL divides by (NaN weights). With 20%
unknown at random and a batch of 64 that never happens in practice.

Patches LibMTL 1.1.5 needs on torch 2.14 / torchvision 0.29 / numpy 2 / Python 3.11, applied at run time
by import_libmtl (the installed files are not edited; the method sources are rewritten in memory):
  patch 1: a stand-in module torchvision.models.utils (load_state_dict_from_url = torch.hub's), because
           `import LibMTL` imports LibMTL.model.resnet, which imports it, and torchvision removed it in 0.13.
  patch 2: CAGrad.backward: x.reshape(1,3) / reshape(3,1) -> reshape(1,self.task_num) / (self.task_num,1),
           because 1.1.5's objective is hard-wired to 3 tasks (ValueError for any other number; later
           LibMTL versions fixed it the same way).
  patch 3: zero_grad_share_params (the architecture's method, provided here) zeroes the shared gradients
           in place, as nn.Module.zero_grad() did before torch 2.0, because it now sets them to None and
           AbsWeighting._reset_grad then writes param.grad.data on None (AttributeError).
  patch 4: AbsWeighting._grad2vec flattens with reshape(-1), not view(-1), and _reset_grad writes the new
           gradient in the parameter's own memory layout, because attrnet trains channels_last on CUDA:
           a channels_last gradient cannot be view()ed flat (RuntimeError, seen here with
           train.channels_last=true on the CPU), and the contiguous gradient _reset_grad made would not
           match its channels_last parameter, which CUDA's fused AdamW refuses ("must have same dtype,
           device, and layout", pytorch/pytorch#106951; the CPU's fused AdamW accepts it).
Not patched, part of what is timed: _grad2vec stages every task's gradient in host memory (torch.zeros on
the CPU, then copied to the device), and MGDA, PCGrad and CAGrad sync with the host in their Python loops.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import sys
import types

import torch
from torch import nn

from attrnet.engine import train as T
from attrnet.losses import attribute_bce

# LibMTL's name -> attrnet's counterpart (the same method, on the shared representation).
METHODS = {"EW": "ew", "MGDA": "mgda", "PCGrad": "pcgrad", "CAGrad": "cagrad", "IMTL": "imtl_g"}
HOW_TO_GET = ("LibMTL is not installed: pip install --no-deps --target /tmp/libmtl LibMTL==1.1.5, "
              "then pass --libmtl-path /tmp/libmtl")


def _rewrite(cls, name: str, *edits: tuple[str, str]) -> None:
    """Replace cls.name by its own source with `edits` (old, new) applied, compiled in its module."""
    fn = getattr(cls, name)
    lines = inspect.getsource(fn).splitlines(keepends=True)
    indent = " " * (len(lines[0]) - len(lines[0].lstrip()))  # not textwrap.dedent: comments at column 0
    src = "\n" * (fn.__code__.co_firstlineno - 1) + "".join(
        line[len(indent):] if line.startswith(indent) else line for line in lines)  # tracebacks: true lines
    for old, new in edits:
        if old not in src:
            raise RuntimeError(f"not LibMTL 1.1.5's {cls.__name__}.{name}: {old!r} not found")
        src = src.replace(old, new)
    ns: dict = {}
    exec(compile(src, inspect.getsourcefile(fn), "exec"), fn.__globals__, ns)
    ns[name].__libmtl_patched__ = True
    setattr(cls, name, ns[name])


def import_libmtl(path: str | None = None):
    """Import LibMTL (from `path` first, if given), with patches 1, 2 and 4 applied; exits with HOW_TO_GET."""
    if path:
        sys.path.insert(0, path)
    try:
        import torchvision.models.utils  # noqa: F401
    except ModuleNotFoundError:  # patch 1
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = shim
    try:
        import LibMTL
    except ModuleNotFoundError as exc:
        if exc.name != "LibMTL":
            raise
        raise SystemExit(HOW_TO_GET) from None
    W = LibMTL.weighting
    if not getattr(W.CAGrad.backward, "__libmtl_patched__", False):
        _rewrite(W.CAGrad, "backward", ("reshape(1,3)", "reshape(1,self.task_num)"),  # patch 2
                 ("reshape(3, 1)", "reshape(self.task_num, 1)"), ("reshape(3,1)", "reshape(self.task_num,1)"))
        _rewrite(W.AbsWeighting, "_grad2vec", ("param.grad.data.view(-1)", "param.grad.data.reshape(-1)"))  # 4
        _rewrite(W.AbsWeighting, "_reset_grad",  # patch 4
                 ("new_grads[beg:end].contiguous().view(param.data.size()).data.clone()",
                  "torch.empty_like(param).copy_(new_grads[beg:end].view(param.data.size()))"))
    return LibMTL


def default_weight_args(method: str) -> dict:
    """The hyper-parameters LibMTL's command-line defaults give `method` (its config printout silenced)."""
    from LibMTL.config import LibMTL_args, prepare_args
    with contextlib.redirect_stdout(io.StringIO()):
        kwargs, _, _ = prepare_args(LibMTL_args.parse_args(["--weighting", method]))
    return kwargs["weight_args"]


def libmtl_weighting(method: str, model: nn.Module, num_tasks: int, device: torch.device) -> nn.Module:
    """LibMTL's `method` merged with `model` as its Trainer would; the result's parameters() are the model's
    and the method's own (IMTL's loss scale), for one optimizer."""
    import LibMTL.weighting
    base = getattr(LibMTL.weighting, method)

    class Host(base):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.task_num, self.task_name = num_tasks, [f"task{i}" for i in range(num_tasks)]
            self.device, self.rep_grad, self.multi_input = torch.device(device), False, False
            self.shared = [p for n, p in model.named_parameters() if not n.startswith("heads.")]
            self.weight_args = default_weight_args(method)
            self.init_param()

        def get_share_params(self):
            return self.shared

        def zero_grad_share_params(self) -> None:  # patch 3: in place, not set to None
            for p in self.shared:
                if p.grad is not None:
                    p.grad.detach_().zero_()

    Host.__name__ = f"LibMTL{method}"
    return Host().to(device)


def libmtl_epoch(host: nn.Module, loader, opt, sched, cfg, precision, epoch: int, steps: int) -> None:
    """train_one_epoch's step with LibMTL's backward: the same batches, augmentation, precision and loss
    vector; optimizer.zero_grad(), backward(losses, **weight_args), optimizer.step() as in LibMTL's Trainer."""
    model = host.model
    model.train()
    gen = torch.Generator(device=loader.device).manual_seed(cfg.train.seed * 100_003 + epoch)
    for i, (x, y) in enumerate(loader.epoch(epoch)):
        if i >= steps:
            break
        x, y = T.prepare_batch(x, y, cfg, gen, None, precision.channels_last)
        with precision.autocast():
            logits = model(x)
        losses = attribute_bce(logits, y, None, cfg.train.label_smoothing).per_attribute()
        opt.zero_grad(set_to_none=True)
        host.backward(losses, **host.weight_args)
        opt.step()
        sched.step()
