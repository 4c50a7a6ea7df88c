"""Semantic attribute groups: the paper's default groupings and their validation.

A grouping is {group: [attribute, ...]} in which every attribute of a dataset lies in exactly
one group (the latent-task model of Abdulnabi et al. 2015 shares within groups).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from attrnet.errors import AttrnetError

# CelebA's 40 attributes, by face region (as in the paper's face grouping).
CELEBA_GROUPS: dict[str, list[str]] = {
    "hair": ["Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair",
             "Receding_Hairline", "Straight_Hair", "Wavy_Hair"],
    "eyes": ["Arched_Eyebrows", "Bags_Under_Eyes", "Bushy_Eyebrows", "Narrow_Eyes"],
    "nose": ["Big_Nose", "Pointy_Nose"],
    "mouth": ["Big_Lips", "Mouth_Slightly_Open", "Smiling", "Wearing_Lipstick"],
    "face_shape": ["Chubby", "Double_Chin", "High_Cheekbones", "Oval_Face", "Rosy_Cheeks"],
    "facial_hair": ["5_o_Clock_Shadow", "Goatee", "Mustache", "No_Beard", "Sideburns"],
    "accessories": ["Eyeglasses", "Wearing_Earrings", "Wearing_Hat", "Wearing_Necklace",
                    "Wearing_Necktie"],
    "global": ["Attractive", "Blurry", "Heavy_Makeup", "Male", "Pale_Skin", "Young"],
}

# The 36 names produced by attrnet.data.clothing.read_clothing.
CLOTHING_GROUPS: dict[str, list[str]] = {
    "colour": ["red", "yellow", "green", "cyan", "blue", "purple", "brown", "white", "gray",
               "black", "many_colors"],
    "pattern": ["pattern_solid", "pattern_floral", "pattern_spot", "pattern_graphics",
                "pattern_plaid", "pattern_stripe"],
    "parts": ["necktie", "collar", "placket", "scarf", "sleeve_none", "sleeve_short",
              "sleeve_long", "neckline_v", "neckline_round", "neckline_other"],
    "global": ["female", "high_skin_exposure", "category_shirt", "category_sweater",
               "category_tshirt", "category_outerwear", "category_suit", "category_tank_top",
               "category_dress"],
}

# The 85 predicates of Animals with Attributes 2 (spelled as in its predicates.txt).
AWA2_GROUPS: dict[str, list[str]] = {
    "colour": ["black", "white", "blue", "brown", "gray", "orange", "red", "yellow"],
    "texture": ["patches", "spots", "stripes", "furry", "hairless", "toughskin"],
    "shape": ["big", "small", "bulbous", "lean"],
    "body_parts": ["flippers", "hands", "hooves", "pads", "paws", "longleg", "longneck", "tail",
                   "chewteeth", "meatteeth", "buckteeth", "strainteeth", "horns", "claws", "tusks"],
    "behaviour": ["smelly", "flys", "hops", "swims", "tunnels", "walks", "fast", "slow", "strong",
                  "weak", "muscle", "bipedal", "quadrapedal", "active", "inactive", "nocturnal",
                  "hibernate", "agility"],
    "diet": ["fish", "meat", "plankton", "vegetation", "insects", "forager", "grazer", "hunter",
             "scavenger", "skimmer", "stalker"],
    "habitat": ["newworld", "oldworld", "arctic", "coastal", "desert", "bush", "plains", "forest",
                "fields", "jungle", "mountains", "ocean", "ground", "water", "tree", "cave"],
    "character": ["fierce", "timid", "smart", "group", "solitary", "nestspot", "domestic"],
}

PRESET_GROUPS: dict[str, dict[str, list[str]]] = {
    "celeba": CELEBA_GROUPS, "clothing": CLOTHING_GROUPS, "awa2": AWA2_GROUPS,
}

OTHER = "other"


def _short(names: Sequence[str], limit: int = 100) -> str:
    """Comma-separated names, cut after `limit` with a count of the rest."""
    names = list(names)
    text = ", ".join(names[:limit])
    return text + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def validate_groups(groups: Mapping[str, Sequence[str]], attributes: Sequence[str],
                    allow_other: bool = False) -> dict[str, list[str]]:
    """Check that every attribute lies in exactly one group; return the grouping normalised.

    Groups keep their given order; within a group, attributes follow the order of `attributes`.
    Attributes in no group are an error, or are collected into an `other` group when
    allow_other=True.
    """
    attributes = list(attributes)
    if not isinstance(groups, Mapping):
        raise AttrnetError(f"attribute groups must be a mapping {{group: [attribute, ...]}}, "
                           f"got {type(groups).__name__}")
    position = {a: i for i, a in enumerate(attributes)}
    owner: dict[str, str] = {}
    unknown: list[str] = []
    duplicates: list[str] = []
    out: dict[str, list[str]] = {}
    for name, members in groups.items():
        if not isinstance(name, str) or not name:
            raise AttrnetError(f"attribute group names must be non-empty strings, got {name!r}")
        if isinstance(members, str) or not isinstance(members, Sequence):
            raise AttrnetError(f"attribute group '{name}' must be a list of attribute names, "
                               f"got {members!r}")
        if not members:
            raise AttrnetError(f"attribute group '{name}' is empty; give it attributes or remove it")
        for a in members:
            if a not in position:
                unknown.append(str(a))
            elif a in owner:
                duplicates.append(f"{a} (in '{owner[a]}' and '{name}')" if owner[a] != name
                                  else f"{a} (twice in '{name}')")
            else:
                owner[a] = name
        out[name] = sorted({a for a in members if a in position}, key=position.__getitem__)
    if unknown:
        raise AttrnetError(f"attribute group(s) name unknown attribute(s) {_short(unknown)}; "
                           f"valid names: {_short(attributes)}")
    if duplicates:
        raise AttrnetError(f"attribute(s) in more than one group: {_short(duplicates)}; "
                           f"put each attribute in exactly one group")
    missing = [a for a in attributes if a not in owner]
    if missing:
        if not allow_other:
            raise AttrnetError(f"attribute(s) {_short(missing)} are in no group; add them to a "
                               f"group (or allow an '{OTHER}' group)")
        out[OTHER] = sorted(set(out.get(OTHER, [])) | set(missing), key=position.__getitem__)
    return out


def group_index(groups: Mapping[str, Sequence[str]], attributes: Sequence[str]) -> list[list[int]]:
    """Column indices into `attributes` of each group's members, in group order."""
    checked = validate_groups(groups, attributes)
    position = {a: i for i, a in enumerate(attributes)}
    return [[position[a] for a in members] for members in checked.values()]


def restrict_groups(groups: Mapping[str, Sequence[str]], attributes: Sequence[str],
                    allow_other: bool = True) -> dict[str, list[str]]:
    """A preset grouping cut down to the attributes at hand (absent names and empty groups dropped).

    Attributes the preset does not cover go to an `other` group (or are an error when
    allow_other=False).
    """
    present = set(attributes)
    kept = {g: [a for a in members if a in present] for g, members in groups.items()}
    kept = {g: m for g, m in kept.items() if m}
    if not kept:
        if not allow_other:
            raise AttrnetError(f"the attribute grouping shares no name with the attributes "
                               f"{_short(list(attributes))}")
        return {OTHER: list(attributes)} if attributes else {}
    return validate_groups(kept, attributes, allow_other=allow_other)


def _drop_unselected(spec: Mapping, attributes: Sequence[str], known: Sequence[str]) -> dict:
    """Members the data set has but the selection left out removed, and groups left empty by that."""
    left_out = set(known) - set(attributes)
    out = {}
    for name, members in spec.items():
        if isinstance(members, (list, tuple)) and members:
            members = [a for a in members if a not in left_out]
            if not members:
                continue
        out[name] = members
    return out


def resolve_groups(spec: Any, attributes: Sequence[str], allow_other: bool = False,
                   known: Sequence[str] | None = None) -> dict[str, list[str]] | None:
    """Turn a config's `groups` value into a validated grouping of `attributes`.

    None gives None (no grouping). A preset name (celeba | clothing | awa2) is cut down to the
    attributes at hand, so it also works after an attribute selection. A dict is validated as given;
    with `known` (every attribute of the data set, before a selection) its names that the data set has
    but the selection left out are dropped first, so one grouping serves every subset, while a name the
    data set does not have is still an error.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key not in PRESET_GROUPS:
            raise AttrnetError(f"unknown attribute-group preset '{spec}'; valid presets: "
                               f"{', '.join(PRESET_GROUPS)} (or give a mapping {{group: [names]}})")
        preset = PRESET_GROUPS[key]
        if not set(attributes) & {a for m in preset.values() for a in m}:
            raise AttrnetError(f"attribute-group preset '{spec}' names none of the attributes "
                               f"{_short(list(attributes), 10)}; is it the right dataset's preset?")
        return restrict_groups(preset, attributes, allow_other=allow_other)
    if isinstance(spec, Mapping):
        if known is not None:
            spec = _drop_unselected(spec, attributes, known)
        return validate_groups(spec, attributes, allow_other=allow_other)
    raise AttrnetError(f"groups must be null, a preset name ({', '.join(PRESET_GROUPS)}) or a "
                       f"mapping {{group: [attribute, ...]}}, got {type(spec).__name__}")
