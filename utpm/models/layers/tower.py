"""The two fully connected layers that turn the fused (and crossed) vector into u, and activations."""

from __future__ import annotations

from torch import Tensor, nn

ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "selu": nn.SELU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (the names of `utpm.models.presets.ACTIVATIONS`)."""
    try:
        return ACTIVATION_MODULES[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(ACTIVATION_MODULES)}") from None


class Tower(nn.Module):
    """u = W_2 act(W_1 z + b_1) + b_2: (B, in_dim) -> (B, out_dim).

    The output is left linear: u only enters inner products with tag embeddings, and a final
    relu would forbid negative preferences.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, activation: str = "relu") -> None:
        super().__init__()
        for key, value in (("in_dim", in_dim), ("hidden", hidden), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"tower {key} must be >= 1, got {value}")
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), make_activation(activation), nn.Linear(hidden, out_dim))
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, z: Tensor) -> Tensor:
        """z: (B, in_dim) -> u: (B, out_dim)."""
        return self.net(z)
