"""How a trained model reads an image, as one record (timm's pretrained_cfg plays this part there).

Training writes it into every checkpoint (engine), inference reads it back to prepare images exactly as training
did, exports write it into their description (the ONNX sidecar, the hub folder's config.json) and model cards
describe it. Nothing else in attrnet writes or reads these fields one by one.

It also holds ImageNet's statistics, the one place they are written: what every network is normalised with
unless its weights say otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_NORMALIZATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear"}
# What attrnet's own resize does, in training and in inference (attrnet.data.images.resize_image), whatever the
# backbone's weights were trained with: an antialiased bilinear resize.
RESIZE_INTERPOLATION = "bilinear"
# What the network was trained on: whole images, or faces cropped and aligned to a template (CelebA's aligned
# set); a model of aligned faces needs a photo's faces found and aligned first (attrnet.faces).
INPUT_KINDS = ("image", "aligned_face")


@dataclass(frozen=True)
class Preprocessing:
    """image_size (height, width) after attrnet's resize (`resize`: squash the whole image, or crop the centre at
    the target's aspect first); grey or RGB; mean and std (RGB, 0-1 scale) of the normalisation;
    weights_interpolation: the resize the backbone's weights were trained with (for a reader: attrnet resizes
    with RESIZE_INTERPOLATION); tta: the test-time augmentation the model predicts with; input: what it was
    trained on (INPUT_KINDS); for aligned faces, face_frame (height, width) of the aligned crops and
    face_template, the (x, y) of the 5 landmarks (eyes, nose, mouth corners) in that frame."""

    image_size: tuple[int, int]
    grayscale: bool = False
    resize: str = "squash"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    weights_interpolation: str = "bilinear"
    tta: str = "none"
    input: str = "image"
    face_frame: tuple[int, int] | None = None
    face_template: tuple[tuple[float, float], ...] | None = None

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def normalization(self) -> dict:
        """{"mean", "std", "interpolation"}: the form the networks and their builders use."""
        return {"mean": list(self.mean), "std": list(self.std), "interpolation": self.weights_interpolation}

    def replace(self, **changes: Any) -> "Preprocessing":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain types only (a weights-only checkpoint holds it as it is)."""
        out = dataclasses.asdict(self)
        out.update(image_size=list(self.image_size), mean=list(self.mean), std=list(self.std),
                   face_frame=list(self.face_frame) if self.face_frame else None,
                   face_template=[list(p) for p in self.face_template] if self.face_template else None)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        frame, template = d.get("face_frame"), d.get("face_template")
        return cls(image_size=(int(d["image_size"][0]), int(d["image_size"][1])), grayscale=bool(d.get("grayscale")),
                   resize=str(d.get("resize", "squash")), mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
                   std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),
                   weights_interpolation=str(d.get("weights_interpolation", "bilinear")),
                   tta=str(d.get("tta", "none")), input=str(d.get("input", "image")),
                   face_frame=(int(frame[0]), int(frame[1])) if frame else None,
                   face_template=tuple((float(x), float(y)) for x, y in template) if template else None)

    @classmethod
    def from_config(cls, data: Any, model: Any, normalization: Mapping[str, Any], input: str = "image",
                    face_frame: tuple[int, int] | None = None,
                    face_template: tuple[tuple[float, float], ...] | None = None) -> "Preprocessing":
        """What a run with these data and model sections (attrnet.config's DataConfig and ModelConfig) trained
        on: its image size, colour, resize and test-time augmentation, the network's normalisation."""
        size = data.image_size
        h, w = (size, size) if isinstance(size, int) else (size[0], size[1])
        return cls(image_size=(int(h), int(w)), grayscale=bool(data.grayscale), resize=str(data.resize),
                   mean=tuple(float(v) for v in normalization["mean"]),
                   std=tuple(float(v) for v in normalization["std"]),
                   weights_interpolation=str(normalization.get("interpolation", "bilinear")), tta=str(model.tta),
                   input=input, face_frame=face_frame, face_template=face_template)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any], config: Mapping[str, Any]) -> "Preprocessing":
        """A checkpoint's record; checkpoints written before the record existed keep the same facts in separate
        keys and in their config, read here and nowhere else."""
        if isinstance(ckpt.get("preprocessing"), Mapping):
            return cls.from_dict(ckpt["preprocessing"])
        data, model = config.get("data") or {}, config.get("model") or {}
        size = ckpt.get("image_size") or data.get("image_size", 128)
        size = [size, size] if isinstance(size, int) else size
        norm = ckpt.get("normalization") or IMAGENET_NORMALIZATION
        return cls(image_size=(int(size[0]), int(size[1])),
                   grayscale=bool(ckpt.get("grayscale", data.get("grayscale", False))),
                   resize=str(ckpt.get("resize") or data.get("resize", "squash")),
                   mean=tuple(float(v) for v in norm["mean"]), std=tuple(float(v) for v in norm["std"]),
                   weights_interpolation=str(norm.get("interpolation", "bilinear")),
                   tta=str(model.get("tta", "none")))

    def to_json(self) -> dict:
        """The `preprocessing` object of an export's description (ONNX sidecar, config.json)."""
        out = {"image_size": list(self.image_size), "grayscale": self.grayscale,
               "color_mode": "L" if self.grayscale else "RGB", "resize": self.resize,
               "interpolation": RESIZE_INTERPOLATION, "weights_interpolation": self.weights_interpolation,
               "mean": list(self.mean), "std": list(self.std),
               "input": "uint8 [batch, channels, height, width], values 0-255", "input_kind": self.input}
        if self.face_template:
            out.update(face_frame=list(self.face_frame or ()), face_template=[list(p) for p in self.face_template])
        return out

    @classmethod
    def from_json(cls, pre: Mapping[str, Any], tta: str) -> "Preprocessing":
        """Read to_json's object back (exports written before weights_interpolation existed said it as
        interpolation)."""
        return cls.from_dict({**pre, "tta": tta, "input": pre.get("input_kind", "image"),
                              "weights_interpolation": pre.get("weights_interpolation",
                                                               pre.get("interpolation", "bilinear"))})
