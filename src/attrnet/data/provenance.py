"""What a data folder is, when attrnet made it: `attrnet-data.json` beside its labels.

attrnet writes it into the folders it makes (`attrnet data synth`: synthetic faces; `attrnet data align`: faces
found in photos and aligned to a template), and the readers put it into AttributeTable.extra["provenance"], so a
trained model can say what it was trained on (its checkpoint, export description and model card) and how its
input must be prepared (an aligned face or a whole image). A folder without the file is what its format says
(CelebA's aligned set, Clothing Attributes, ...).

Keys: dataset (a short kind: "synthetic", "aligned_faces"), description (one sentence for a card), made_by (the
command), input ("image" | "aligned_face"), and for aligned faces face_frame [height, width] and face_template
(the 5 landmarks' (x, y) the faces were aligned to).
"""

from __future__ import annotations

import json
from pathlib import Path

from attrnet import atomic

PROVENANCE_FILE = "attrnet-data.json"


def read_provenance(root: str | Path) -> dict:
    """The folder's attrnet-data.json, or {} (no file, or not one attrnet can read: then it says nothing)."""
    try:
        obj = json.loads((Path(root) / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def write_provenance(root: str | Path, info: dict) -> Path:
    path = Path(root) / PROVENANCE_FILE
    atomic.write_text(path, json.dumps(info, indent=1) + "\n")
    return path
