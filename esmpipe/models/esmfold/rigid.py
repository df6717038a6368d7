"""Rigid transformations (rotation + translation) that behave like tensors of frames.

A `Rotation` of shape `[*]` wraps either rotation matrices `[*, 3, 3]` or unit
quaternions `[*, 4]` (real part first); a `Rigid` of shape `[*]` pairs one with
translations `[*, 3]`. Both index, unsqueeze and concatenate like tensors over `[*]`,
so code reads like the AlphaFold2 supplement (`T_i o x`, `T_i^-1 o x`).

Precision: geometry is always fp32. Constructors cast their inputs up, points are
cast up before they are transformed, and every product is written as an elementwise
multiply-and-sum rather than `matmul`, because autocast lowers matmul/einsum to
fp16/bf16 but leaves elementwise arithmetic alone. So a `Rigid` built under
`torch.autocast` stays fp32 and coordinates computed through it are fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

_FP32 = torch.float32


def rot_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of rotation matrices `a @ b`, `[*, 3, 3]` each, autocast-proof (see module doc)."""
    # [*, 3, 3, 1] * [*, 1, 3, 3] summed over the shared index
    return (a[..., :, :, None] * b[..., None, :, :]).sum(dim=-2)


def rot_vec_mul(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rotate points: `r [*, 3, 3]` applied to `t [*, 3]`, giving `[*, 3]`."""
    return (r * t[..., None, :]).sum(dim=-1)


def quat_to_rot(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions `[*, 4]` (w, x, y, z) to rotation matrices `[*, 3, 3]`."""
    w, x, y, z = q.unbind(dim=-1)
    rows = [
        w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z,
    ]  # fmt: skip
    # [*, 3, 3]
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def rot_to_quat(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices `[*, 3, 3]` to unit quaternions `[*, 4]`.

    The quaternion is the dominant eigenvector of the symmetric 4x4 matrix built from
    `r` (Bar-Itzhack's method), which is robust for every rotation angle. Its sign is
    whatever the eigen-solver returns, as in the reference.
    """
    (xx, xy, xz), (yx, yy, yz), (zx, zy, zz) = (r[..., i, :].unbind(-1) for i in range(3))
    k = [
        xx + yy + zz, zy - yz, xz - zx, yx - xy,
        zy - yz, xx - yy - zz, xy + yx, xz + zx,
        xz - zx, xy + yx, yy - xx - zz, yz + zy,
        yx - xy, xz + zx, yz + zy, zz - xx - yy,
    ]  # fmt: skip
    # [*, 4, 4]
    k = torch.stack(k, dim=-1).unflatten(-1, (4, 4)) / 3.0
    _, vectors = torch.linalg.eigh(k)
    return vectors[..., -1]


def quat_multiply_by_vec(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hamilton product `q * (0, v)` of quaternions `[*, 4]` and pure vectors `[*, 3]`."""
    w, x, y, z = q.unbind(dim=-1)
    b, c, d = v.unbind(dim=-1)
    return torch.stack(
        [
            -x * b - y * c - z * d,
            w * b + y * d - z * c,
            w * c - x * d + z * b,
            w * d + x * c - y * b,
        ],
        dim=-1,
    )


class Rotation:
    """A tensor of 3D rotations, stored as matrices `[*, 3, 3]` or quaternions `[*, 4]`.

    Exactly one representation is stored; the other is derived on request. The format
    never changes in place, so gradients flow through whichever one was given.
    """

    def __init__(
        self,
        rot_mats: torch.Tensor | None = None,
        quats: torch.Tensor | None = None,
        normalize_quats: bool = True,
    ) -> None:
        if (rot_mats is None) == (quats is None):
            raise ValueError("Rotation needs exactly one of rot_mats or quats")
        if rot_mats is not None and rot_mats.shape[-2:] != (3, 3):
            raise ValueError(f"rot_mats must be [*, 3, 3], got {tuple(rot_mats.shape)}")
        if quats is not None and quats.shape[-1] != 4:
            raise ValueError(f"quats must be [*, 4], got {tuple(quats.shape)}")
        if rot_mats is not None:
            rot_mats = rot_mats.to(_FP32)
        if quats is not None:
            quats = quats.to(_FP32)
            if normalize_quats:
                quats = quats / torch.linalg.vector_norm(quats, dim=-1, keepdim=True)
        self._rot_mats = rot_mats
        self._quats = quats

    @staticmethod
    def identity(
        shape: Sequence[int],
        device: torch.device | str | None = None,
        requires_grad: bool = False,
        fmt: str = "quat",
    ) -> Rotation:
        """Identity rotations of shape `[*shape]` in format `"quat"` or `"rot_mat"`."""
        if fmt == "quat":
            q = torch.zeros((*shape, 4), dtype=_FP32, device=device)
            q[..., 0] = 1.0
            return Rotation(quats=q.requires_grad_(requires_grad), normalize_quats=False)
        if fmt == "rot_mat":
            m = torch.eye(3, dtype=_FP32, device=device).expand(*shape, 3, 3).contiguous()
            return Rotation(rot_mats=m.requires_grad_(requires_grad))
        raise ValueError(f"unknown rotation format {fmt!r}; use 'quat' or 'rot_mat'")

    def _map(self, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> Rotation:
        """Apply `fn(tensor, n_trailing)` to the stored tensor, keeping the format."""
        if self._rot_mats is not None:
            return Rotation(rot_mats=fn(self._rot_mats, 2))
        return Rotation(quats=fn(self._quats, 1), normalize_quats=False)

    def __getitem__(self, index: Any) -> Rotation:
        if not isinstance(index, tuple):
            index = (index,)
        return self._map(lambda t, n: t[index + (slice(None),) * n])

    def __mul__(self, right: torch.Tensor) -> Rotation:
        """Elementwise product with a `[*]` tensor, e.g. a mask or a one-hot."""
        if not isinstance(right, torch.Tensor):
            raise TypeError("a Rotation can only be multiplied by a tensor")
        return self._map(lambda t, n: t * right[(...,) + (None,) * n])

    def __rmul__(self, left: torch.Tensor) -> Rotation:
        return self.__mul__(left)

    @property
    def shape(self) -> torch.Size:
        if self._rot_mats is not None:
            return self._rot_mats.shape[:-2]
        return self._quats.shape[:-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.get_cur_rot().dtype

    @property
    def device(self) -> torch.device:
        return self.get_cur_rot().device

    @property
    def requires_grad(self) -> bool:
        return self.get_cur_rot().requires_grad

    def get_cur_rot(self) -> torch.Tensor:
        """The stored tensor, `[*, 3, 3]` or `[*, 4]`."""
        return self._rot_mats if self._rot_mats is not None else self._quats

    def get_rot_mats(self) -> torch.Tensor:
        """`[*, 3, 3]` rotation matrices."""
        return self._rot_mats if self._rot_mats is not None else quat_to_rot(self._quats)

    def get_quats(self) -> torch.Tensor:
        """`[*, 4]` unit quaternions (an eigen-decomposition when stored as matrices)."""
        return self._quats if self._quats is not None else rot_to_quat(self._rot_mats)

    def compose_q_update_vec(
        self, q_update_vec: torch.Tensor, normalize_quats: bool = True
    ) -> Rotation:
        """Right-compose with the quaternion `(1, x, y, z)` given as `[*, 3]` (Algorithm 23)."""
        q = self.get_quats()
        new_q = q + quat_multiply_by_vec(q, q_update_vec.to(_FP32))
        return Rotation(quats=new_q, normalize_quats=normalize_quats)

    def compose_r(self, r: Rotation) -> Rotation:
        """`self o r` as rotation matrices."""
        return Rotation(rot_mats=rot_matmul(self.get_rot_mats(), r.get_rot_mats()))

    def apply(self, pts: torch.Tensor) -> torch.Tensor:
        """Rotate points `[*, 3]` (fp32 out)."""
        return rot_vec_mul(self.get_rot_mats(), pts.to(_FP32))

    def invert_apply(self, pts: torch.Tensor) -> torch.Tensor:
        """Apply the inverse rotation to points `[*, 3]` (fp32 out)."""
        return rot_vec_mul(self.get_rot_mats().transpose(-1, -2), pts.to(_FP32))

    def invert(self) -> Rotation:
        if self._rot_mats is not None:
            return Rotation(rot_mats=self._rot_mats.transpose(-1, -2))
        # The conjugate over the squared norm; equal to the conjugate for unit quaternions.
        conj = self._quats * self._quats.new_tensor([1.0, -1.0, -1.0, -1.0])
        return Rotation(
            quats=conj / (self._quats**2).sum(dim=-1, keepdim=True), normalize_quats=False
        )

    def unsqueeze(self, dim: int) -> Rotation:
        """Insert a `[*]` dimension; negative `dim` counts from the end of `[*]`."""
        if dim >= len(self.shape):
            raise ValueError(f"dimension {dim} out of range for Rotation of shape {self.shape}")
        return self._map(lambda t, n: t.unsqueeze(dim if dim >= 0 else dim - n))

    @staticmethod
    def cat(rs: Sequence[Rotation], dim: int) -> Rotation:
        """Concatenate along a `[*]` dimension; the result is always in matrix format."""
        mats = [r.get_rot_mats() for r in rs]
        return Rotation(rot_mats=torch.cat(mats, dim=dim if dim >= 0 else dim - 2))

    def map_tensor_fn(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Rotation:
        """Map `fn` over each scalar component `[*]` (e.g. a sum over a one-hot dimension)."""
        if self._rot_mats is not None:
            flat = self._rot_mats.flatten(-2)
            out = torch.stack([fn(c) for c in flat.unbind(-1)], dim=-1)
            return Rotation(rot_mats=out.unflatten(-1, (3, 3)))
        out = torch.stack([fn(c) for c in self._quats.unbind(-1)], dim=-1)
        return Rotation(quats=out, normalize_quats=False)

    def to(self, device: torch.device | str | None) -> Rotation:
        """Move to `device`; the dtype stays fp32."""
        return self._map(lambda t, n: t.to(device=device))

    def detach(self) -> Rotation:
        return self._map(lambda t, n: t.detach())


class Rigid:
    """A tensor of rigid transforms `x -> R x + t` of shape `[*]`."""

    def __init__(self, rots: Rotation | None, trans: torch.Tensor | None) -> None:
        if rots is None and trans is None:
            raise ValueError("Rigid needs a rotation, a translation or both")
        ref = trans if trans is not None else rots.get_cur_rot()
        if rots is None:
            rots = Rotation.identity(trans.shape[:-1], device=ref.device, fmt="rot_mat")
        if trans is None:
            trans = torch.zeros((*rots.shape, 3), dtype=_FP32, device=ref.device)
        if rots.shape != trans.shape[:-1]:
            raise ValueError(f"rotation shape {rots.shape} != translation shape {trans.shape}")
        self._rots = rots
        self._trans = trans.to(_FP32)

    @staticmethod
    def identity(
        shape: Sequence[int],
        device: torch.device | str | None = None,
        requires_grad: bool = False,
        fmt: str = "quat",
    ) -> Rigid:
        """Identity transforms of shape `[*shape]`."""
        trans = torch.zeros((*shape, 3), dtype=_FP32, device=device, requires_grad=requires_grad)
        return Rigid(Rotation.identity(shape, device, requires_grad, fmt), trans)

    def __getitem__(self, index: Any) -> Rigid:
        if not isinstance(index, tuple):
            index = (index,)
        return Rigid(self._rots[index], self._trans[index + (slice(None),)])

    def __mul__(self, right: torch.Tensor) -> Rigid:
        """Elementwise product with a `[*]` tensor, e.g. a mask or a one-hot."""
        if not isinstance(right, torch.Tensor):
            raise TypeError("a Rigid can only be multiplied by a tensor")
        return Rigid(self._rots * right, self._trans * right[..., None])

    def __rmul__(self, left: torch.Tensor) -> Rigid:
        return self.__mul__(left)

    @property
    def shape(self) -> torch.Size:
        return self._trans.shape[:-1]

    @property
    def device(self) -> torch.device:
        return self._trans.device

    @property
    def dtype(self) -> torch.dtype:
        return self._trans.dtype

    def get_rots(self) -> Rotation:
        return self._rots

    def get_trans(self) -> torch.Tensor:
        """`[*, 3]` translations."""
        return self._trans

    def compose_q_update_vec(self, q_update_vec: torch.Tensor) -> Rigid:
        """Right-compose with an update `[*, 6]`: quaternion vector part, then translation.

        Algorithm 23 line 4: `T_i <- T_i o (R(1, b, c, d), t)`; the translation update
        is expressed in the current frame.
        """
        q_vec, t_vec = q_update_vec[..., :3], q_update_vec[..., 3:]
        new_rots = self._rots.compose_q_update_vec(q_vec)
        return Rigid(new_rots, self._trans + self._rots.apply(t_vec))

    def compose(self, r: Rigid) -> Rigid:
        """`self o r`."""
        return Rigid(self._rots.compose_r(r._rots), self._rots.apply(r._trans) + self._trans)

    def apply(self, pts: torch.Tensor) -> torch.Tensor:
        """`T o x` for points `[*, 3]` (fp32 out)."""
        return self._rots.apply(pts) + self._trans

    def invert_apply(self, pts: torch.Tensor) -> torch.Tensor:
        """`T^-1 o x` for points `[*, 3]` (fp32 out)."""
        return self._rots.invert_apply(pts.to(_FP32) - self._trans)

    def invert(self) -> Rigid:
        rot_inv = self._rots.invert()
        return Rigid(rot_inv, -rot_inv.apply(self._trans))

    def map_tensor_fn(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Rigid:
        """Map `fn` over each scalar component `[*]` of rotation and translation."""
        trans = torch.stack([fn(c) for c in self._trans.unbind(-1)], dim=-1)
        return Rigid(self._rots.map_tensor_fn(fn), trans)

    def to_tensor_4x4(self) -> torch.Tensor:
        """`[*, 4, 4]` homogeneous matrices."""
        out = self._trans.new_zeros((*self.shape, 4, 4))
        out[..., :3, :3] = self._rots.get_rot_mats()
        out[..., :3, 3] = self._trans
        out[..., 3, 3] = 1.0
        return out

    @staticmethod
    def from_tensor_4x4(t: torch.Tensor) -> Rigid:
        """From homogeneous matrices `[*, 4, 4]` (the last row is ignored)."""
        if t.shape[-2:] != (4, 4):
            raise ValueError(f"expected [*, 4, 4], got {tuple(t.shape)}")
        return Rigid(Rotation(rot_mats=t[..., :3, :3]), t[..., :3, 3])

    def to_tensor_7(self) -> torch.Tensor:
        """`[*, 7]`: quaternion (w, x, y, z) then translation."""
        return torch.cat([self._rots.get_quats(), self._trans], dim=-1)

    @staticmethod
    def from_tensor_7(t: torch.Tensor, normalize_quats: bool = False) -> Rigid:
        if t.shape[-1] != 7:
            raise ValueError(f"expected [*, 7], got {tuple(t.shape)}")
        return Rigid(Rotation(quats=t[..., :4], normalize_quats=normalize_quats), t[..., 4:])

    @staticmethod
    def from_3_points(
        p_neg_x_axis: torch.Tensor,
        origin: torch.Tensor,
        p_xy_plane: torch.Tensor,
        eps: float = 1e-8,
    ) -> Rigid:
        """Frames from three points `[*, 3]` by Gram-Schmidt (Algorithm 21).

        The x-axis points from `p_neg_x_axis` to `origin`; `p_xy_plane` lies in the
        xy-plane with positive y.
        """
        p1, x0, p2 = (p.to(_FP32) for p in (p_neg_x_axis, origin, p_xy_plane))
        e0 = x0 - p1
        e1 = p2 - x0
        e0 = e0 / torch.sqrt((e0 * e0).sum(-1, keepdim=True) + eps)
        e1 = e1 - e0 * (e0 * e1).sum(-1, keepdim=True)
        e1 = e1 / torch.sqrt((e1 * e1).sum(-1, keepdim=True) + eps)
        e2 = torch.linalg.cross(e0, e1, dim=-1)
        # [*, 3, 3] with the basis vectors as columns
        rots = torch.stack([e0, e1, e2], dim=-1)
        return Rigid(Rotation(rot_mats=rots), x0)

    def unsqueeze(self, dim: int) -> Rigid:
        """Insert a `[*]` dimension; negative `dim` counts from the end of `[*]`."""
        if dim >= len(self.shape):
            raise ValueError(f"dimension {dim} out of range for Rigid of shape {self.shape}")
        return Rigid(self._rots.unsqueeze(dim), self._trans.unsqueeze(dim if dim >= 0 else dim - 1))

    @staticmethod
    def cat(ts: Sequence[Rigid], dim: int) -> Rigid:
        """Concatenate along a `[*]` dimension (rotations end up in matrix format)."""
        rots = Rotation.cat([t._rots for t in ts], dim)
        trans = torch.cat([t._trans for t in ts], dim=dim if dim >= 0 else dim - 1)
        return Rigid(rots, trans)

    def apply_rot_fn(self, fn: Callable[[Rotation], Rotation]) -> Rigid:
        return Rigid(fn(self._rots), self._trans)

    def apply_trans_fn(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Rigid:
        return Rigid(self._rots, fn(self._trans))

    def scale_translation(self, factor: float) -> Rigid:
        """Multiply translations by `factor` (nm-ish internal units to Angstrom)."""
        return Rigid(self._rots, self._trans * factor)

    def stop_rot_gradient(self) -> Rigid:
        """Detach the rotations only (between structure-module iterations, Algorithm 20)."""
        return Rigid(self._rots.detach(), self._trans)

    def to(self, device: torch.device | str | None) -> Rigid:
        """Move to `device`; the dtype stays fp32."""
        return Rigid(self._rots.to(device), self._trans.to(device=device))
