"""Certified lower bounds on L∞ robust accuracy: IBP, CROWN, α-CROWN and branch and bound.

An attack that fails to break a sample proves nothing: robust accuracy measured by attacks is an
upper bound. A certificate is the other side: a proof that no input in the box

    B(x, ε) = {x' : ‖x' − x‖∞ ≤ ε} ∩ [0, 1]^d

changes the prediction, so certified accuracy is a lower bound and the truth lies between the two.
Every method here bounds every margin  logit[y](x') − logit[j](x'), j ≠ y,  from below over B(x, ε);
a sample is certified when it is classified correctly and every lower bound is > 0.

- **IBP** (Gowal et al. 2018) pushes a box through the network layer by layer: exact for one affine
  layer, monotone activations and max-pooling map the box's corners. Cheap (two forward passes).
- **CROWN** (Zhang et al. 2018) bounds each activation between two lines on its pre-activation
  interval and substitutes them backwards through the network, so a bound is one linear function of
  the input, minimised over the box in closed form. Pre-activation intervals of every layer come
  from CROWN itself ("full CROWN": a backward pass per layer), intersected with IBP's interval of
  the same layer; the final margin bound is the larger of CROWN's and IBP's. All of these are sound,
  so their intersection is, and it is never looser than IBP (CROWN alone can be: a tangent line of
  tanh on a wide interval ends far below the function). Convolutions and max-pooling have no
  relaxation here: the layers up to the last of them are bounded by IBP, and CROWN starts from IBP's
  box of their output (the ``method`` label says so). A back-substitution through the first conv
  layer would carry one 784-wide row per conv neuron (25 088 for ``model=cnn``) per sample.
- **α-CROWN** (Xu et al. 2021, ``alpha_crown.py``) optimises CROWN's lines per sample and margin.
- **Branch and bound** (``bab.py``) splits hidden neurons' intervals where α-CROWN is not enough, and
  ends each image verified, falsified (a checked counterexample) or unknown (its budget spent).

One file per concern: ``network`` (the model as a flat list of layers), ``ibp``, ``relaxations`` (the
lines of each activation), ``crown``, ``alpha_crown``, ``bab``, ``search`` (grid and radius searches over
ε), ``certifier`` (the ``certify`` config group and its result).

The margins are bounded through the specification matrix C (rows e_y − e_j) folded into the last
linear layer, as in CROWN: bounding C·logits directly is tighter than subtracting two logit bounds.
Everything is batched over samples; IBP and CROWN build no autograd graph.

Soundness holds in exact arithmetic. The activation lines are computed in float64 and cast to the
model's dtype outward (each line stays on its side of the function as the real line its stored
coefficients define); the matrix products are not padded (float32 sums of 784 terms carry ~1e-6
relative error), as in the reference implementations.
"""
from .alpha_crown import AlphaOptions, alpha_crown_margin_bounds
from .bab import BabOptions, BabOutcome, branch_and_bound
from .certifier import ATTACK_UPPER_BOUND, CERTIFIED, CERTIFIED_COLUMNS, CERTIFY_METHODS, Certifier, CertifyResult, bracket_note
from .crown import crown_margin_bounds
from .ibp import ibp_layer, ibp_margin_bounds, input_box
from .network import certifiable_layers, method_label
from .relaxations import relaxation, s_shaped_upper_line
from .search import (METHODS, GridSearch, certified_mask, certified_radius, certify_grid, clean_predictions,
                     margin_bounds, min_margin_bounds)

__all__ = [
    "ATTACK_UPPER_BOUND", "AlphaOptions", "BabOptions", "BabOutcome", "CERTIFIED", "CERTIFIED_COLUMNS", "CERTIFY_METHODS", "METHODS",
    "alpha_crown_margin_bounds", "bracket_note", "branch_and_bound", "CertifyResult", "Certifier", "GridSearch", "certifiable_layers",
    "certified_mask", "certified_radius", "certify_grid", "clean_predictions", "crown_margin_bounds", "ibp_layer",
    "ibp_margin_bounds", "input_box", "margin_bounds", "method_label", "min_margin_bounds", "relaxation",
    "s_shaped_upper_line",
]
