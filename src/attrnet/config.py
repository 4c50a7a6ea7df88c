"""Configs as data: dataclasses read from YAML, with dotted `key=value` overrides.

Unknown sections or keys are errors that list the valid ones, so a typo never passes silently; every value is
checked against its rule (attrnet.config_rules.RULES) when the config is loaded, before anything is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attrnet.config_rules import ATTRIBUTE_PRESETS, DEFERRED_KEYS, RULES
from attrnet.errors import AttrnetError


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    format: str = "celeba"            # celeba | csv | clothing | awa2
    labels: str = "labels.csv"        # csv format: label file, relative to root (or absolute)
    attributes: Any = None            # None = all, a list of names, or a preset name ("seed8")
    image_size: Any = 128             # int (square) or [height, width]
    grayscale: bool = False
    resize: str = "squash"            # squash (whole image to size) | crop (short side, then centre crop)
    val_fraction: float = 0.1         # used when the format has no official partition
    test_fraction: float = 0.2
    split_seed: int = 0
    awa2_split: str = "classes"       # classes (seen/unseen) | random
    bad_images: str = "skip"          # skip (count and leave out) | error
    cache_dir: str | None = None      # decoded-image cache; default ~/.cache/attrnet or $ATTRNET_CACHE
    cache_on_device: Any = "auto"     # keep the whole decoded set in GPU memory: auto | true | false
    workers: int = 0                  # decode processes; 0 = all cores
    decode: str = "auto"              # auto: on the training GPU when the cache will live there (nvJPEG), else
                                      # the CPU | cpu: always on the CPU (libjpeg-turbo)
    groups: Any = None                # None, a preset name (celeba | clothing | awa2) or {group: [names]}


@dataclass
class ModelConfig:
    backbone: str = "resnet18"        # any torchvision classification model, or timm/<name> (attrnet[timm])
    pretrained: Any = False           # false | true (the source's ImageNet weights: torchvision's weights API or
                                      # timm's Hub, cached files used offline) | path to a weights file
    small_input: bool = False         # 3x3 stride-1 stem without max-pool, for images of 64 px or less
    trunk: list = field(default_factory=list)   # hidden sizes of the shared MLP, e.g. [4096, 4096]
    trunk_dropout: float = 0.5
    dropout: float = 0.0              # dropout on the features every head reads
    head_hidden: int = 0              # 0 = one linear classifier per attribute; >0 = an MLP head per attribute
    head: str = "independent"         # independent (one head per attribute) | latent (w_m = L s^m)
    latent_tasks: int = 0             # K for head=latent; 0 = min(M, 16)
    drop_path: float = 0.0            # stochastic depth: the deepest residual block is skipped with this
                                      # probability in training, shallower ones linearly less (timm models,
                                      # torchvision's mobilenet_v2 and models with stochastic_depth_prob)
    tta: str = "none"                 # test-time augmentation in validation, evaluate and predict:
                                      # none | flip (mean of the image's and its mirror image's logits) |
                                      # flip_shift (10 views: those two, each also moved by 1/16 of the
                                      # image up, down, left and right)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"          # cosine (linear warm-up, then cosine) | onecycle | constant
    warmup_epochs: float = 1.0
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    seed: int = 0
    precision: str = "auto"           # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    channels_last: Any = "auto"
    compile: bool = False
    pos_weight: bool = False          # weigh positives by negatives/positives per attribute (imbalanced labels)
    flip: bool = True
    shift: float = 0.0625             # random shift, as a fraction of the image size
    scale: float = 0.0                # random zoom-in up to this fraction (0 = none)
    crop_scale: float = 1.0           # random resized crop: a window of U(crop_scale, 1) of the area (1 = off)
    crop_ratio: float = 1.0           # ... with its aspect ratio log-uniform in [1/crop_ratio, crop_ratio]
    color_jitter: float = 0.0         # brightness, contrast, saturation each x U(1 - c, 1 + c) per image
    auto_augment: str = "none"        # none | trivial (TrivialAugmentWide) | randaugment (2 ops, magnitude 9)
    label_smoothing: float = 0.0      # targets pulled toward 0.5 by this amount
    mixup: float = 0.0                # mixup: each batch blended with a shuffled copy of itself, weight
                                      # drawn from Beta(mixup, mixup), targets blended alike (0 = off)
    cutmix: float = 0.0               # CutMix: a box of a shuffled copy pasted in, targets blended by its area,
                                      # weight from Beta(cutmix, cutmix); with mixup too, one of the two per batch
    ema: float = 0.0                  # weight EMA decay (e.g. 0.999); evaluation then uses the averaged weights
    swa_epochs: int = 0               # stochastic weight averaging: the model file is the mean of the weights at
                                      # the end of the last swa_epochs epochs, BatchNorm statistics recomputed
    select: str = "best"              # the model file: best (the epoch with the best validation mean accuracy)
                                      # | last (the last epoch: no choice made on the validation split)
    tune_thresholds: Any = True       # per-attribute thresholds: true = tuned on validation for threshold_metric;
                                      # false = 0.5 for all; prior = each attribute's positive rate among the
                                      # training labels (what maximises balanced accuracy when the probabilities
                                      # are calibrated; needs no validation split)
    layer_decay: float = 1.0          # layer-wise lr decay: the backbone's k-th block from the top learns at
                                      # lr x backbone_lr_scale x layer_decay^k (1 = one lr for the backbone)
    teachers: list = field(default_factory=list)  # distillation (attrnet distill): run folders whose mean
                                      # probability is blended into the training targets
    distill_weight: float = 0.5       # target = (1 - w) label + w teachers' probability (the teachers' alone
                                      # where the label is unknown)
    freeze_bn: bool = False           # BatchNorm in eval mode while training: running statistics frozen,
                                      # affine weights still learnt (fine-tuning; exact multi-rank CPU runs)
    threshold_metric: str = "accuracy"  # what per-attribute thresholds are tuned for on val
    max_steps_per_epoch: int = 0      # 0 = whole epoch (small values for smoke tests)
    log_every: int = 50
    backbone_lr_scale: float = 1.0    # fine-tuning: the backbone's lr is lr x this (trunk and heads: lr)
    freeze_backbone_epochs: int = 0   # fine-tuning: the backbone's weights and BatchNorm statistics stay as
                                      # loaded for this many first epochs; only trunk and heads learn
    weighting: str = "ew"             # how the per-attribute losses are balanced (attrnet.weighting): ew (mean
                                      # over known labels) | uw | dwa | rlw | famo | mgda | pcgrad | cagrad | imtl_g
    weighting_args: Any = None        # per method, its hyper-parameters, e.g. {cagrad: {alpha: 0.4}, dwa:
                                      # {temperature: 2}}; methods not named keep their defaults


@dataclass
class MTLConfig:
    """The paper's latent-task model (Abdulnabi et al. 2015), trained on CNN features."""

    enabled: bool = False
    features: str = "shared"          # shared (one backbone) | per_attribute (M single-attribute CNNs)
    latent_tasks: int = 0             # K; 0 = min(M, 16)
    mu: float = 1.0                   # group-sparsity weight on S
    gamma: float = 0.01               # l1 weight on L
    lam: float = 0.1                  # Frobenius weight on L
    max_outer: int = 500              # outer (S-step, L-step) iterations at most; the run says if it stopped short
    tol: float = 1e-6                 # stop when the estimated relative distance left to the converged objective
                                      # is below this (attrnet.mtl.solver._remaining)
    fit_bias: bool = True
    balance: bool = False             # weigh examples so each attribute's classes count equally
    feature_epochs: int = 5           # epochs of each single-attribute CNN (features=per_attribute)
    models_per_pass: int = 0          # per_attribute: CNNs trained together in one vmap pass; 0 = all M
    per_attribute_training: str = "auto"  # vmap (one batched pass) | loop (models looped in a step) | sequential | auto
    save_feature_cnns: bool = True    # per_attribute: keep the M CNNs' stacked weights (feature_cnns.pt)
    reuse_features: bool = True       # reuse run_dir/features.pt when it was made with the same settings
    standardize: bool = True          # z-score the features with the training rows' mean and std
    pca: int = 0                      # >0: the solver works on the top pca principal components of the standardised
                                      # (shared) features, a classifier there is one on the features again (its
                                      # cost grows with the feature size: 1,280 for MobileNetV2); 0 = all features
    thresholds: str = "zero"          # zero (score >= 0) | tuned (on val, for train.threshold_metric)
    baseline_lam: Any = None          # ridge weight of the independent baseline; None = lam
    grid: Any = None                  # {mu: [...], gamma: [...], lam: [...], latent_tasks: [...]}: pick on val
    inner_max_iter: int = 100         # FISTA iterations per S- or L-step
    inner_tol: float = 1e-10          # relative objective change that ends an S- or L-step
    solver_threads: int = 1           # CPU threads for the solver (0 = torch's default; small problems: 1 is fastest)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mtl: MTLConfig = field(default_factory=MTLConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def image_hw(self) -> tuple[int, int]:
        size = self.data.image_size
        if isinstance(size, int):
            return size, size
        if isinstance(size, (list, tuple)) and len(size) == 2:
            return int(size[0]), int(size[1])
        raise AttrnetError(f"data.image_size must be an integer or [height, width], got {size!r}")

    def attribute_names(self) -> list[str] | None:
        attrs = self.data.attributes
        if attrs is None or isinstance(attrs, list):
            return attrs
        if isinstance(attrs, str):
            if attrs in ATTRIBUTE_PRESETS:
                return list(ATTRIBUTE_PRESETS[attrs])
            if attrs == "all":
                return None
            raise AttrnetError(f"data.attributes: unknown preset {attrs!r}; use a list of names, "
                               f"'all' or one of: {', '.join(ATTRIBUTE_PRESETS)}")
        raise AttrnetError(f"data.attributes must be a list of names or a preset name, got {attrs!r}")


def _section_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def config_from_dict(raw: dict | None, origin: str = "config", overridden: dict | None = None) -> Config:
    """Build a Config from nested dicts; anything that is not a valid config is an AttrnetError.

    Every key's type, range and choices are checked here (RULES), so the code that uses a value can trust it.
    """
    raw = _check_shape(raw, origin)
    sections = _section_fields(Config)
    kwargs = {}
    for name, value in raw.items():
        cls = sections[name].default_factory  # type: ignore[misc]
        valid = _section_fields(cls)
        unknown = [k for k in value if k not in valid]
        if unknown:
            key = unknown[0] if str(unknown[0]).isprintable() else repr(unknown[0])  # one line, always
            raise AttrnetError(f"{origin}: unknown key {name}.{key}; valid keys in {name}: "
                               f"{', '.join(valid)}")
        kwargs[name] = cls(**value)
    cfg = Config(**kwargs)
    validate(cfg, origin, overridden)
    return cfg


def _check_shape(raw: Any, origin: str) -> dict:
    """A mapping of known sections, each a mapping of keys (or empty)."""
    if raw is None:
        return {}
    sections = _section_fields(Config)
    if not isinstance(raw, dict):
        raise AttrnetError(f"{origin}: expected a mapping of sections ({', '.join(sections)}), "
                           f"got {_kind(raw)}")
    out = {}
    for name, value in raw.items():
        if name not in sections:
            raise AttrnetError(f"{origin}: unknown section {name!r}; valid sections: {', '.join(sections)}")
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise AttrnetError(f"{origin}: section {name!r} must be a mapping of keys (key: value lines), "
                               f"got {_kind(value)}")
        out[name] = value
    return out


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value!r}"


def validate(cfg: Config, origin: str = "config", overridden: dict | None = None) -> None:
    """Check (and normalise in place) every key of every section; the first bad one is an AttrnetError that names
    where the value came from: the override that set it ({(section, key): "section.key=value"}), else origin.
    Keys whose rule is slow (DEFERRED_KEYS: the backbone's asks torchvision) are checked after all the others,
    so that any other mistake is reported before torch is even imported."""
    keys = [(s, k) for s, rules in RULES.items() for k in rules]
    for section, key in sorted(keys, key=lambda sk: sk in DEFERRED_KEYS):
        obj = getattr(cfg, section)
        try:
            setattr(obj, key, RULES[section][key](getattr(obj, key)))
        except ValueError as exc:
            where = f"override {overridden[(section, key)]}" if overridden and (section, key) in overridden else origin
            raise AttrnetError(f"{where}: {section}.{key} {exc}") from None
    if cfg.train.swa_epochs > cfg.train.epochs:
        raise AttrnetError(f"{origin}: train.swa_epochs ({cfg.train.swa_epochs}) must be at most train.epochs "
                           f"({cfg.train.epochs}): it averages the weights of the last swa_epochs epochs")
    if cfg.train.swa_epochs and cfg.train.select != "last":
        raise AttrnetError(f"{origin}: train.swa_epochs makes the average of the last epochs the model file; "
                           f"set train.select=last with it (best would pick one epoch instead)")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise AttrnetError(f"{origin}: data.val_fraction + data.test_fraction must be below 1 (some images "
                           f"must be left to train on), got {cfg.data.val_fraction} + {cfg.data.test_fraction}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to nested dicts; values are parsed as YAML."""
    raw = {k: dict(v or {}) for k, v in _check_shape(raw, "config").items()}
    for item in overrides:
        if "=" not in item:
            raise AttrnetError(f"override {item!r} must look like section.key=value, e.g. train.epochs=5")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise AttrnetError(f"override key {key!r} must be section.key, e.g. data.image_size")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise AttrnetError(f"override {item!r}: value is not valid YAML ({_yaml_problem(exc)})") from None
        raw.setdefault(parts[0], {})[parts[1]] = parsed
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where and what (PyYAML's own message spans 5-8 lines with a drawing of the context)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when path is None) and apply overrides.

    A relative data.root (or data.cache_dir, model.pretrained path) written in a config file is relative to
    that file's folder, so a config works from any working directory; on the command line (key=value) it is
    relative to the working directory. Both are stored as absolute paths.
    """
    raw: dict = {}
    origin = "command line"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AttrnetError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise AttrnetError(f"{path}: not a UTF-8 text file") from None
        except yaml.YAMLError as exc:
            raise AttrnetError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
        origin = str(path)
        raw = _check_shape(raw, origin)
        raw = _anchor_paths(raw, path.resolve().parent)
    cfg = config_from_dict(apply_overrides(raw, overrides or []), origin, _overridden(overrides or []))
    for section, key in PATH_KEYS:  # command-line values and defaults: relative to the working directory
        value = getattr(getattr(cfg, section), key)
        if isinstance(value, str):
            setattr(getattr(cfg, section), key, str(Path(value).expanduser().resolve()))
    cfg.train.teachers = [str(Path(t).expanduser().resolve()) for t in cfg.train.teachers]
    if isinstance(cfg.model.pretrained, str) and not Path(cfg.model.pretrained).is_file():
        raise AttrnetError(f"{origin}: model.pretrained: no such weights file: {cfg.model.pretrained}")
    return cfg


PATH_KEYS = (("data", "root"), ("data", "cache_dir"), ("model", "pretrained"))


def _overridden(overrides: list[str]) -> dict[tuple[str, str], str]:
    """{(section, key): the override as given}, the last one of a key winning (as apply_overrides does)."""
    out = {}
    for item in overrides:
        key = item.split("=", 1)[0].strip().split(".")
        if len(key) == 2:
            out[(key[0], key[1])] = item
    return out


def _anchor_paths(raw: dict, base: Path) -> dict:
    """Relative path values made absolute against `base` (values that are not paths are left for validation)."""
    out = {k: dict(v) for k, v in raw.items()}

    def anchored(value: str) -> str:
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())
    for section, key in PATH_KEYS:
        value = out.get(section, {}).get(key)
        if isinstance(value, str) and value:
            out[section][key] = anchored(value)
    teachers = out.get("train", {}).get("teachers")
    if isinstance(teachers, list):
        out["train"]["teachers"] = [anchored(t) if isinstance(t, str) and t else t for t in teachers]
    return out
