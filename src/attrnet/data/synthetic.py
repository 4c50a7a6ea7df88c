"""Procedural CelebA-like faces with 8 visible binary attributes, written in the official CelebA layout.

Image i is drawn from its own generator ``default_rng([seed, i])``, so the first n images of a larger set with
the same seed and size are byte-identical to a set of n images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from attrnet.atomic import write_text
from attrnet.data.provenance import write_provenance

SYNTHETIC_ATTRIBUTES: list[str] = ["Eyeglasses", "Male", "Smiling", "Wearing_Hat", "Wearing_Necklace",
                                   "Wearing_Necktie", "Wearing_Earrings", "Wearing_Lipstick"]

# Label model: Male first, then every other attribute independently given Male.
P_MALE = 0.42
CONDITIONAL_RATES: dict[str, tuple[float, float]] = {
    #                     P(a|Male)  P(a|not Male)   overall
    "Eyeglasses":        (0.11,      0.04),       # ~0.07
    "Smiling":           (0.48,      0.48),       # 0.48
    "Wearing_Hat":       (0.05,      0.05),       # 0.05
    "Wearing_Necklace":  (0.02,      0.19),       # ~0.12
    "Wearing_Necktie":   (0.15,      0.01),       # ~0.07, P(Male|Necktie) ~0.92
    "Wearing_Earrings":  (0.04,      0.30),       # ~0.19
    "Wearing_Lipstick":  (0.02,      0.79),       # ~0.47, P(Lipstick|Male) 0.02
}

Color = tuple[int, int, int]
SKIN_TONES: list[Color] = [(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 140, 90), (150, 95, 55),
                           (100, 62, 40)]
HAIR_COLORS: list[Color] = [(25, 20, 20), (95, 60, 35), (225, 195, 120), (165, 165, 165), (170, 65, 25)]
HAT_COLORS: list[Color] = [(200, 30, 30), (30, 60, 170), (40, 130, 50), (235, 235, 225), (30, 30, 30),
                           (230, 190, 40), (120, 40, 140), (140, 100, 60)]
TIE_COLORS: list[Color] = [(20, 20, 60), (170, 20, 30), (20, 20, 20), (30, 110, 40), (230, 200, 40),
                           (200, 90, 20), (100, 30, 130), (0, 150, 200)]
FRAME_COLORS: list[Color] = [(15, 15, 15), (60, 35, 20), (20, 25, 80), (210, 175, 60), (215, 215, 225)]
BRIGHT_COLORS: list[Color] = [(255, 215, 0), (250, 250, 250), (200, 200, 215), (0, 220, 255), (255, 80, 200),
                              (60, 230, 90)]
EARRING_COLORS: list[Color] = [(255, 215, 0), (0, 230, 255), (255, 60, 200), (60, 240, 90), (40, 60, 255),
                               (255, 120, 0)]
LIPSTICK_COLORS: list[Color] = [(225, 15, 50), (240, 40, 130), (255, 60, 90), (205, 0, 95)]
EYE_COLORS: list[Color] = [(60, 40, 25), (40, 90, 150), (60, 110, 60), (20, 20, 20)]
PARTITION_FILE, ATTR_FILE, IMAGE_DIR = "list_eval_partition.txt", "list_attr_celeba.txt", "img_align_celeba"


def expected_rates() -> dict[str, float]:
    """Overall positive rate of each attribute implied by the label model."""
    rates = {name: P_MALE * pm + (1 - P_MALE) * pf for name, (pm, pf) in CONDITIONAL_RATES.items()}
    rates["Male"] = P_MALE
    return {name: rates[name] for name in SYNTHETIC_ATTRIBUTES}


def draw_attributes(rng: np.random.Generator) -> dict[str, bool]:
    """Draw one image's labels (always the same number of draws from rng)."""
    male = bool(rng.random() < P_MALE)
    u = rng.random(len(CONDITIONAL_RATES))
    attrs = {name: bool(x < (pm if male else pf)) for (name, (pm, pf)), x in zip(CONDITIONAL_RATES.items(), u)}
    attrs["Male"] = male
    return {name: attrs[name] for name in SYNTHETIC_ATTRIBUTES}


@dataclass(frozen=True)
class FaceParams:
    """Every nuisance value of one image; render_face is a pure function of these and the labels."""

    dx: float  # face shift, fraction of the width
    dy: float  # face shift, fraction of the height
    scale: float
    skin: Color
    hair: Color
    eye: Color
    clothing: Color
    bg_top: Color
    bg_bottom: Color
    hat: Color
    tie: Color
    frame: Color
    necklace: Color
    earring: Color
    lipstick: Color
    brightness: float
    noise_sigma: float
    noise_seed: int


def _dist(a: Color, b: Color) -> int:
    return sum(abs(int(x) - int(y)) for x, y in zip(a, b))


def _luma_gap(a: Color, b: Color) -> float:
    return abs((0.3 * a[0] + 0.59 * a[1] + 0.11 * a[2]) - (0.3 * b[0] + 0.59 * b[1] + 0.11 * b[2]))


def _pick(rng: np.random.Generator, palette: list[Color], avoid: tuple[Color, ...], min_dist: float = 150,
          metric=_dist) -> Color:
    """A random palette colour at least min_dist (by metric, L1 by default) from every colour in avoid, if any."""
    order = rng.permutation(len(palette))
    for k in order:
        if all(metric(palette[k], c) >= min_dist for c in avoid):
            return palette[k]
    return palette[order[0]]


def _jitter(rng: np.random.Generator, c: Color, amount: int) -> Color:
    return tuple(int(v) for v in np.clip(np.asarray(c) + rng.integers(-amount, amount + 1, 3), 0, 255))


def _far_random(rng: np.random.Generator, avoid: tuple[Color, ...], min_dist: int = 150) -> Color:
    """A random colour far from avoid (first of 8 candidates that qualifies; fixed number of draws)."""
    cands = [tuple(int(v) for v in c) for c in rng.integers(0, 256, (8, 3))]
    return next((c for c in cands if all(_dist(c, a) >= min_dist for a in avoid)), cands[0])


def draw_face_params(rng: np.random.Generator) -> FaceParams:
    """Draw the nuisance values of one image (always the same number of draws from rng)."""
    skin = _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 12)
    hair = _jitter(rng, HAIR_COLORS[rng.integers(len(HAIR_COLORS))], 10)
    bg_top = _far_random(rng, (hair, skin), 130)
    bg_bottom = _jitter(rng, bg_top, 70)
    if rng.random() < 0.5:  # plain background
        bg_bottom = bg_top
    clothing = _far_random(rng, (hair, skin), 130)
    return FaceParams(
        dx=float(rng.uniform(-0.06, 0.06)), dy=float(rng.uniform(-0.04, 0.04)), scale=float(rng.uniform(0.9, 1.1)),
        skin=skin, hair=hair, eye=EYE_COLORS[rng.integers(len(EYE_COLORS))], clothing=clothing,
        bg_top=bg_top, bg_bottom=bg_bottom,
        hat=_pick(rng, HAT_COLORS, (hair, bg_top), 120), tie=_pick(rng, TIE_COLORS, (clothing,), 200),
        frame=_pick(rng, FRAME_COLORS, (skin,), 90, _luma_gap),
        necklace=_pick(rng, BRIGHT_COLORS, (skin, clothing), 180),
        earring=_pick(rng, EARRING_COLORS, (skin, hair), 200),
        lipstick=LIPSTICK_COLORS[rng.integers(len(LIPSTICK_COLORS))],
        brightness=float(rng.uniform(0.9, 1.1)), noise_sigma=float(rng.uniform(2.0, 7.0)),
        noise_seed=int(rng.integers(2**31)))


def _shade(c: Color, f: float, toward: Color = (0, 0, 0)) -> Color:
    """Mix c with `toward`: f = 0 keeps c, f = 1 gives `toward`."""
    return tuple(int(round(x * (1 - f) + t * f)) for x, t in zip(c, toward))


def render_face(params: FaceParams, attrs: dict[str, bool], size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Draw one face at twice `size` (width, height), downsample with LANCZOS, add brightness and noise."""
    w, h = size
    W, H = 2 * w, 2 * h
    rows = np.linspace(0.0, 1.0, H)[:, None, None]
    bg = (1 - rows) * np.asarray(params.bg_top) + rows * np.asarray(params.bg_bottom)
    img = Image.fromarray(np.broadcast_to(bg, (H, W, 3)).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    s, k, p = min(W, H), params.scale, params
    male = attrs["Male"]
    cx, cy = W / 2 + p.dx * W, H * 0.44 + p.dy * H
    a, b = 0.19 * s * k * (1.06 if male else 1.0), 0.25 * s * k
    line = max(2, round(0.13 * a))  # stroke width of frames, tie outline etc.
    if not male:  # long hair behind head and shoulders
        d.ellipse((cx - 1.3 * a, cy - 1.17 * b, cx + 1.3 * a, cy + 0.6 * b), fill=p.hair)
        d.rectangle((cx - 1.3 * a, cy - 0.1 * b, cx + 1.3 * a, cy + 1.45 * b), fill=p.hair)
    d.ellipse((cx - 2.4 * a, cy + 1.25 * b, cx + 2.4 * a, cy + 1.25 * b + 3.2 * a), fill=p.clothing)
    d.rectangle((cx - 0.42 * a, cy + 0.5 * b, cx + 0.42 * a, cy + 1.4 * b), fill=_shade(p.skin, 0.12))
    if attrs["Wearing_Necktie"]:
        top = cy + 1.22 * b
        for sgn in (-1, 1):  # white collar wings
            d.polygon([(cx, top + 0.22 * b), (cx + sgn * 0.55 * a, top - 0.05 * b),
                       (cx + sgn * 0.6 * a, top + 0.25 * b)], fill=(245, 245, 245))
        d.polygon([(cx - 0.16 * a, top + 0.12 * b), (cx + 0.16 * a, top + 0.12 * b), (cx + 0.1 * a, top + 0.3 * b),
                   (cx - 0.1 * a, top + 0.3 * b)], fill=p.tie)  # knot
        d.polygon([(cx - 0.1 * a, top + 0.3 * b), (cx + 0.1 * a, top + 0.3 * b), (cx + 0.26 * a, H + 2),
                   (cx - 0.26 * a, H + 2)], fill=p.tie)
    if not male:  # strands falling over the shoulders on both sides
        for sgn in (-1, 1):
            x0, x1 = cx + sgn * 0.5 * a, cx + sgn * 1.3 * a
            d.polygon([(x0, cy), (x1, cy), (cx + sgn * 1.45 * a, cy + 1.65 * b), (cx + sgn * 0.55 * a, cy + 1.6 * b)],
                      fill=p.hair)
    if attrs["Wearing_Necklace"]:
        r = max(2.0, 0.09 * a)
        for t in np.linspace(-1.0, 1.0, 9):
            x, y = cx + t * 0.55 * a, cy + 1.0 * b + (1 - t * t) * 0.32 * b
            d.ellipse((x - r, y - r, x + r, y + r), fill=p.necklace, outline=_shade(p.necklace, 0.4))
    for sgn in (-1, 1):  # ears
        d.ellipse((cx + sgn * a - 0.13 * a, cy - 0.15 * b, cx + sgn * a + 0.13 * a, cy + 0.2 * b), fill=p.skin)
    if male:  # short hair cap, then a squarer jaw
        d.ellipse((cx - 1.07 * a, cy - 1.12 * b, cx + 1.07 * a, cy + 0.1 * b), fill=p.hair)
        d.ellipse((cx - a, cy - b, cx + a, cy + 0.7 * b), fill=p.skin)
        d.rounded_rectangle((cx - 0.93 * a, cy - 0.1 * b, cx + 0.93 * a, cy + b), radius=0.35 * a, fill=p.skin)
    else:
        d.ellipse((cx - a, cy - b, cx + a, cy + b), fill=p.skin)
    d.chord((cx - 1.03 * a, cy - 1.1 * b, cx + 1.03 * a, cy - (0.25 if male else 0.35) * b), 180, 360, fill=p.hair)
    ey = cy - 0.1 * b
    brow = _shade(p.hair, 0.35)
    for sgn in (-1, 1):
        ex = cx + sgn * 0.42 * a
        d.line([(ex - 0.2 * a, ey - 0.2 * b), (ex + 0.2 * a, ey - 0.2 * b)], fill=brow,
               width=max(2, round((0.12 if male else 0.06) * a)))
        d.ellipse((ex - 0.17 * a, ey - 0.08 * b, ex + 0.17 * a, ey + 0.08 * b), fill=(245, 245, 245))
        d.ellipse((ex - 0.07 * a, ey - 0.07 * b, ex + 0.07 * a, ey + 0.07 * b), fill=p.eye)
    d.polygon([(cx, cy - 0.02 * b), (cx - 0.12 * a, cy + 0.27 * b), (cx + 0.08 * a, cy + 0.27 * b)],
              fill=_shade(p.skin, 0.22))
    lip = p.lipstick if attrs["Wearing_Lipstick"] else _shade(p.skin, 0.3, (130, 70, 60))
    my, mw = cy + 0.5 * b, 0.42 * a
    if attrs["Smiling"]:  # open smile: lip-coloured bowl, dark mouth, white teeth
        d.chord((cx - mw, my - 0.32 * b, cx + mw, my + 0.32 * b), 0, 180, fill=lip)
        d.chord((cx - 0.8 * mw, my - 0.23 * b, cx + 0.8 * mw, my + 0.23 * b), 0, 180, fill=(70, 15, 20))
        d.rectangle((cx - 0.72 * mw, my, cx + 0.72 * mw, my + 0.1 * b), fill=(250, 250, 250))
        d.line([(cx - mw, my), (cx + mw, my)], fill=lip, width=max(2, round(0.07 * b)))
    else:  # closed lips with a flat dark line
        d.ellipse((cx - 0.85 * mw, my - 0.1 * b, cx + 0.85 * mw, my + 0.1 * b), fill=lip)
        d.line([(cx - 0.85 * mw, my), (cx + 0.85 * mw, my)], fill=_shade(lip, 0.6), width=max(1, round(0.02 * b)))
    if attrs["Eyeglasses"]:
        for sgn in (-1, 1):
            ex = cx + sgn * 0.42 * a
            d.rectangle((ex - 0.28 * a, ey - 0.16 * b, ex + 0.28 * a, ey + 0.16 * b), outline=p.frame, width=line)
            d.line([(cx + sgn * 0.7 * a, ey - 0.05 * b), (cx + sgn * a, ey - 0.1 * b)], fill=p.frame, width=line)
        d.line([(cx - 0.14 * a, ey - 0.03 * b), (cx + 0.14 * a, ey - 0.03 * b)], fill=p.frame, width=line)
    if attrs["Wearing_Hat"]:
        band = _shade(p.hat, 0.5, (0, 0, 0) if sum(p.hat) > 300 else (255, 255, 255))
        d.rounded_rectangle((cx - 0.82 * a, cy - 1.45 * b, cx + 0.82 * a, cy - 0.6 * b), radius=0.3 * a, fill=p.hat)
        d.rectangle((cx - 0.82 * a, cy - 0.82 * b, cx + 0.82 * a, cy - 0.66 * b), fill=band)
        d.ellipse((cx - 1.4 * a, cy - 0.76 * b, cx + 1.4 * a, cy - 0.5 * b), fill=p.hat)
    if attrs["Wearing_Earrings"]:
        r = 0.16 * a
        for sgn in (-1, 1):
            x, y = cx + sgn * 1.04 * a, cy + 0.3 * b
            d.ellipse((x - r, y - r, x + r, y + r), fill=p.earring, outline=_shade(p.earring, 0.6), width=1)
    arr = np.asarray(img.resize((w, h), Image.LANCZOS), dtype=np.float32) * p.brightness
    arr += np.random.default_rng(p.noise_seed).normal(0.0, p.noise_sigma, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def _split_offset(seed: int) -> float:
    """A per-seed offset for the split sequence (a stream apart from every image's generator)."""
    return float(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).random())


def write_synthetic_celeba(out: str | Path, n: int, seed: int = 0, size: tuple[int, int] = (64, 64),
                           val_fraction: float = 0.1, test_fraction: float = 0.1) -> Path:
    """Write n synthetic faces in the official CelebA layout under out and return out.

    The split uses the golden-ratio sequence frac(offset + i * phi) (offset drawn from the seed), so every prefix
    of the images has very nearly the requested fractions. The label files are written last, each atomically:
    list_attr_celeba.txt appears only once everything else is complete.
    """
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be >= 0, got n={n}, seed={seed}")
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction <= 1):
        raise ValueError(f"bad split fractions val={val_fraction}, test={test_fraction}")
    w, h = int(size[0]), int(size[1])
    if w < 8 or h < 8:
        raise ValueError(f"size must be at least 8x8, got {size}")
    out = Path(out)
    img_dir = out / IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    for name in (ATTR_FILE, PARTITION_FILE):  # an old finished marker must not outlive a rewrite
        (out / name).unlink(missing_ok=True)
    offset, phi = _split_offset(seed), (np.sqrt(5.0) - 1) / 2
    attr_lines, part_lines = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        attrs = draw_attributes(rng)
        params = draw_face_params(rng)
        fname = f"{i + 1:06d}.jpg"
        render_face(params, attrs, (w, h)).save(img_dir / fname, "JPEG", quality=95)
        u = (offset + i * phi) % 1.0
        split = 0 if u < 1 - val_fraction - test_fraction else (1 if u < 1 - test_fraction else 2)
        attr_lines.append(fname + " " + " ".join("%2d" % (1 if attrs[a] else -1) for a in SYNTHETIC_ATTRIBUTES))
        part_lines.append(f"{fname} {split}")
    write_text(out / PARTITION_FILE, "".join(line + "\n" for line in part_lines))
    write_provenance(out, {"dataset": "synthetic", "input": "image",
                           "description": "synthetic cartoon faces drawn by attrnet, not photographs of people",
                           "made_by": f"attrnet data synth --n {n} --seed {seed} --size {w}"})
    header = f"{n}\n{' '.join(SYNTHETIC_ATTRIBUTES)}\n"  # last: the label file says the folder is complete
    write_text(out / ATTR_FILE, header + "".join(line + "\n" for line in attr_lines))
    return out
