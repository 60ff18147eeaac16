"""Edge frames: a rotation ``R(u)`` with ``R(u) @ u = +y`` (the polar axis).

Two charts, so that no formula divides by anything smaller than 1:

* ``u_y >= 0``: the minimal rotation taking ``u`` to ``+y``
  ``R = c I + [w]_x + w w^T / (1 + c)`` with ``w = u x y``, ``c = u_y``;
* ``u_y < 0``: first the half turn about ``z`` (``F = diag(-1, -1, 1)``), which
  takes ``u`` to the upper hemisphere, then the minimal rotation of ``F u``.

The roll about the edge is therefore discontinuous across the equator
``u_y = 0``, but every op that consumes a frame is exactly equivariant to that
roll, so outputs and their gradients are continuous (docs/math.md).
"""
from __future__ import annotations

import torch


def edge_frames(u: torch.Tensor) -> torch.Tensor:
    """Frame rotations of unit vectors.

    Args:
        u: ``[E, 3]`` unit edge directions.
    Returns:
        ``[E, 3, 3]`` rotation matrices ``R`` with ``R @ u = (0, 1, 0)``.
    """
    lower = u[:, 1] < 0
    sign = torch.where(lower, -1.0, 1.0).to(u.dtype)
    # chart coordinates: F u for the lower hemisphere, u otherwise
    a, c, b = u[:, 0] * sign, u[:, 1] * sign, u[:, 2]
    inv = 1.0 / (1.0 + c)
    r = torch.stack(
        [
            torch.stack([c + b * b * inv, -a, -a * b * inv], -1),
            torch.stack([a, c, b], -1),
            torch.stack([-a * b * inv, -b, c + a * a * inv], -1),
        ],
        dim=-2,
    )
    # R = R_min(F u) F: F flips the sign of the first two columns
    col = torch.stack([sign, sign, torch.ones_like(sign)], -1)
    return r * col[:, None, :]
