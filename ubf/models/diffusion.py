"""Gaussian diffusion with SR3's continuous noise-level conditioning: schedules, loss, samplers.

`NoiseSchedule` computes every coefficient once from the betas (in float64); the training loss, the
ancestral sampler and DDIM all read them from there. `GaussianDiffusion` wraps a noise-predicting
network `denoise_fn(x (N, C, H, W), noise_level (N,)) -> eps` and never owns parameters of its own,
so its state is the network's.

Conditioning follows SR3 / WaveGrad: the network sees `gamma = sqrt(alpha_bar)` instead of a step
index. Training draws a step t in 1..T and then gamma uniformly between sqrt(alpha_bar_{t-1}) and
sqrt(alpha_bar_t) (alpha_bar_0 = 1); sampling at step t (0-based index into the betas) passes
sqrt(alpha_bar_t).
"""
import math

import numpy as np
import torch
from torch import nn
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

SCHEDULES = ("linear", "quad", "cosine", "warmup10", "warmup50", "const", "jsd")
# "l1"/"l2" back-propagate sum / (b*c*h*w), i.e. the mean, as the reference's DDPM.optimize_parameters does
# after its reduction='sum' loss; "_mean" spells the same; "_sum" back-propagates the raw sum.
LOSS_TYPES = ("l1", "l2", "l1_mean", "l2_mean", "l1_sum", "l2_sum")
SAMPLERS = ("ancestral", "ddim", "dpmpp2m")
PREDICTIONS = ("eps", "v", "x0")
CLIPPING = ("static", "dynamic", "none")
LOSS_WEIGHTINGS = ("none", "min_snr")
SPACINGS = ("uniform", "logsnr")


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4, linear_end: float = 2e-2,
                       cosine_s: float = 8e-3) -> np.ndarray:
    """Betas (T,) float64 for the schedule names of the SR3 configs.

    linear: evenly spaced; quad: evenly spaced square roots, squared; warmup10/50: linear over the
    first 10 %/50 % of the steps, then `linear_end`; const: `linear_end`; jsd: 1/T, 1/(T-1), ..., 1;
    cosine: Nichol & Dhariwal's alpha_bar = cos^2(((t/T + s) / (1 + s)) pi / 2), betas clipped at 0.999.
    """
    if n_timestep < 1:
        raise ValueError("n_timestep must be at least 1")
    if schedule == "linear":
        return np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64)
    if schedule == "quad":
        return np.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=np.float64) ** 2
    if schedule in ("warmup10", "warmup50"):
        betas = np.full(n_timestep, linear_end, dtype=np.float64)
        warm = int(n_timestep * (0.1 if schedule == "warmup10" else 0.5))
        betas[:warm] = np.linspace(linear_start, linear_end, warm, dtype=np.float64)
        return betas
    if schedule == "const":
        return np.full(n_timestep, linear_end, dtype=np.float64)
    if schedule == "jsd":
        return 1.0 / np.linspace(n_timestep, 1, n_timestep, dtype=np.float64)
    if schedule == "cosine":
        steps = np.arange(n_timestep + 1, dtype=np.float64) / n_timestep
        alpha_bar = np.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        alpha_bar = alpha_bar / alpha_bar[0]
        return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    raise ValueError(f"unknown beta schedule {schedule!r} (expected one of {', '.join(SCHEDULES)})")


class NoiseSchedule:
    """All coefficients of one beta schedule, computed once, as float64 tensors of length T
    (`noise_levels` has T + 1 entries: sqrt(alpha_bar) with alpha_bar_0 = 1 prepended)."""

    def __init__(self, betas):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas >= 1):
            raise ValueError("betas must be a 1-D array with values in (0, 1)")
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        arrays = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            # the posterior variance is 0 at t = 0; the log is clipped there
            "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
            "noise_levels": np.sqrt(np.append(1.0, alphas_cumprod)),
        }
        self.num_timesteps = len(betas)
        for name, value in arrays.items():
            setattr(self, name, torch.from_numpy(value))

    @classmethod
    def from_config(cls, opt: dict) -> "NoiseSchedule":
        """From a config's `beta_schedule.train` / `.val` section."""
        return cls(make_beta_schedule(opt["schedule"], int(opt["n_timestep"]), opt.get("linear_start", 1e-4),
                                      opt.get("linear_end", 2e-2), opt.get("cosine_s", 8e-3)))

    def value(self, name: str, t: int) -> float:
        """One coefficient at step t as a Python float (sampling uses one t per batch)."""
        return float(getattr(self, name)[t])

    def predict_start_from_noise(self, x_t: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """x_0 = x_t / sqrt(alpha_bar_t) - sqrt(1 / alpha_bar_t - 1) eps."""
        return self.value("sqrt_recip_alphas_cumprod", t) * x_t - self.value("sqrt_recipm1_alphas_cumprod", t) * noise

    def predict_noise_from_start(self, x_t: torch.Tensor, t: int, x_start: torch.Tensor) -> torch.Tensor:
        """The inverse of `predict_start_from_noise`: eps implied by x_t and an estimate of x_0."""
        return (self.value("sqrt_recip_alphas_cumprod", t) * x_t - x_start) / self.value("sqrt_recipm1_alphas_cumprod", t)

    def q_posterior_mean(self, x_start: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0)."""
        return self.value("posterior_mean_coef1", t) * x_start + self.value("posterior_mean_coef2", t) * x_t


def q_sample(x_start: torch.Tensor, noise_level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_noisy = gamma x_0 + sqrt(1 - gamma^2) eps, gamma (N,) broadcast over (N, C, H, W)."""
    gamma = noise_level.reshape(-1, *([1] * (x_start.ndim - 1))).to(x_start.dtype)
    return gamma * x_start + (1.0 - gamma ** 2).sqrt() * noise


def _broadcast(gamma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return gamma.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def training_target(prediction: str, x_start: torch.Tensor, noise: torch.Tensor, noise_level: torch.Tensor):
    """What the network learns to output: eps (reference), v = gamma eps - sigma x_0, or x_0 itself."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x_start
    gamma = _broadcast(noise_level, x_start)
    return gamma * noise - (1.0 - gamma ** 2).sqrt() * x_start


def split_prediction(prediction: str, output: torch.Tensor, x_t: torch.Tensor, noise_level: torch.Tensor):
    """(eps, x_0) implied by the network's `output` at x_t = gamma x_0 + sigma eps.

    eps-prediction divides by gamma to get x_0, which multiplies any error of eps by 1 / gamma (about
    150 at the end of the reference's schedules); v and x_0 prediction keep both estimates bounded.
    """
    gamma = _broadcast(noise_level, x_t)
    sigma = (1.0 - gamma ** 2).clamp_min(0.0).sqrt()
    if prediction == "eps":
        return output, (x_t - sigma * output) / gamma
    if prediction == "x0":
        return (x_t - gamma * output) / sigma.clamp_min(1e-8), output
    return sigma * x_t + gamma * output, gamma * x_t - sigma * output


def loss_weights(weighting: str, prediction: str, noise_level: torch.Tensor, snr_gamma: float = 5.0) -> torch.Tensor:
    """Per-sample loss weights (N,). 'min_snr' (Hang et al. 2023) weights every level as an x_0 loss
    capped at SNR = snr_gamma, expressed for the chosen target."""
    if weighting == "none":
        return torch.ones_like(noise_level)
    gamma2 = noise_level.double() ** 2
    snr = gamma2 / (1.0 - gamma2).clamp_min(1e-12)
    capped_snr = snr.clamp(max=snr_gamma)
    divisor = {"eps": snr, "v": snr + 1.0, "x0": torch.ones_like(snr)}[prediction]
    return (capped_snr / divisor).float()


def clip_start(x_start: torch.Tensor, mode: str, percentile: float = 0.995) -> torch.Tensor:
    """Keep x_0 in [-1, 1]: 'static' clamps (reference); 'dynamic' (Imagen) divides each sample by
    its `percentile` absolute value when that exceeds 1, then clamps; 'none' leaves it."""
    if mode == "static":
        return x_start.clamp(-1.0, 1.0)
    if mode == "dynamic":
        flat = x_start.reshape(x_start.shape[0], -1).abs().float()
        scale = torch.quantile(flat, percentile, dim=1).clamp_min(1.0).to(x_start.dtype)
        return (x_start / _broadcast(scale, x_start)).clamp(-1.0, 1.0)
    return x_start


class GaussianDiffusion(nn.Module):
    """Training loss and samplers around a noise-predicting network and one NoiseSchedule.

    `t_per_sample=False` is the reference: one step t per batch (each sample still gets its own
    gamma in that step's interval); True draws t per sample. Loss types: 'l1' / 'l2' averaged over
    all elements (the reference back-propagates its summed loss divided by b*c*h*w), 'l1_sum' /
    'l2_sum' the raw sum. `prediction` is what the network outputs (eps: reference; v; x0),
    `loss_weighting` 'none' (reference) or 'min_snr', `clipping` how x_0 estimates are kept in
    [-1, 1] when `clip_denoised` (static: reference).
    """

    def __init__(self, denoise_fn: nn.Module, image_size: int, channels: int, schedule: NoiseSchedule,
                 loss_type: str = "l1", t_per_sample: bool = False, clip_denoised: bool = True,
                 prediction: str = "eps", loss_weighting: str = "none", clipping: str = "static",
                 snr_gamma: float = 5.0):
        super().__init__()
        for name, value, allowed in (("loss type", loss_type, LOSS_TYPES), ("prediction", prediction, PREDICTIONS),
                                     ("loss weighting", loss_weighting, LOSS_WEIGHTINGS),
                                     ("clipping", clipping, CLIPPING)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r} (expected one of {', '.join(allowed)})")
        self.prediction, self.loss_weighting, self.clipping = prediction, loss_weighting, clipping
        self.snr_gamma = float(snr_gamma)
        self.denoise_fn = denoise_fn
        self.image_size = image_size
        self.channels = channels
        self.schedule = schedule
        self.loss_type = loss_type
        self.t_per_sample = t_per_sample
        self.clip_denoised = clip_denoised

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def draw_noise_levels(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch,) float32 gammas: t uniform in 1..T, gamma uniform in [gamma_{t-1}, gamma_t]."""
        levels = self.schedule.noise_levels.to(device)
        count = batch if self.t_per_sample else 1
        t = torch.randint(1, self.num_timesteps + 1, (count,), generator=generator, device=device)
        lo, hi = levels[t - 1], levels[t]
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        return (hi + (lo - hi) * u).float()

    def training_loss(self, x_start: torch.Tensor, generator: torch.Generator | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss between the true noise and the network's prediction for a batch x_0 (N, C, H, W)."""
        gamma = self.draw_noise_levels(x_start.shape[0], x_start.device, generator)
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        output = self.denoise_fn(q_sample(x_start, gamma, noise), gamma)
        return self.loss_from_output(output, x_start, noise, gamma)

    def loss_from_output(self, output: torch.Tensor, x_start: torch.Tensor, noise: torch.Tensor,
                         gamma: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The loss of the network's output for targets built from (x_0, eps, gamma); summed losses
        are multiplied by `scale` (the number of processes under DDP)."""
        target = training_target(self.prediction, x_start, noise, gamma)
        error = output.float() - target.float()
        per_element = error.abs() if self.loss_type.startswith("l1") else error ** 2
        if self.loss_weighting != "none":
            per_element = per_element * _broadcast(loss_weights(self.loss_weighting, self.prediction, gamma,
                                                                self.snr_gamma).to(per_element.device), per_element)
        return per_element.sum() * scale if self.loss_type.endswith("_sum") else per_element.mean()

    def forward(self, x_start: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.training_loss(x_start, generator)

    # sampling ---------------------------------------------------------------------------------

    def _predict(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x_0) estimated at step t; x_0 clipped to [-1, 1] (and eps made consistent) if asked."""
        gamma = torch.full((x.shape[0],), self.schedule.value("sqrt_alphas_cumprod", t), device=x.device)
        output = self.denoise_fn(x, gamma).to(x.dtype)
        if self.prediction == "eps":
            eps = output
            x_start = self.schedule.predict_start_from_noise(x, t, eps)
        else:
            eps, x_start = split_prediction(self.prediction, output, x, gamma.double())
        if self.clip_denoised and self.clipping != "none":
            x_start = clip_start(x_start, self.clipping)
            eps = self.schedule.predict_noise_from_start(x, t, x_start)
        return eps, x_start

    def _initial_noise(self, shape, device, generator, noise):
        if noise is not None:
            return noise.to(device)
        return torch.randn(shape, generator=generator, device=device)

    @torch.no_grad()
    def ancestral_sample(self, shape, device, generator: torch.Generator | None = None,
                         noise: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
        """The reference sampler: all T steps of p(x_{t-1} | x_t). Returns x_0 (N, C, H, W)."""
        x = self._initial_noise(shape, device, generator, noise)
        for t in tqdm(reversed(range(self.num_timesteps)), total=self.num_timesteps, desc="ancestral",
                      disable=not progress, leave=False):
            _, x_start = self._predict(x, t)
            mean = self.schedule.q_posterior_mean(x_start, x, t)
            if t > 0:
                std = math.exp(0.5 * self.schedule.value("posterior_log_variance_clipped", t))
                mean = mean + std * torch.randn(x.shape, generator=generator, device=device)
            x = mean
        return x

    def ddim_timesteps(self, steps: int, spacing: str = "uniform") -> list[int]:
        """`steps` distinct indices into the schedule from T-1 down to 0 (descending): evenly spaced
        ('uniform', DDIM's) or evenly spaced in log SNR ('logsnr', DPM-Solver's), which spends fewer
        steps where the linear schedule's noise changes little and more near the data."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"DDIM steps must be between 1 and {self.num_timesteps}, got {steps}")
        if spacing not in SPACINGS:
            raise ValueError(f"unknown step spacing {spacing!r} (expected one of {', '.join(SPACINGS)})")
        if spacing == "uniform" or steps == 1:
            spaced = np.linspace(self.num_timesteps - 1, 0, steps)
            return sorted({int(round(v)) for v in spaced}, reverse=True)
        abar = self.schedule.alphas_cumprod.numpy()
        log_snr = np.log(abar / (1.0 - abar))  # decreasing in t
        targets = np.linspace(log_snr[-1], log_snr[0], steps)
        chosen = {int(np.argmin(np.abs(log_snr - v))) for v in targets}
        # rounding may merge neighbours near the ends: fill up with the uniform grid's indices
        for v in np.linspace(self.num_timesteps - 1, 0, self.num_timesteps):
            if len(chosen) >= steps:
                break
            chosen.add(int(round(v)))
        return sorted(chosen | {0, self.num_timesteps - 1}, reverse=True)[:steps] if steps >= 2 else [0]

    @torch.no_grad()
    def ddim_sample(self, shape, device, steps: int = 50, eta: float = 0.0,
                    generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                    progress: bool = False, spacing: str = "uniform") -> torch.Tensor:
        """DDIM (Song et al. 2021) over a subsequence of the steps; eta = 0 is deterministic given the
        initial noise, eta = 1 with all T steps is the ancestral sampler. Returns x_0 (N, C, H, W)."""
        x = self._initial_noise(shape, device, generator, noise)
        timesteps = self.ddim_timesteps(steps, spacing)
        for i, t in enumerate(tqdm(timesteps, desc="ddim", disable=not progress, leave=False)):
            eps, x_start = self._predict(x, t)
            if i + 1 == len(timesteps):
                x = x_start
                break
            abar = self.schedule.value("alphas_cumprod", t)
            abar_next = self.schedule.value("alphas_cumprod", timesteps[i + 1])
            sigma = eta * math.sqrt((1 - abar_next) / (1 - abar) * (1 - abar / abar_next))
            x = math.sqrt(abar_next) * x_start + math.sqrt(max(1 - abar_next - sigma ** 2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=device)
        return x

    @torch.no_grad()
    def dpmpp2m_sample(self, shape, device, steps: int = 20, generator: torch.Generator | None = None,
                       noise: torch.Tensor | None = None, progress: bool = False,
                       spacing: str = "logsnr") -> torch.Tensor:
        """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep on the x_0 estimates, `steps`
        network evaluations. The first step and the step onto the last index are first order
        (= DDIM): that last jump in log SNR is long, and extrapolating over it overshoots."""
        x = self._initial_noise(shape, device, generator, noise)
        timesteps = self.ddim_timesteps(steps, spacing)

        def lam(t):  # log signal-to-noise ratio / 2
            abar = self.schedule.value("alphas_cumprod", t)
            return 0.5 * math.log(abar / (1.0 - abar))

        previous, h_previous = None, None
        for i, t in enumerate(tqdm(timesteps, desc="dpm++2m", disable=not progress, leave=False)):
            _, x_start = self._predict(x, t)
            if i + 1 == len(timesteps):
                return x_start
            t_next = timesteps[i + 1]
            h = lam(t_next) - lam(t)
            abar, abar_next = self.schedule.value("alphas_cumprod", t), self.schedule.value("alphas_cumprod", t_next)
            denoised = x_start
            if previous is not None and i + 2 < len(timesteps):
                r = h_previous / h
                denoised = (1 + 1 / (2 * r)) * x_start - (1 / (2 * r)) * previous
            x = math.sqrt((1 - abar_next) / (1 - abar)) * x - math.sqrt(abar_next) * math.expm1(-h) * denoised
            previous, h_previous = x_start, h
        return x

    @torch.no_grad()
    def sample(self, batch_size: int, device, sampler: str = "ancestral", steps: int = 50, eta: float = 0.0,
               generator: torch.Generator | None = None, progress: bool = False,
               spacing: str | None = None) -> torch.Tensor:
        """(batch_size, channels, image_size, image_size) samples in about [-1, 1]."""
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        if sampler == "ancestral":
            return self.ancestral_sample(shape, device, generator, progress=progress)
        if sampler == "ddim":
            return self.ddim_sample(shape, device, steps, eta, generator, progress=progress,
                                    spacing=spacing or "uniform")
        if sampler == "dpmpp2m":
            return self.dpmpp2m_sample(shape, device, steps, generator, progress=progress,
                                       spacing=spacing or "logsnr")
        raise ValueError(f"unknown sampler {sampler!r} (expected one of {', '.join(SAMPLERS)})")
