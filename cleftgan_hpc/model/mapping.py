"""Mapping networks: z (+ class) -> w, with w_avg tracking and truncation."""

from __future__ import annotations

import torch
from torch import nn

from .layers import FullyConnectedLayer, normalize_2nd_moment


class MappingNetwork(nn.Module):
    """StyleGAN2/3 mapping: normalise z (and the class embedding), MLP, broadcast to num_ws, truncate.

    With the defaults it is StyleGAN3's; StyleGAN2's adds `embed_features`, `layer_features` and
    `activation` (its defaults build the same layers) and uses 8 layers.
    """

    def __init__(
        self,
        z_dim: int,  # latent width (0: none)
        c_dim: int,  # conditioning label width (0: unconditional)
        w_dim: int,  # intermediate latent width
        num_ws: int,  # number of w vectors to broadcast to
        num_layers: int = 2,  # MLP depth
        lr_multiplier: float = 0.01,  # learning-rate multiplier of the MLP
        w_avg_beta: float = 0.998,  # decay of the running average of w
        embed_features: int | None = None,  # class embedding width (None: w_dim); StyleGAN2 only
        layer_features: int | None = None,  # hidden width (None: w_dim); StyleGAN2 only
        activation: str = "lrelu",  # hidden activation ("lrelu" or "linear"); StyleGAN2 only
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        self.embed = FullyConnectedLayer(c_dim, embed_features) if c_dim > 0 else None
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        for idx in range(num_layers):
            fc = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", fc)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,  # [N, z_dim]
        c: torch.Tensor | None,  # [N, c_dim] or None
        truncation_psi: float = 1.0,  # 1: no truncation; 0: all w = w_avg
        truncation_cutoff: int | None = None,  # truncate only the first `cutoff` ws
        update_emas: bool = False,  # track w_avg (training)
    ) -> torch.Tensor:  # [N, num_ws, w_dim]
        x = None
        if self.z_dim > 0:
            assert z is not None and z.shape[1] == self.z_dim, f"z must be [N, {self.z_dim}]"
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"this network is conditional: c must be [N, {self.c_dim}]")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        assert x is not None
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class ConditionMapping(nn.Module):
    """StyleGAN2 mapping used by a conditional discriminator: class label -> projection vector."""

    def __init__(
        self,
        c_dim: int,  # conditioning label width
        cmap_dim: int,  # output (projection) width
        num_layers: int = 8,  # MLP depth
        embed_features: int | None = None,  # embedding width (default cmap_dim)
        layer_features: int | None = None,  # hidden width (default cmap_dim)
        activation: str = "lrelu",  # hidden activation
        lr_multiplier: float = 0.01,  # learning-rate multiplier of the MLP
    ) -> None:
        super().__init__()
        embed_features = cmap_dim if embed_features is None else embed_features
        layer_features = cmap_dim if layer_features is None else layer_features
        self.c_dim, self.cmap_dim, self.num_layers = c_dim, cmap_dim, num_layers
        self.embed = FullyConnectedLayer(c_dim, embed_features)
        features = [embed_features] + [layer_features] * (num_layers - 1) + [cmap_dim]
        for idx in range(num_layers):
            fc = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", fc)

    def forward(self, c: torch.Tensor) -> torch.Tensor:  # [N, c_dim] -> [N, cmap_dim]
        x = normalize_2nd_moment(self.embed(c.to(torch.float32)))
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return x
