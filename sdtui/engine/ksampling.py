"""The sampler algorithms A1111 runs, over any denoiser: its k-diffusion samplers (sigma
space) and its own DDIM / PLMS (timestep space).

Written from the formulas of k-diffusion's ``k_diffusion/sampling.py`` at the commit A1111
pins (ab527a9, "v0.1.1"; A1111 ``modules/launch_utils.py``) and A1111's
``modules/sd_samplers_timesteps_impl.py``, with A1111's defaults: ``eta`` 1 and ``s_noise`` 1
for the ancestral and SDE samplers, no churn, DDIM ``eta`` 0, DPM++ 2M SDE with the
"midpoint" solver.

``model(x, sigma)`` returns the denoised latents (k-diffusion's convention) for the sigma
samplers, and ``model(x, t)`` the predicted noise for the timestep samplers. Step noise comes
from a ``noise(sigma, sigma_next)`` callable: A1111 draws it from each image's own generator
(``ImageNoise``), or from Brownian trees for the SDE samplers (``brownian_noise``), so an
image is the same alone or in a batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Noise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ImageNoise:
    """Step noise from per-image generators (sdtui.engine.rng: CPU, CUDA or NV), as A1111's
    ``ImageRNG.next()`` after the first draw: one ``randn`` of an image's shape from each
    image's generator, stacked. Has the generator interface the memory ladder saves and
    restores."""

    def __init__(self, generators: Sequence[Any], shape: tuple[int, ...]):
        self.generators = list(generators)
        self.shape = tuple(shape)

    def __call__(
        self, sigma: Any = None, sigma_next: Any = None, *, like: torch.Tensor | None = None
    ) -> torch.Tensor:
        from sdtui.engine import rng

        x = torch.stack([rng.randn(g, self.shape) for g in self.generators])
        return x if like is None else x.to(like.device, like.dtype)


def brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, seeds: Sequence[int]) -> Noise:
    """k-diffusion's ``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seeds)`` as A1111's
    ``KDiffusionSampler.create_noise_sampler`` builds it: one torchsde Brownian tree per image,
    seeded with the image's seed, over [smallest nonzero sigma, largest sigma]; a query returns
    the tree's increment over [sigma_next, sigma] divided by its standard deviation. The
    trees draw as an NVIDIA card draws them, on any device (``rng.card_brownian``)."""
    from sdtui.engine.rng import card_brownian

    try:
        import torchsde
    except ImportError as e:  # a dependency; only a broken install lacks it
        raise RuntimeError(
            "the SDE samplers need the torchsde package: pip install torchsde "
            "(or pick another sampler)"
        ) from e

    positive = sigmas[sigmas > 0]
    t0, t1 = positive.min(), sigmas.max()
    w0 = torch.zeros_like(x[0])
    with card_brownian(x.device):
        trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(s)) for s in seeds]

    def noise(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        with warnings.catch_warnings(), card_brownian(x.device):
            # torchsde compares float32 sigmas with its float64 interval ends and warns
            # "Should have tb<=t1" at sigma_max (A1111's console shows it too); harmless
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            w = torch.stack([tree(lo, hi) for tree in trees]) * sign
        return w / (b - a).abs().sqrt()

    return noise


def _ones(x: torch.Tensor) -> torch.Tensor:
    return x.new_ones([x.shape[0]])


def _d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The Karras ODE derivative (k-diffusion ``to_d``)."""
    return (x - denoised) / sigma


def ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[Any, Any]:
    """(sigma_down, sigma_up) of an ancestral step (k-diffusion ``get_ancestral_step``)."""
    if not eta:
        return sigma_to, 0.0
    up = torch.minimum(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    down = (sigma_to**2 - up**2) ** 0.5
    return down, up


def euler(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise | None = None
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        x = x + _d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def euler_ancestral(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        down, up = ancestral_step(sigmas[i], sigmas[i + 1])
        x = x + _d(x, sigmas[i], denoised) * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]).to(x) * up
    return x


def heun(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise | None = None
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s * _ones(x))
        d = _d(x, s, denoised)
        dt = s_next - s
        if s_next == 0:  # the last step: Euler
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _d(x_2, s_next, model(x_2, s_next * _ones(x)))
            x = x + (d + d_2) / 2 * dt
    return x


def _log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.log().lerp(b.log(), 0.5).exp()


def dpm_2(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise | None = None
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s * _ones(x))
        d = _d(x, s, denoised)
        if s_next == 0:
            x = x + d * (s_next - s)
        else:  # DPM-Solver-2: the midpoint in log sigma
            mid = _log_midpoint(s, s_next)
            x_2 = x + d * (mid - s)
            x = x + _d(x_2, mid, model(x_2, mid * _ones(x))) * (s_next - s)
    return x


def dpm_2_ancestral(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s * _ones(x))
        down, up = ancestral_step(s, s_next)
        d = _d(x, s, denoised)
        if down == 0:
            x = x + d * (down - s)
        else:
            mid = _log_midpoint(s, down)
            x_2 = x + d * (mid - s)
            x = x + _d(x_2, mid, model(x_2, mid * _ones(x))) * (down - s)
        # k-diffusion adds this step's noise even on the last step (sigma_up is 0 there)
        x = x + noise(s, s_next).to(x) * up
    return x


def _lms_coefficient(order: int, t: Sequence[float], i: int, j: int) -> float:
    """k-diffusion ``linear_multistep_coeff``: the integral over [t_i, t_i+1] of the Lagrange
    basis polynomial j of the last ``order`` sigmas (scipy's quad, epsrel 1e-4)."""
    from scipy import integrate

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return float(integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0])


def lms(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise | None = None, order: int = 4
) -> torch.Tensor:
    t = sigmas.detach().cpu().double().tolist()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        ds = [*ds, _d(x, sigmas[i], denoised)][-order:]
        n = min(i + 1, order)
        coeffs = [_lms_coefficient(n, t, i, j) for j in range(n)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=False))
    return x


def _t(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def dpmpp_2m(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise | None = None
) -> torch.Tensor:
    old: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            blended = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * blended
        old = denoised
    return x


def dpmpp_sde(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, r: float = 0.5
) -> torch.Tensor:
    """DPM-Solver++ (stochastic), two model calls a step, Brownian noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        if sigmas[i + 1] == 0:
            x = x + _d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        # step 1: to the intermediate time s
        down, up = ancestral_step(_sigma(t), _sigma(s))
        s_ = _t(down)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)).to(x) * up
        denoised_2 = model(x_2, _sigma(s) * _ones(x))
        # step 2: to t_next
        down, up = ancestral_step(_sigma(t), _sigma(t_next))
        t_next_ = _t(down)
        blended = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * blended
        x = x + noise(_sigma(t), _sigma(t_next)).to(x) * up
    return x


def dpmpp_2m_sde(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise, eta: float = 1.0
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE, "midpoint" solver (A1111's "DPM++ 2M SDE")."""
    old: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    h = sigmas.new_zeros(())
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _ones(x))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = (
                sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x
                + (-h - eta_h).expm1().neg() * denoised
            )
            if old is not None and h_last is not None:
                r = h_last / h
                x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old)
            if eta:
                scale = sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt()
                x = x + noise(sigmas[i], sigmas[i + 1]).to(x) * scale
        old, h_last = denoised, h
    return x


# --- A1111's timestep samplers (sd_samplers_timesteps_impl.py): ``model(x, t)`` -> noise.
# ``timesteps`` ascending; they run len(timesteps) - 1 steps, from the last one down to
# index 1, each to alphas_cumprod of the timestep below it (A1111 does exactly this: 20 steps
# are 19 model calls, ending at t=1's noise level).


def _alphas(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    ac = alphas_cumprod.double()
    prev_index = torch.nn.functional.pad(timesteps[:-1], (1, 0))
    return ac[timesteps], ac[prev_index]


def ddim(
    model: Model, x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """DDIM with eta 0 (A1111's default), so it draws no noise."""
    alphas, alphas_prev = _alphas(alphas_cumprod, timesteps)
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, float(timesteps[index]) * _ones(x))
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev) * e_t
    return x


def plms(
    model: Model, x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """PLMS: a pseudo improved Euler first step (one extra model call), then Adams-Bashforth
    of order 2, 3 and 4 over the noise predictions."""
    alphas, alphas_prev = _alphas(alphas_cumprod, timesteps)
    old: list[torch.Tensor] = []

    def step(x: torch.Tensor, e_t: torch.Tensor, index: int) -> torch.Tensor:
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        return math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev) * e_t

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        t_next = float(timesteps[max(index - 1, 0)])
        e_t = model(x, float(timesteps[index]) * _ones(x))
        if not old:
            e_next = model(step(x, e_t, index), t_next * _ones(x))
            e_prime = (e_t + e_next) / 2
        elif len(old) == 1:
            e_prime = (3 * e_t - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e_t - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = step(x, e_prime, index)
        old = [*old, e_t][-3:]
    return x


class _DiscreteVP:
    """UniPC's ``NoiseScheduleVP('discrete', alphas_cumprod)``: log alpha on the continuous
    time t in [1/N, 1], linear between the model's N timesteps (t_k = (k + 1) / N)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.log_alphas = 0.5 * alphas_cumprod.float().log()
        self.n = len(self.log_alphas)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        pos = t.float() * self.n - 1
        lo = pos.floor().clamp(0, self.n - 2)
        w = pos - lo
        a = self.log_alphas.to(t.device)
        i = lo.long()
        return a[i] + w * (a[i + 1] - a[i])

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.log_alpha(t).exp()

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - (2 * self.log_alpha(t)).exp()).sqrt()

    def lam(self, t: torch.Tensor) -> torch.Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * (1 - (2 * la).exp()).log()


def unipc(
    model: Model,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    img2img: bool = False,
    order: int = 3,
) -> torch.Tensor:
    """UniPC as A1111 runs it (sd_samplers_timesteps_impl.unipc and its uni_pc.py port of the
    official code, A1111's defaults): data prediction, variant bh1, multistep of order 3 with
    lower orders at the start and the end, the corrector on every step but the last,
    ``len(timesteps)`` steps on a time-uniform grid from t=1 (img2img: the last timestep / N
    + 1/N) to t=1/N; the model sees timestep ``(t - 1/N) * N``."""
    ns = _DiscreteVP(alphas_cumprod)
    n_train = ns.n
    steps = len(timesteps)
    if steps < 1:
        return x
    order = min(order, steps)
    t_0 = 1.0 / n_train
    t_start = float(timesteps[-1]) / n_train + 1.0 / n_train if img2img else 1.0
    ts = torch.linspace(t_start, t_0, steps + 1)

    def data(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        vec = t.expand(x.shape[0])
        noise = model(x, (vec - 1.0 / n_train) * n_train)
        return (x - ns.std(t).to(x) * noise) / ns.alpha(t).to(x)

    def update(
        x: torch.Tensor,
        models: list[torch.Tensor],
        times: list[torch.Tensor],
        t: torch.Tensor,
        step_order: int,
        corrector: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        m0, t0 = models[-1], times[-1]
        lam0, lam_t = ns.lam(t0), ns.lam(t)
        h = lam_t - lam0
        rks, d1s = [], []
        for i in range(1, step_order):
            rk = (ns.lam(times[-(i + 1)]) - lam0) / h
            rks.append(rk)
            d1s.append((models[-(i + 1)] - m0) / rk)
        rks.append(torch.ones_like(h))
        r = torch.stack(rks)
        hh = -h  # data prediction
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh  # variant bh1
        rows, b = [], []
        factorial = 1
        for i in range(1, step_order + 1):
            rows.append(r ** (i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        big_r, bb = torch.stack(rows), torch.stack(b)
        d1 = torch.stack(d1s, dim=1) if d1s else None
        sigma_t, sigma_0, alpha_t = ns.std(t), ns.std(t0), ns.alpha(t)
        x_lin = (sigma_t / sigma_0).to(x) * x - (alpha_t * h_phi_1).to(x) * m0
        if d1 is not None:
            rhos_p = (
                torch.tensor([0.5])
                if step_order == 2
                else torch.linalg.solve(big_r[:-1, :-1], bb[:-1])
            )
            pred = torch.einsum("k,bkchw->bchw", rhos_p.to(x), d1)
        else:
            pred = torch.zeros_like(x)
        x_t = x_lin - (alpha_t * b_h).to(x) * pred
        if not corrector:
            return x_t, None
        rhos_c = torch.tensor([0.5]) if step_order == 1 else torch.linalg.solve(big_r, bb)
        m_t = data(x_t, t)
        corr = torch.einsum("k,bkchw->bchw", rhos_c[:-1].to(x), d1) if d1 is not None else 0
        x_t = x_lin - (alpha_t * b_h).to(x) * (corr + rhos_c[-1].to(x) * (m_t - m0))
        return x_t, m_t

    models = [data(x, ts[0])]
    times = [ts[0]]
    for k in range(1, order):  # the first steps at lower orders
        x, m = update(x, models, times, ts[k], k, corrector=True)
        models.append(m if m is not None else data(x, ts[k]))
        times.append(ts[k])
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step)  # lower_order_final
        x, m = update(x, models, times, ts[step], step_order, corrector=step != steps)
        models, times = models[1:] + [models[-1]], times[1:] + [ts[step]]
        if step < steps:
            models[-1] = m if m is not None else data(x, ts[step])
    return x


SIGMA_SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "Euler a": euler_ancestral,
    "Euler": euler,
    "LMS": lms,
    "Heun": heun,
    "DPM2": dpm_2,
    "DPM2 a": dpm_2_ancestral,
    "DPM++ 2M": dpmpp_2m,
    "DPM++ SDE": dpmpp_sde,
    "DPM++ 2M SDE": dpmpp_2m_sde,
}
TIMESTEP_SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "DDIM": ddim,
    "PLMS": plms,
    "UniPC": unipc,
}
# A1111 options 'brownian_noise': their step noise comes from Brownian trees
BROWNIAN = frozenset({"DPM++ SDE", "DPM++ 2M SDE"})


def model_calls(sampler: str, steps: int) -> int:
    """How many times ``sampler`` calls the model: over ``steps`` sigma steps (the
    second-order samplers call it twice a step but once on the last, an Euler step to sigma
    0), or over ``steps`` timesteps for DDIM / PLMS (they run one step fewer than the
    timesteps, and PLMS's first step calls the model twice) and UniPC (one a timestep: the
    first prediction, then a corrector call on every step but the last)."""
    if sampler in ("Heun", "DPM2", "DPM2 a", "DPM++ SDE"):
        return max(0, 2 * steps - 1)
    if sampler == "DDIM":
        return max(0, steps - 1)
    if sampler == "PLMS":
        return steps if steps > 1 else 0
    return steps


def a1111_timesteps(steps: int) -> torch.Tensor:
    """A1111's ``CompVisSampler.get_timesteps``: ``range(0, 1000, 1000 // steps) + 1``,
    clipped to 999 (ascending)."""
    return torch.clamp(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
