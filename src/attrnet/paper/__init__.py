"""Abdulnabi et al., "Multi-task CNN Model for Attribute Prediction" (IEEE TMM 2015), as an application of attrnet.

The paper's mathematics lives below, in attrnet.mtl (proximal operators and the alternating solver: plain
tensors) and attrnet.models.latent (the latent-task layer w_m = L s^m). This package is what uses them on a
data set: CNN features from one shared network or one network per attribute (features, cnns), the solver's
pipeline into a run folder (pipeline: `attrnet train` with mtl.enabled), and the reproduction of the paper's
Clothing table (table, reproduce: `attrnet paper-table`).
"""
