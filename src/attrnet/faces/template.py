"""CelebA's aligned frame and the face template attrnet aligns photos to for models trained on it.

CelebA's aligned-and-cropped images are 178 x 218 (width x height), every face placed alike. The template is
the mean of the detector's (MTCNN's) 5 landmarks over the aligned celeba-8k images resized to that frame:
benchmarks/face_template.py measured it (docs/results.md, "Faces in photos", has the command, the spread of each
landmark and how many images had a face).
"""

from __future__ import annotations

CELEBA_FRAME = (218, 178)  # (height, width) of CelebA's aligned images
# (x, y) in that frame of the left eye, right eye, nose, left and right mouth corners (as seen in the image)
CELEBA_TEMPLATE = ((69.97, 112.29), (109.24, 112.16), (89.18, 136.51), (72.09, 154.05), (107.07, 153.86))
