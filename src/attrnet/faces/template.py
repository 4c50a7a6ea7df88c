"""CelebA's aligned frame and the face template attrnet aligns photos to for models trained on it.

CelebA's aligned-and-cropped images are 178 x 218 (width x height), every face placed alike. The template is
the mean of the detector's (MTCNN's) 5 landmarks over the aligned celeba-8k images resized to that frame:
benchmarks/face_template.py measured it (docs/results.md, "Faces in photos", has the command, the spread of each
landmark and how many images had a face).
"""

from __future__ import annotations

CELEBA_FRAME = (218, 178)  # (height, width) of CelebA's aligned images
# (x, y) in that frame of the left eye, right eye, nose, left and right mouth corners (as seen in the image)
CELEBA_TEMPLATE = ((70.17, 112.25), (109.15, 112.18), (89.13, 136.24), (72.25, 153.82), (106.80, 153.73))
