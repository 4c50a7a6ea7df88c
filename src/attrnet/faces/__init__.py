"""Faces in ordinary photos, for models trained on aligned faces (CelebA): find them with their 5 landmarks
(detect: MTCNN, the faces extra), align each to the template the model's training faces were aligned to
(align: a 5-point similarity transform and a warp into the template's frame; template: CelebA's)."""
