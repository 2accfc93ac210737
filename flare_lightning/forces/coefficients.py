"""Integrated forces on a body from surface pressure and wall shear stress, and their
drag and lift coefficients."""

from __future__ import annotations

import torch
from torch import Tensor


def surface_force(
    pressure: Tensor, normals: Tensor, areas: Tensor, wall_shear: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """``F = Σ_i (p_i n_i - τ_i) A_i`` per sample, in float64.

    The normals point into the body (out of the fluid, as OpenFOAM's boundary faces and
    the DrivAerML surfaces), so pressure pushes along them; wall shear stress follows
    OpenFOAM's sign (the stress on the fluid), as in PhysicsNeMo's DrivAerML recipes.

    Args:
        pressure: [B, N] or [B, N, 1] (kinematic, m²/s², or Cp).
        normals: [B, N, 3] unit normals.
        areas: [B, N] or [B, N, 1] cell areas.
        wall_shear: optional [B, N, 3], same units as the pressure.
        mask: [B, N] bool, True on real cells.

    Returns:
        [B, 3] force (per unit density when p is kinematic).
    """
    p = pressure.reshape(normals.shape[:-1]).double()
    a = areas.reshape(normals.shape[:-1]).double()
    traction = p[..., None] * normals.double()
    if wall_shear is not None:
        traction = traction - wall_shear.double()
    if mask is not None:
        a = a * mask.double()
    return (traction * a[..., None]).sum(dim=-2)


def drag_and_lift(
    fields: Tensor, normals: Tensor, areas: Tensor, mask: Tensor | None, dynamic_pressure: float, reference_area: float
) -> Tensor:
    """(Cd, Cl) [B, 2] of surface fields [B, N, C]: channel 0 pressure, channels 1-3 wall shear
    stress when there are four (normals [B, N, 3], areas [B, N, 1], mask [B, N] as in ``surface_force``)."""
    wall_shear = fields[..., 1:4] if fields.shape[-1] >= 4 else None
    force = surface_force(fields[..., 0], normals, areas, wall_shear, mask)
    return torch.stack(force_coefficients(force, dynamic_pressure, reference_area), dim=-1)


def force_coefficients(
    force: Tensor, dynamic_pressure: float, reference_area: float, drag_axis: int = 0, lift_axis: int = 2
) -> tuple[Tensor, Tensor]:
    """(Cd, Cl) = force along the flow (``drag_axis``) and up (``lift_axis``) / (q∞ A_ref); [B] each."""
    scale = dynamic_pressure * reference_area
    return force[..., drag_axis] / scale, force[..., lift_axis] / scale
