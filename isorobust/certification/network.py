"""The network as a flat list of layers: what a bound can walk through, and the margins as one linear layer."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid)
FRONT_LAYERS = (nn.Conv2d, nn.MaxPool2d)  # bounded by IBP only
SUPPORTED = (nn.Linear, nn.Flatten, *ACTIVATIONS, *FRONT_LAYERS)


def certifiable_layers(model: nn.Module) -> list[nn.Module]:
    """The layers ``model.forward`` applies, in order, as a flat list of the supported types.

    Raises ValueError naming the first layer without a bound (e.g. GELU) or a model of unknown
    structure. The project's models are unrolled from their definitions (``MLP``, ``CNN`` = conv
    front end + MLP, ``HierarchicalMLP``: the chain to its last read-out, i.e. the classes);
    ``nn.Sequential`` is taken as it is (tests build small networks that way).
    """
    from isorobust.models import CNN, MLP, HierarchicalMLP

    if isinstance(model, MLP):
        dense = [model.input_layer, model.act]
        for layer in model.hidden:
            dense += [layer, model.act]
        dense.append(model.readout)
        front = list(model.conv) if isinstance(model, CNN) else []
        layers = [*front, nn.Flatten(), *dense]
    elif isinstance(model, HierarchicalMLP):
        layers = [nn.Flatten(), model.input_layer, model.act]
        for block in model.blocks:
            for layer in block:
                layers += [layer, model.act]
        layers.append(model.readouts[-1])
    elif isinstance(model, nn.Sequential):
        layers = []
        for layer in model:
            layers += certifiable_layers(layer) if isinstance(layer, nn.Sequential) else [layer]
    else:
        raise ValueError(f"cannot certify a {type(model).__name__}: its layers are unknown here "
                         "(MLP, CNN, HierarchicalMLP or nn.Sequential)")
    for layer in layers:
        if not isinstance(layer, SUPPORTED):
            names = "Linear, Conv2d, Flatten, ReLU, Tanh, Sigmoid, MaxPool2d"
            raise ValueError(f"layer {type(layer).__name__} has no bound here (supported: {names})")
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            raise ValueError(f"Conv2d with padding_mode={layer.padding_mode!r} has no bound here (zeros only)")
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise ValueError("the network must end in a linear layer (the logits) to be certified")
    return layers


def split_front(layers: Sequence[nn.Module]) -> tuple[list[nn.Module], list[nn.Module]]:
    """(IBP front, CROWN tail): the front runs through the last conv/max-pool layer and any layer
    after it up to the next linear layer, so the tail is Linear (activation Linear)*."""
    start = max((i + 1 for i, layer in enumerate(layers) if isinstance(layer, FRONT_LAYERS)), default=0)
    while not isinstance(layers[start], nn.Linear):
        start += 1
    return list(layers[:start]), list(layers[start:])


def dense_chain(tail: Sequence[nn.Module]) -> tuple[list[nn.Linear], list[nn.Module | None]]:
    """Affine layers and the activation after each but the last (None: two linear layers in a row)."""
    affines: list[nn.Linear] = []
    acts: list[nn.Module | None] = []
    for layer in tail:
        if isinstance(layer, nn.Flatten):
            continue  # the tail works on flattened vectors already
        if isinstance(layer, nn.Linear):
            if len(acts) < len(affines):
                acts.append(None)
            affines.append(layer)
        elif len(acts) < len(affines):
            acts.append(layer)
        else:
            raise ValueError(f"two activations in a row ({type(layer).__name__}) have no bound here")
    return affines, acts


def method_label(layers: Sequence[nn.Module], method: str) -> str:
    """What was computed: the method, said to start after an IBP front end where there are convolutions."""
    if method != "ibp" and any(isinstance(layer, FRONT_LAYERS) for layer in layers):
        return f"{method} (ibp through conv/max-pool)"
    return method


def other_classes(y: Tensor, num_classes: int) -> Tensor:
    """(B, K−1): for each sample the classes j ≠ y in increasing order."""
    classes = torch.arange(num_classes, device=y.device).expand(y.shape[0], num_classes)
    return classes[classes != y[:, None]].view(y.shape[0], num_classes - 1)


def specification(final: nn.Linear, y: Tensor) -> tuple[Tensor, Tensor]:
    """C·W and C·b of the last layer, C's rows e_y − e_j (j ≠ y): the margins as one linear layer."""
    others = other_classes(y, final.out_features)
    weight = final.weight[y][:, None, :] - final.weight[others]  # (B, K−1, n)
    bias = final.bias[y][:, None] - final.bias[others] if final.bias is not None else weight.new_zeros(others.shape)
    return weight, bias


