"""Synthetic lesions with exact voxel masks, defined in template coordinates (mm).

A lesion is a function of template coordinates, so it deforms with the subject's anatomy
and can be evaluated on any set of points (a 3-D volume or a single 2-D slice):

- :class:`Tumour`: a noise-perturbed ellipsoid with a necrotic core (label 1, very bright
  in T2), an enhancing rim (label 4) and surrounding oedema (label 2, bright), plus an
  optional mild mass effect (tissue pushed radially outwards). BraTS labels.
  The core is necrotic (bright), cystic (CSF-like) or haemorrhagic (T2-dark).
- :class:`MSLesion`: a focal ovoid lesion (label 1): bright (MS, white-matter
  hyperintensities), dark (haemorrhage-like) or at CSF intensity (lacune / cyst-like).

Labels are hard thresholds of a normalised radius ``rho`` (< 1 inside); intensities use a
soft version of the same radius, so edges have partial-volume blending.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NECROTIC, OEDEMA, ENHANCING = 1, 2, 4
EDGE_MM = 0.6  # width of the soft intensity transition


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _field(noise: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Coarse noise channels (1, K, n, n, n) at local coordinates u (N, 3) in [-1, 1] -> (K, N)."""
    out = F.grid_sample(noise, u.view(1, -1, 1, 1, 3), align_corners=True, padding_mode="border")
    return out.view(noise.shape[1], -1)


def _soft(rho: torch.Tensor, radius: float) -> torch.Tensor:
    return torch.sigmoid((1.0 - rho) * (radius / EDGE_MM))


@dataclass
class Tumour:
    centre: np.ndarray  # template coordinates (mm)
    rot: np.ndarray  # (3, 3)
    radii: np.ndarray  # semi-axes of the solid part (mm)
    core: float  # necrotic core radius relative to the solid part (0: no necrosis)
    oedema: float  # oedema extent relative to the solid part (> 1)
    amp: float  # boundary irregularity
    mass: float  # mass-effect strength (0: none)
    noise: torch.Tensor  # (1, 4, n, n, n): three boundaries + intensity texture
    levels: tuple[float, float, float]  # (core x CSF (x WM if haemorrhagic), rim x GM, oedema fraction of CSF - WM)
    core_kind: str = "necrotic"  # necrotic | cystic | haemorrhagic

    @property
    def bound(self) -> float:
        """Radius (mm) of a sphere around ``centre`` that contains every labelled voxel."""
        return float(self.radii.max() * self.oedema * (1 + 2.2 * self.amp) + 1.0)

    def _rho(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = c - torch.from_numpy(self.centre.astype(np.float32))
        local = d @ torch.from_numpy((self.rot / self.radii).astype(np.float32))  # axes of the ellipsoid
        return local.norm(dim=1), _field(self.noise, (d / self.bound).clamp(-1, 1))

    def evaluate(self, c: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Labels (N,) uint8 and soft weights (4, N): outer, solid, core, texture."""
        r, n = self._rho(c)
        a = self.amp
        rho_s = r / (1 + a * n[0])
        rho_o = r / (self.oedema * (1 + a * n[1]))
        rho_c = r / (self.core * (1 + a * n[2])).clamp(min=1e-6) if self.core > 0 else torch.full_like(r, 9.0)
        rad = float(self.radii.mean())
        w = torch.stack([_soft(rho_o, rad * self.oedema), _soft(rho_s, rad),
                         _soft(rho_c, rad * max(self.core, 0.2)), n[3]])
        lab = torch.zeros(r.shape, dtype=torch.uint8)
        lab[rho_o < 1] = OEDEMA
        lab[rho_s < 1] = ENHANCING
        lab[(rho_c < 1) & (rho_s < 1)] = NECROTIC
        return lab.numpy(), w.numpy()

    def paint(self, img: np.ndarray, w: np.ndarray, con, inside: np.ndarray) -> np.ndarray:
        wo, ws, wc = (w[i] * inside for i in range(3))
        tex = w[3]
        core = (con.wm if self.core_kind == "haemorrhagic" else con.csf) * self.levels[0] * (1 + 0.04 * tex)
        rim = con.gm * self.levels[1] * (1 + 0.10 * tex)
        oed = img + (con.csf - con.wm) * self.levels[2] * (1 + 0.15 * tex)
        solid = rim * (1 - wc) + core * wc
        return (img * (1 - wo) + wo * (oed * (1 - ws) + ws * solid)).astype(np.float32)

    def displace(self, c: torch.Tensor) -> torch.Tensor:
        """Where the tissue now at ``c`` came from: mass effect pushes tissue outwards."""
        if self.mass <= 0:
            return c
        ctr = torch.from_numpy(self.centre.astype(np.float32))
        d = c - ctr
        lam = float(self.radii.mean() * self.oedema * 1.2)
        shrink = 1.0 - self.mass * torch.exp(-(d * d).sum(1, keepdim=True) / lam**2)
        return ctr + d * shrink


@dataclass
class MSLesion:
    centre: np.ndarray
    rot: np.ndarray
    radii: np.ndarray
    amp: float
    noise: torch.Tensor  # (1, 1, n, n, n)
    level: float  # bright: position between GM and CSF; dark: x WM; csf: x CSF
    mode: str = "bright"  # bright | dark | csf
    kind: str = "ms"  # ms | wmh | haemorrhage | lacune (for summaries and captions)

    @property
    def bound(self) -> float:
        return float(self.radii.max() * (1 + 2.2 * self.amp) + 1.0)

    def evaluate(self, c: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        d = c - torch.from_numpy(self.centre.astype(np.float32))
        r = (d @ torch.from_numpy((self.rot / self.radii).astype(np.float32))).norm(dim=1)
        n = _field(self.noise, (d / self.bound).clamp(-1, 1))[0]
        rho = r / (1 + self.amp * n)
        return (rho < 1).to(torch.uint8).numpy(), _soft(rho, float(self.radii.mean()))[None].numpy()

    def paint(self, img: np.ndarray, w: np.ndarray, con, inside: np.ndarray) -> np.ndarray:
        wt = w[0] * inside
        if self.mode == "csf":
            return (img + wt * (con.csf * self.level - img)).astype(np.float32)
        target = con.wm * self.level if self.mode == "dark" else con.gm + (con.csf - con.gm) * self.level
        change = (img > target) if self.mode == "dark" else (img < target)
        return np.where(change, img + wt * (target - img), img).astype(np.float32)

    def displace(self, c: torch.Tensor) -> torch.Tensor:
        return c


Lesion = Tumour | MSLesion


def burn_in(lesions: list[Lesion], img: np.ndarray, brain: np.ndarray, con, c_grid: torch.Tensor,
            steps: tuple[int, int, int], margin: float) -> np.ndarray:
    """Paint ``lesions`` into ``img`` (in place) and return their labels (uint8, img's shape).

    ``c_grid`` (1, 3, a, b, c) holds the template coordinates, before any mass effect, of the
    nodes every ``steps`` voxels; each lesion is evaluated on the full-resolution sub-box of
    nodes within its bound (+ ``margin`` mm), interpolated exactly as the image was. Labels
    and intensity changes are kept inside the brain mask.
    """
    labels = np.zeros(img.shape, np.uint8)
    nodes = c_grid[0].permute(1, 2, 3, 0)  # (a, b, c, 3)
    for les in lesions:
        near = (nodes - torch.from_numpy(les.centre.astype(np.float32))).norm(dim=-1) < les.bound + margin
        hit = torch.nonzero(near).numpy()
        if len(hit) == 0:
            continue
        a, b = hit.min(0), hit.max(0) + 1
        block = c_grid[:, :, a[0]:b[0], a[1]:b[1], a[2]:b[2]]
        size = tuple(st * (n - 1) + 1 for st, n in zip(steps, block.shape[2:]))  # exact at the nodes
        c = F.interpolate(block, size=size, mode="trilinear", align_corners=True)[0].permute(1, 2, 3, 0)
        sub = tuple(slice(st * i, min(st * i + n, p)) for st, i, n, p in zip(steps, a, c.shape[:3], img.shape))
        c = c[: sub[0].stop - sub[0].start, : sub[1].stop - sub[1].start, : sub[2].stop - sub[2].start]
        lab, wgt = les.evaluate(c.reshape(-1, 3))
        lab = lab.reshape(c.shape[:3])
        inside = brain[sub]
        img[sub] = les.paint(img[sub], wgt.reshape(-1, *c.shape[:3]), con, inside)
        put = inside & (lab > 0)
        labels[sub][put] = lab[put]
    return labels


# ----------------------------------------------------------------------------- placement
def _pick(rng: np.random.Generator, pts: np.ndarray) -> np.ndarray:
    return pts[rng.integers(len(pts))] + rng.uniform(-1.0, 1.0, 3)


def _candidates(tpl, ok, points: np.ndarray | None) -> np.ndarray:
    """Template points (N, 3) passing ``ok(points)``: from ``points`` or the 2 mm grid."""
    if points is None:
        points = tpl.points2
    return points[ok(points)]


def place_tumour(rng: np.random.Generator, tpl, points: np.ndarray | None = None) -> Tumour:
    """A tumour of outer (oedema) equivalent diameter 10-60 mm, centred deep in the cerebrum."""
    outer = rng.uniform(10.0, 60.0)
    oedema = rng.uniform(1.2, 1.7)
    radii = outer / 2 / oedema * rng.uniform(0.85, 1.15, 3)
    radii *= (outer / 2 / oedema) / np.prod(radii) ** (1 / 3)  # keep the equivalent radius
    core = rng.uniform(0.35, 0.7) if rng.random() < 0.75 else 0.0
    amp = rng.uniform(0.10, 0.22)
    mass = rng.uniform(0.08, 0.3) if rng.random() < 0.6 else 0.0
    noise = torch.from_numpy(rng.normal(0, 1, (1, 4, 6, 6, 6)).clip(-2, 2).astype(np.float32))
    core_kind = str(rng.choice(["necrotic", "cystic", "haemorrhagic"], p=[0.5, 0.25, 0.25]))
    core_level = {"necrotic": rng.uniform(0.95, 1.2), "cystic": rng.uniform(0.95, 1.02),
                  "haemorrhagic": rng.uniform(0.25, 0.6)}[core_kind]
    levels = (core_level, rng.uniform(1.0, 1.3), rng.uniform(0.35, 0.65))
    cerebrum = lambda p: (p + tpl.origin)[:, 2] > -30  # noqa: E731
    need = max(6.0, 0.45 * outer)
    pts = np.empty((0, 3))
    while len(pts) == 0 and need > 0:
        pts = _candidates(tpl, lambda p: (tpl.lookup2(tpl.depth2, p) >= need) & cerebrum(p), points)
        need -= 4.0
    if len(pts) == 0:
        raise ValueError("no room for a tumour in these points")
    return Tumour(_pick(rng, pts), _rotation(rng), radii, core, oedema, amp, mass, noise, levels, core_kind)


def _axis_frame(axis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rotation whose first column is ``axis`` (the other two random around it)."""
    u = axis / max(float(np.linalg.norm(axis)), 1e-6)
    q, _ = np.linalg.qr(np.stack([u, *rng.normal(size=(2, 3))], 1))
    return q * np.sign(q[:, 0] @ u)


def _vent_gradient(tpl, c: np.ndarray) -> np.ndarray:
    """Direction away from the nearest ventricle at template point ``c`` (central differences, 2 mm)."""
    e = np.eye(3) * 2.0
    g = np.array([tpl.lookup2(tpl.ventdist2, (c + e[d])[None])[0] - tpl.lookup2(tpl.ventdist2, (c - e[d])[None])[0]
                  for d in range(3)])
    return g if np.linalg.norm(g) > 0 else np.array([1.0, 0.0, 0.0])


def _focal(rng: np.random.Generator, c: np.ndarray, rot: np.ndarray, radii: np.ndarray, level: float,
           mode: str, kind: str) -> MSLesion:
    noise = torch.from_numpy(rng.normal(0, 1, (1, 1, 4, 4, 4)).clip(-2, 2).astype(np.float32))
    return MSLesion(c, rot, radii, rng.uniform(0.05, 0.15), noise, level, mode, kind)


def place_ms(rng: np.random.Generator, tpl, count: int, points: np.ndarray | None = None) -> list[MSLesion]:
    """``count`` periventricular white-matter ovoids of equivalent diameter 3-15 mm whose long
    axis points away from the ventricle (perpendicular to its wall, Dawson's fingers).

    Sizes lean to the upper half (d = 3 + 12 sqrt(u), median 11.5 mm): on the protocol's 2 mm
    grid a 5x5x5 median filter removes anything under about 10 mm even from a perfect map,
    so two thirds of the lesions are sized to survive it and a third test the small end."""
    base = _candidates(tpl, lambda p: (tpl.lookup2(tpl.wm2, p) > 0.6) & (tpl.lookup2(tpl.ventdist2, p) <= 16),
                       points)
    vent, depth = tpl.lookup2(tpl.ventdist2, base), tpl.lookup2(tpl.depth2, base)
    out = []
    for _ in range(count):
        r = (3.0 + 12.0 * np.sqrt(rng.random())) / 2
        radii = r * np.array([rng.uniform(1.3, 2.0), 1.0, rng.uniform(0.7, 1.0)])
        radii *= r / np.prod(radii) ** (1 / 3)
        pts = base[(vent >= r + 1) & (vent <= r + 10) & (depth >= r + 4)]
        if len(pts) == 0:
            continue
        c = _pick(rng, pts)
        out.append(_focal(rng, c, _axis_frame(_vent_gradient(tpl, c), rng), radii, rng.uniform(0.25, 0.6),
                          "bright", "ms"))
    return out


def place_wmh(rng: np.random.Generator, tpl, count: int, points: np.ndarray | None = None) -> list[MSLesion]:
    """White-matter hyperintensities: flat periventricular caps along the ventricle wall
    (8-20 mm) or punctate deep foci (3-6 mm), fainter than MS lesions."""
    base = _candidates(tpl, lambda p: tpl.lookup2(tpl.wm2, p) > 0.5, points)
    vent, depth = tpl.lookup2(tpl.ventdist2, base), tpl.lookup2(tpl.depth2, base)
    out = []
    for _ in range(count):
        cap = rng.random() < 0.5
        r = rng.uniform(4.0, 10.0) if cap else rng.uniform(1.5, 3.0)
        pts = base[(vent >= 2) & (vent <= 8) & (depth >= r + 3)] if cap else base[(vent > 10) & (depth >= 8)]
        if len(pts) == 0:
            continue
        c = _pick(rng, pts)
        radii = np.array([0.45, 1.3, 1.3]) * r if cap else np.array([1.0, 1.0, 1.0]) * r
        rot = _axis_frame(_vent_gradient(tpl, c), rng)  # the short axis away from the ventricle
        out.append(_focal(rng, c, rot, radii, rng.uniform(0.1, 0.4), "bright", "wmh"))
    return out


def place_focal(rng: np.random.Generator, tpl, kind: str, points: np.ndarray | None = None) -> list[MSLesion]:
    """One haemorrhage-like (T2-dark, 5-25 mm) or lacune / cyst-like (CSF intensity, 3-15 mm)
    lesion in white or deep grey matter; [] where it does not fit."""
    d = rng.uniform(5.0, 25.0) if kind == "haemorrhage" else rng.uniform(3.0, 15.0)
    r = d / 2
    pts = _candidates(tpl, lambda p: (tpl.lookup2(tpl.depth2, p) >= r + 6) & (tpl.lookup2(tpl.wm2, p) > 0.3), points)
    if len(pts) == 0:
        return []
    radii = r * rng.uniform(0.85, 1.15, 3)
    radii *= r / np.prod(radii) ** (1 / 3)
    mode, level = ("dark", rng.uniform(0.25, 0.6)) if kind == "haemorrhage" else ("csf", rng.uniform(0.92, 1.0))
    return [_focal(rng, _pick(rng, pts), _rotation(rng), radii, level, mode, kind)]


def describe(centre_mni: np.ndarray) -> tuple[str, str]:
    """(hemisphere, lobe) words for a caption, from MNI coordinates (rough but plausible)."""
    x, y, z = centre_mni
    side = "left" if x < 0 else "right"
    if y > 5:
        lobe = "frontal"
    elif y < -65:
        lobe = "occipital"
    elif z < 0 and abs(x) > 25:
        lobe = "temporal"
    else:
        lobe = "parietal"
    return side, lobe
