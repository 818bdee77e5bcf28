"""Low-dose CT lesion detection: is there a small lesion in the reconstructed slice?

Each sample is a randomly perturbed Shepp-Logan head phantom (the modified Shepp-Logan ellipse
table of Toft 1996, which renders scikit-image's ``shepp_logan_phantom`` template; every
ellipse's centre, axes, angle and intensity is jittered, and the head is rotated and scaled).
In half of the samples a small hyperdense ellipse (the lesion, ~1 cm) is inserted in the brain
parenchyma.
The slice is scanned in parallel-beam geometry (``skimage.transform.radon``), photon counts are
drawn from a Poisson law (Beer-Lambert transmission with ``I0`` photons per ray: low dose), the
log-converted sinogram is reconstructed by filtered back-projection (``iradon``, Shepp-Logan
filter), windowed, and a 2D CNN classifies lesion present / absent (AUC primary, accuracy
secondary).

Input channels: the FBP image (true), two channels of i.i.d. Gaussian noise, and a scanner
"calibration" image (nuisance: the ring pattern of a random detector-gain calibration,
independent of the patient and of the label; it does not enter the reconstruction).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from ._common import standardized_splits
from .base import TrainRecipe, Workload, WorkloadData, progress_bar, seed_everything, split_indices

#: modified Shepp-Logan (Toft 1996): intensity, semi-axes a, b, centre x0, y0, angle (degrees);
#: coordinates in [-1, 1], y up. Renders ``skimage.data.shepp_logan_phantom()``.
SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.605, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)
#: grid (pixels = detector bins = projection angles), samples, lesion intensity and semi-axes
#: (units of the half field of view). The smoke scanner is coarse (6 mm pixels), so its lesions
#: are larger and brighter to stay detectable at that resolution.
SIZES = {
    "smoke": {"grid": 32, "n": 256, "contrast": (0.3, 0.5), "axes": (0.14, 0.2)},
    "full": {"grid": 64, "n": 3000, "contrast": (0.2, 0.35), "axes": (0.09, 0.14)},
}
VAL_FRACTION = 0.2
N_NOISE = 2
I0 = 5.0e4  # incident photons per ray (low dose)
MU_PER_UNIT = 1.0  # attenuation (1/cm) per unit phantom intensity: brain (0.2) ~ water
FOV_CM = 20.0
WINDOW = (0.0, 0.6)  # display window applied to the reconstruction (the skull saturates)


def render(ellipses, n: int, supersample: int = 2) -> np.ndarray:
    """Rasterise ellipses (table rows as in :data:`SHEPP_LOGAN`) on an ``n x n`` grid with
    ``supersample``-fold anti-aliasing; row 0 is the top (y = +1)."""
    m = n * supersample
    c = (np.arange(m) + 0.5) / m * 2.0 - 1.0
    x, y = np.meshgrid(c, -c)
    img = np.zeros((m, m))
    for amp, a, b, x0, y0, phi in ellipses:
        t = np.deg2rad(phi)
        xr = (x - x0) * np.cos(t) + (y - y0) * np.sin(t)
        yr = -(x - x0) * np.sin(t) + (y - y0) * np.cos(t)
        img += amp * ((xr / a) ** 2 + (yr / b) ** 2 <= 1.0)
    return img.reshape(n, supersample, n, supersample).mean(axis=(1, 3))


def random_phantom(
    rng: np.random.Generator,
    lesion: bool,
    contrast: tuple[float, float] = SIZES["full"]["contrast"],
    axes: tuple[float, float] = SIZES["full"]["axes"],
) -> list[tuple[float, ...]]:
    """A jittered Shepp-Logan ellipse list, plus a hyperdense lesion ellipse (intensity drawn
    from ``contrast`` above the brain's 0.2, semi-axes from ``axes``) when ``lesion``."""
    rot = rng.uniform(-15.0, 15.0)
    scale = rng.uniform(0.9, 1.03)
    cr, sr = np.cos(np.deg2rad(rot)), np.sin(np.deg2rad(rot))
    out = []
    for k, (amp, a, b, x0, y0, phi) in enumerate(SHEPP_LOGAN):
        if k >= 2:  # inner structures: anatomy varies between patients
            amp = amp + rng.normal(0.0, 0.015)
            a, b = a * rng.uniform(0.85, 1.15), b * rng.uniform(0.85, 1.15)
            x0, y0 = x0 + rng.normal(0.0, 0.02), y0 + rng.normal(0.0, 0.02)
            phi = phi + rng.normal(0.0, 5.0)
        else:
            a, b = a * rng.uniform(0.97, 1.03), b * rng.uniform(0.97, 1.03)
        xs, ys = scale * (cr * x0 - sr * y0), scale * (sr * x0 + cr * y0)
        out.append((amp, scale * a, scale * b, xs, ys, phi + rot))
    if lesion:
        # uniform inside the brain ellipse, in parenchyma (not inside another structure)
        while True:
            lx, ly = rng.uniform(-1.0, 1.0, size=2)
            if lx * lx + ly * ly > 1.0:
                continue
            lx, ly = 0.55 * lx, 0.75 * ly - 0.0184
            xs, ys = scale * (cr * lx - sr * ly), scale * (sr * lx + cr * ly)
            if not any(_inside(e, xs, ys, margin=1.15) for e in out[2:]):
                break
        la, lb = rng.uniform(*axes, size=2)
        amp = rng.uniform(*contrast)
        out.append((amp, scale * la, scale * lb, xs, ys, rng.uniform(0.0, 180.0)))
    return out


def _inside(ellipse, x: float, y: float, margin: float = 1.0) -> bool:
    """Whether ``(x, y)`` lies inside ``ellipse`` with its axes stretched by ``margin``."""
    _, a, b, x0, y0, phi = ellipse
    t = np.deg2rad(phi)
    xr = (x - x0) * np.cos(t) + (y - y0) * np.sin(t)
    yr = -(x - x0) * np.sin(t) + (y - y0) * np.cos(t)
    return (xr / (margin * a)) ** 2 + (yr / (margin * b)) ** 2 <= 1.0


def scan(image: np.ndarray, rng: np.random.Generator, i0: float = I0) -> np.ndarray:
    """Low-dose parallel-beam scan and FBP reconstruction of ``image`` (phantom intensity)."""
    from skimage.transform import iradon, radon

    n = image.shape[0]
    theta = np.linspace(0.0, 180.0, n, endpoint=False)
    pixel_cm = FOV_CM / n
    sino = radon(image, theta, circle=True) * MU_PER_UNIT * pixel_cm  # attenuation line ints
    counts = rng.poisson(i0 * np.exp(-sino))
    sino_noisy = -np.log(np.maximum(counts, 1) / i0) / (MU_PER_UNIT * pixel_cm)
    return iradon(sino_noisy, theta, output_size=n, filter_name="shepp-logan", circle=True)


def calibration_basis(n: int) -> np.ndarray:
    """``(n*n, n)`` matrix: the FBP image of a unit gain error in each detector channel.

    Back-projection is linear, so the ring image of any gain vector ``g`` is ``basis @ g``."""
    from skimage.transform import iradon

    theta = np.linspace(0.0, 180.0, n, endpoint=False)
    cols = []
    for d in range(n):
        sino = np.zeros((n, n))
        sino[d] = 1.0
        cols.append(iradon(sino, theta, output_size=n, circle=True).ravel())
    return np.stack(cols, axis=1)


def calibration_image(rng: np.random.Generator, basis: np.ndarray) -> np.ndarray:
    """Ring pattern of a random detector-gain calibration (independent of the patient)."""
    n = basis.shape[1]
    gains = rng.normal(0.0, 1.0, n) + np.convolve(rng.normal(0.0, 1.0, n), np.ones(5) / 5, "same")
    rings = (basis @ gains).reshape(n, n)
    return rings / (rings.std() + 1e-12)


def inside_circle(n: int) -> np.ndarray:
    """skimage's reconstruction circle (``radon(..., circle=True)`` needs zeros outside)."""
    c = np.arange(n) - n // 2
    return (c[:, None] ** 2 + c[None, :] ** 2) <= (n // 2) ** 2


# ---- workload -----------------------------------------------------------------------------------
def generate(size: str, seed: int, progress: bool) -> WorkloadData:
    cfg = SIZES[size]
    n, n_samples = cfg["grid"], cfg["n"]
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed_everything(seed, "ct", size, "patients"))
    srng = np.random.default_rng(seed_everything(seed, "ct", size, "scanner"))
    nrng = np.random.default_rng(seed_everything(seed, "ct", size, "nuisance"))
    labels = np.zeros(n_samples, dtype=np.float32)
    labels[rng.permutation(n_samples)[: n_samples // 2]] = 1.0
    circle = inside_circle(n)
    basis = calibration_basis(n)
    n_ch = 1 + N_NOISE + 1
    x = np.empty((n_samples, n_ch, n, n), dtype=np.float32)
    for i in progress_bar(range(n_samples), n_samples, "ct", progress):
        ellipses = random_phantom(rng, bool(labels[i]), cfg["contrast"], cfg["axes"])
        phantom = render(ellipses, n) * circle
        x[i, 0] = np.clip(scan(phantom, srng), *WINDOW) * circle
        x[i, 1 : 1 + N_NOISE] = nrng.standard_normal((N_NOISE, n, n))
        x[i, -1] = calibration_image(nrng, basis) * circle
    xt = torch.from_numpy(x)
    y = torch.from_numpy(labels[:, None])
    tr, va = split_indices(n_samples, VAL_FRACTION, seed)
    train, val, scalers = standardized_splits(xt, y, tr, va, dim=1, target="none")
    names = ["fbp_image"] + [f"noise_{j}" for j in range(N_NOISE)] + ["calibration_map"]
    return WorkloadData(
        train=train,
        val=val,
        feature_arg="x",
        feature_dim=0,
        feature_names=names,
        true_features=[0],
        noise_features=list(range(1, 1 + N_NOISE)),
        nuisance_features=[n_ch - 1],
        info={
            "target": "lesion present (1) / absent (0)",
            "grid": n,
            "photons_per_ray": I0,
            "lesion_contrast": list(cfg["contrast"]),
            "lesion_semi_axes": list(cfg["axes"]),
            "n_train": int(len(tr)),
            "n_val": int(len(va)),
            "positive_fraction": float(labels.mean()),
            **scalers,
            "generation_seconds": time.perf_counter() - t0,
        },
    )


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a (strided 1x1-projected) skip, then ReLU."""

    def __init__(self, ci: int, co: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ci, co, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(co),
            nn.ReLU(),
            nn.Conv2d(co, co, 3, padding=1, bias=False),
            nn.BatchNorm2d(co),
        )
        if stride != 1 or ci != co:
            self.skip = nn.Sequential(
                nn.Conv2d(ci, co, 1, stride=stride, bias=False), nn.BatchNorm2d(co)
            )
        else:
            self.skip = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class LesionNet(nn.Module):
    """Small ResNet: stem, three residual stages (stride 2 between), global average pool,
    linear logit."""

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
        )
        self.stages = nn.Sequential(
            ResBlock(w, w, stride=2),
            ResBlock(w, 2 * w, stride=2),
            ResBlock(2 * w, 4 * w, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def build_model(data: WorkloadData) -> nn.Module:
    return LesionNet(data.train.inputs[0].shape[1])


def metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    out = {"auc": M.roc_auc(pred, target), "accuracy": M.accuracy(pred, target)}
    out["primary"] = out["auc"]
    return out


WORKLOAD = Workload(
    name="ct_lesion",
    title="Low-dose CT lesion detection on FBP reconstructions",
    description=(
        "Perturbed Shepp-Logan head phantoms (skimage's template), half with a small "
        "hyperdense lesion, scanned in parallel beam (skimage radon), Poisson photon noise at "
        "low dose, reconstructed by filtered back-projection (iradon); a residual 2D CNN "
        "classifies lesion present (AUC primary). Planted: two i.i.d. Gaussian noise channels "
        "and a detector-gain calibration ring image independent of patient and label."
    ),
    architecture="cnn2d",
    task="classification",
    primary="auc",
    higher_is_better=True,
    generate=generate,
    build_model=build_model,
    metrics=metrics,
    requires=("skimage",),
    recipes={
        "smoke": TrainRecipe(epochs=4, batch_size=32, lr=2e-3),
        "full": TrainRecipe(epochs=10, batch_size=32, lr=1e-3),
    },
)
