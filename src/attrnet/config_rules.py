"""What each config key may hold: its type, range and choices, as one table (RULES) of small validators.

attrnet.config.validate applies the table when a config is loaded, so every use site can trust the values. A
rule takes a value and returns it normalised (1e-3 read by YAML as a string becomes a float, 3.0 for an integer
key becomes 3), or raises ValueError saying what would be right.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

# The choices of the keys that name a method. The modules that implement them are the authority; tests check
# that these tuples match them (this module stays free of torch so that `attrnet --help` is fast).
TTA_MODES = ("none", "flip", "flip_shift")   # model.tta; what each does: attrnet.models.build.tta_average
FORMATS = ("celeba", "csv", "clothing", "awa2")            # attrnet.data.formats
RESIZE_METHODS = ("squash", "crop")                        # attrnet.data.images
SCHEDULES = ("cosine", "onecycle", "constant")             # attrnet.engine.train.build_scheduler
PRECISIONS = ("auto", "bf16", "fp32")                      # attrnet.engine.setup.Precision
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "f1")  # attrnet.metrics.TUNABLE
GROUP_PRESETS = ("celeba", "clothing", "awa2")             # attrnet.data.groups.PRESET_GROUPS
GRID_KEYS = ("mu", "gamma", "lam", "latent_tasks", "baseline_lam")  # attrnet.paper.pipeline
AUTO_AUGMENTS = ("none", "trivial", "randaugment")        # attrnet.data.augment.AUTO_AUGMENTS
SELECTIONS = ("best", "last")                              # attrnet.engine.train (the model file's epoch)
WEIGHTINGS = ("ew", "uw", "dwa", "rlw", "famo", "mgda", "pcgrad", "cagrad", "imtl_g")  # attrnet.weighting.METHODS

# The eight attributes of the original CelebA script (seed 000).
SEED8 = ["Eyeglasses", "Male", "Smiling", "Wearing_Hat",
         "Wearing_Necklace", "Wearing_Necktie", "Wearing_Earrings", "Wearing_Lipstick"]
ATTRIBUTE_PRESETS = {"seed8": SEED8}



def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False) -> Callable[[Any], Any]:
    def rule(value: Any) -> Any:
        if isinstance(value, str):
            number = _float_or_none(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = value if number is None else number
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"must be {'a whole number' if kind is int else 'a number'}, got {value!r}")
        if kind is int:
            if not float(value).is_integer():
                raise ValueError(f"must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if low is not None and (value < low or (low_open and value == low)):
            raise ValueError(f"must be {'>' if low_open else '>='} {low:g}, got {value!r}")
        if high is not None and (value > high or (high_open and value == high)):
            raise ValueError(f"must be {'<' if high_open else '<='} {high:g}, got {value!r}")
        return value
    return rule


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _choice(*options: str, also: Callable[[Any], bool] | None = None) -> Callable[[Any], Any]:
    def rule(value: Any) -> Any:
        if isinstance(value, bool) and ("true" in options or "false" in options):
            return value  # auto | true | false keys take YAML booleans
        if (isinstance(value, str) and value in options) or (also is not None and also(value)):
            return value
        raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
    return rule


def _optional(rule: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else rule(value)


def _image_size(value: Any) -> Any:
    side = _number(int, 8, 4096)
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"must be an integer or [height, width], got {value!r}")
        return [side(v) for v in value]
    try:
        return side(value)
    except ValueError:
        raise ValueError(f"must be a whole number of pixels from 8 to 4096 or [height, width], got {value!r}") from None


def _attributes(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        if value == "all" or value in ATTRIBUTE_PRESETS:
            return value
        raise ValueError(f"unknown preset {value!r}; use a list of names, 'all' or one of: "
                         f"{', '.join(ATTRIBUTE_PRESETS)}")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"must be a non-empty list of attribute names or a preset name, got {value!r}")
    _no_repeats(value)
    return list(value)


def _no_repeats(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"names {name!r} twice")
        seen.add(name)


def _groups(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in GROUP_PRESETS:
            raise ValueError(f"unknown preset {value!r}; use one of {', '.join(GROUP_PRESETS)} or "
                             f"{{group: [names]}}")
        return value
    if not isinstance(value, dict) or not value:
        raise ValueError(f"must be a preset name or a mapping {{group: [attribute names]}}, got {value!r}")
    for group, members in value.items():
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ValueError(f"group {group!r} must be a non-empty list of attribute names, got {members!r}")
    _no_repeats([m for members in value.values() for m in members])
    return {str(k): list(v) for k, v in value.items()}


def _pretrained(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, str) and value):
        return value
    raise ValueError(f"must be true, false or the path of a weights file, got {value!r}")


def _device(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return value
    raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")


def _backbone(value: Any) -> str:
    # only when a config is read: keeps --help fast; checks the name without building the model, and
    # imports timm only for a timm/ name
    from attrnet.models.backbones import backbone_name_problem
    problem = backbone_name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _trunk(value: Any) -> list:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of hidden sizes such as [4096, 4096] (or []), got {value!r}")
    return [_number(int, 1)(v) for v in value]


def _grid(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping such as {{mu: [0.1, 1], lam: [0.1, 1]}}, got {value!r}")
    out = {}
    for key, values in value.items():
        if key not in GRID_KEYS:
            raise ValueError(f"unknown key {key!r}; valid: {', '.join(GRID_KEYS)}")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{key} must be a non-empty list of values, got {values!r}")
        rule = _number(int, 0) if key == "latent_tasks" else _number(float, 0)
        out[key] = [rule(v) for v in values]
    return out


def _paths(value: Any) -> list:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"must be a list of paths (run folders or checkpoints), got {value!r}")
    _no_repeats(value)
    return list(value)


def _threshold_rule(value: Any) -> bool | str:
    if isinstance(value, bool) or value == "prior":
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"must be true (tuned on validation), false (0.5) or prior (the training positive rate), "
                     f"got {value!r}")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


FRACTION = _number(float, 0, 1, high_open=True)
COUNT = _number(int, 0)
POSITIVE = _number(int, 1)
NON_NEGATIVE = _number(float, 0)
AUTO_BOOL = _choice("auto", "true", "false")

# Each weighting method's hyper-parameters (attrnet.weighting: the constructors' keyword arguments).
WEIGHTING_ARGS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "ew": {}, "rlw": {}, "pcgrad": {}, "imtl_g": {},
    "uw": {"lr": _number(float, 0, low_open=True)},
    "dwa": {"temperature": _number(float, 0, low_open=True)},
    "famo": {"lr": _number(float, 0, low_open=True), "gamma": NON_NEGATIVE, "eps": _number(float, 0, low_open=True)},
    "mgda": {"normalization": _choice("none", "l2", "loss", "loss+"), "iters": POSITIVE},
    "cagrad": {"alpha": NON_NEGATIVE, "iters": POSITIVE},
}


def _weighting_args(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping {{method: {{argument: value}}}} such as {{cagrad: {{alpha: 0.4}}}}, "
                         f"got {value!r}")
    out = {}
    for method, args in value.items():
        if method not in WEIGHTING_ARGS:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(WEIGHTINGS)}")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ValueError(f"{method} must be a mapping of its arguments, got {args!r}")
        rules = WEIGHTING_ARGS[method]
        for key, arg in args.items():
            if key not in rules:
                raise ValueError(f"{method} has no argument {key!r}; valid: {', '.join(rules) or 'none'}")
            try:
                args = {**args, key: rules[key](arg)}
            except ValueError as exc:
                raise ValueError(f"{method}.{key} {exc}") from None
        out[str(method)] = dict(args)
    return out


# Rules that are slow to run (the backbone's imports torchvision to know its models): checked after every other
# key, so a mistake elsewhere in a config is reported at once (attrnet.config.validate).
DEFERRED_KEYS = {("model", "backbone")}

RULES: dict[str, dict[str, Callable[[Any], Any]]] = {
    "data": {
        "root": _text, "format": _choice(*FORMATS),
        "labels": _text, "attributes": _attributes, "image_size": _image_size,
        "grayscale": _flag, "resize": _choice(*RESIZE_METHODS), "val_fraction": FRACTION,
        "test_fraction": FRACTION, "split_seed": COUNT, "awa2_split": _choice("classes", "random"),
        "bad_images": _choice("skip", "error"), "cache_dir": _optional(_text),
        "cache_on_device": AUTO_BOOL, "workers": COUNT, "groups": _groups, "decode": _choice("auto", "cpu"),
    },
    "model": {
        "backbone": _backbone, "pretrained": _pretrained, "small_input": _flag, "trunk": _trunk,
        "trunk_dropout": FRACTION, "dropout": FRACTION, "head_hidden": COUNT,
        "head": _choice("independent", "latent"), "latent_tasks": COUNT, "tta": _choice(*TTA_MODES),
        "drop_path": FRACTION,
    },
    "train": {
        "epochs": POSITIVE, "batch_size": POSITIVE, "lr": _number(float, 0, low_open=True),
        "weight_decay": NON_NEGATIVE, "schedule": _choice(*SCHEDULES), "warmup_epochs": NON_NEGATIVE,
        "device": _device, "seed": COUNT, "precision": _choice(*PRECISIONS), "channels_last": AUTO_BOOL,
        "compile": _flag, "pos_weight": _flag, "flip": _flag, "shift": _number(float, 0, 0.5, high_open=True),
        "scale": FRACTION, "label_smoothing": FRACTION, "mixup": NON_NEGATIVE, "ema": FRACTION,
        "freeze_bn": _flag, "threshold_metric": _choice(*THRESHOLD_METRICS), "max_steps_per_epoch": COUNT,
        "log_every": POSITIVE, "weighting": _choice(*WEIGHTINGS), "weighting_args": _weighting_args,
        "backbone_lr_scale": _number(float, 0, low_open=True), "freeze_backbone_epochs": COUNT,
        "crop_scale": _number(float, 0, 1, low_open=True), "crop_ratio": _number(float, 1, 4),
        "color_jitter": FRACTION, "auto_augment": _choice(*AUTO_AUGMENTS), "cutmix": NON_NEGATIVE,
        "swa_epochs": COUNT, "select": _choice(*SELECTIONS), "tune_thresholds": _threshold_rule,
        "layer_decay": _number(float, 0, 1, low_open=True), "teachers": _paths, "distill_weight": _number(float, 0, 1),
    },
    "mtl": {
        "enabled": _flag, "features": _choice("shared", "per_attribute"), "latent_tasks": COUNT,
        "mu": NON_NEGATIVE, "gamma": NON_NEGATIVE, "lam": NON_NEGATIVE, "max_outer": POSITIVE,
        "tol": _number(float, 0, low_open=True), "fit_bias": _flag, "balance": _flag, "feature_epochs": POSITIVE,
        "models_per_pass": COUNT, "per_attribute_training": _choice("auto", "vmap", "loop", "sequential"),
        "save_feature_cnns": _flag, "reuse_features": _flag, "standardize": _flag, "pca": COUNT,
        "thresholds": _choice("zero", "tuned"), "baseline_lam": _optional(NON_NEGATIVE), "grid": _grid,
        "inner_max_iter": POSITIVE, "inner_tol": _number(float, 0, low_open=True), "solver_threads": COUNT,
    },
}
