"""Prediction targets, loss weights, clipping and the samplers, checked with exact denoisers.

The oracles below know the data distribution, so their outputs are the true posterior quantities
(computed here by hand, not by ubf/models/diffusion.py): whatever the samplers get wrong with them is
the sampler's fault, and whatever goes wrong with the posterior *median* (what an L1 loss learns)
is the loss's fault.
"""
import math

import pytest
import torch

from ubf.evaluation.roughness import laplacian_energy
from ubf.models.diffusion import (GaussianDiffusion, NoiseSchedule, clip_start, loss_weights, make_beta_schedule,
                              split_prediction, training_target)


def test_targets_and_their_inversion_by_hand():
    g = torch.tensor([0.6, 0.8])
    x0 = torch.tensor([0.5, -1.0]).reshape(2, 1, 1, 1)
    eps = torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)
    x_t = torch.tensor([0.6 * 0.5 + 0.8 * 1.0, 0.8 * -1.0 + 0.6 * 2.0]).reshape(2, 1, 1, 1)  # g x0 + sigma eps
    v = torch.tensor([0.6 * 1.0 - 0.8 * 0.5, 0.8 * 2.0 - 0.6 * -1.0]).reshape(2, 1, 1, 1)  # g eps - sigma x0
    torch.testing.assert_close(training_target("v", x0, eps, g), v)
    torch.testing.assert_close(training_target("eps", x0, eps, g), eps)
    torch.testing.assert_close(training_target("x0", x0, eps, g), x0)
    for prediction, output in (("eps", eps), ("v", v), ("x0", x0)):
        got_eps, got_x0 = split_prediction(prediction, output, x_t, g)
        torch.testing.assert_close(got_eps, eps, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got_x0, x0, atol=1e-6, rtol=1e-6)


def test_min_snr_weights_by_hand():
    g = torch.tensor([0.6, 0.99])
    snr = [0.36 / 0.64, 0.9801 / 0.0199]
    torch.testing.assert_close(loss_weights("min_snr", "eps", g).double(),
                               torch.tensor([1.0, 5 / snr[1]], dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(loss_weights("min_snr", "v", g).double(),
                               torch.tensor([snr[0] / (snr[0] + 1), 5 / (snr[1] + 1)], dtype=torch.float64),
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(loss_weights("min_snr", "x0", g).double(),
                               torch.tensor([snr[0], 5.0], dtype=torch.float64), rtol=1e-5, atol=0)
    assert torch.equal(loss_weights("none", "eps", g), torch.ones(2))


def test_dynamic_clipping_rescales_by_the_percentile():
    x = torch.linspace(-3, 3, 201).reshape(1, 1, 1, 201)  # |x| quantile 0.995 is about 2.985
    scale = torch.quantile(x.abs().flatten(), 0.995)
    torch.testing.assert_close(clip_start(x, "dynamic"), (x / scale).clamp(-1, 1))
    inside = torch.tensor([-0.5, 0.2, 0.9]).reshape(1, 1, 1, 3)
    torch.testing.assert_close(clip_start(inside, "dynamic"), inside)  # never scaled up
    assert clip_start(x, "static").abs().max() == 1.0
    assert torch.equal(clip_start(x, "none"), x)


def test_unknown_options_are_refused():
    sched = NoiseSchedule(make_beta_schedule("linear", 10, 1e-3, 0.1))
    for kwargs in ({"prediction": "score"}, {"loss_weighting": "p2"}, {"clipping": "soft"}):
        with pytest.raises(ValueError, match="unknown"):
            GaussianDiffusion(torch.nn.Identity(), 4, 1, sched, **kwargs)


class GaussianOracle(torch.nn.Module):
    """Exact E[eps | x_t] (or v, x0) for i.i.d. pixels x_0 ~ N(mu, s^2)."""

    def __init__(self, mu: float, s: float, prediction: str = "eps"):
        super().__init__()
        self.mu, self.s, self.prediction = mu, s, prediction

    def forward(self, x, gamma):
        g = gamma.double().reshape(-1, 1, 1, 1)
        sigma = (1 - g ** 2).sqrt()
        eps = sigma * (x.double() - g * self.mu) / (g ** 2 * self.s ** 2 + sigma ** 2)
        x0 = self.mu + g * self.s ** 2 * (x.double() - g * self.mu) / (g ** 2 * self.s ** 2 + sigma ** 2)
        return {"eps": eps, "x0": x0, "v": g * eps - sigma * x0}[self.prediction].to(x.dtype)


DEMO_SCHEDULE = NoiseSchedule(make_beta_schedule("linear", 1000, 1e-6, 2e-2))


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_every_parameterisation_samples_the_gaussian(prediction):
    diffusion = GaussianDiffusion(GaussianOracle(0.2, 0.3, prediction), 32, 1, DEMO_SCHEDULE, prediction=prediction,
                                  clipping="none")
    x = diffusion.sample(4, "cpu", sampler="dpmpp2m", steps=20, generator=torch.Generator().manual_seed(0)).double()
    assert abs(x.mean().item() - 0.2) < 0.02
    assert abs(x.std().item() - 0.3) < 0.015


def test_dpm_solver_keeps_the_spread_that_ten_uniform_ddim_steps_lose():
    """With the exact denoiser, DDIM over 10 evenly spaced steps of the demo schedule shrinks the
    samples' spread by half (one long last jump returns a posterior mean); DPM-Solver++(2M) on a
    log-SNR grid with the same 10 evaluations keeps it within 3 %."""
    s = 0.2
    diffusion = GaussianDiffusion(GaussianOracle(0.0, s), 32, 1, DEMO_SCHEDULE, clipping="none")
    spread = {}
    for sampler in ("ddim", "dpmpp2m"):
        x = diffusion.sample(4, "cpu", sampler=sampler, steps=10, generator=torch.Generator().manual_seed(0))
        spread[sampler] = x.double().std().item()
    assert abs(spread["dpmpp2m"] - s) < 0.03 * s, spread
    assert spread["ddim"] < 0.6 * s, spread


def test_logsnr_spacing_is_even_in_log_snr():
    diffusion = GaussianDiffusion(torch.nn.Identity(), 4, 1, DEMO_SCHEDULE)
    steps = diffusion.ddim_timesteps(10, "logsnr")
    assert len(steps) == 10 and steps[0] == 999 and steps[-1] == 0 and steps == sorted(steps, reverse=True)
    abar = DEMO_SCHEDULE.alphas_cumprod.double()
    log_snr = torch.log(abar / (1 - abar))[steps]
    gaps = log_snr[1:] - log_snr[:-1]
    # even up to the rounding to integer steps, which matters only at the data end (the last gaps,
    # where one step of the linear schedule spans a large change of log SNR)
    assert gaps[:-2].max() / gaps[:-2].min() < 1.1, gaps
    assert gaps.min() > 0.8 * gaps.mean()
    assert diffusion.ddim_timesteps(10, "uniform") == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


class TwoLevelOracle(torch.nn.Module):
    """i.i.d. pixels x_0 = +1 with probability p, else -1. `statistic='mean'` returns the exact
    E[eps | x_t] (what an L2 loss learns); 'median' the posterior median of eps (what L1 learns)."""

    def __init__(self, p: float, statistic: str):
        super().__init__()
        self.log_odds, self.statistic = math.log(p / (1 - p)), statistic

    def forward(self, x, gamma):
        g = gamma.double().reshape(-1, 1, 1, 1)
        var = 1 - g ** 2
        # log p(+1 | x_t) - log p(-1 | x_t) = prior log odds + 2 g x_t / sigma^2
        p_plus = torch.sigmoid(self.log_odds + 2 * g * x.double() / var)
        x0 = 2 * p_plus - 1 if self.statistic == "mean" else torch.where(p_plus > 0.5, 1.0, -1.0).double()
        return ((x.double() - g * x0) / var.sqrt()).to(x.dtype)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_the_posterior_median_that_an_l1_loss_learns_biases_the_samples(sampler):
    """Abundance maps sit mostly at -1 with some mass at +1. With the posterior mean (L2's optimum)
    the samplers keep the share of +1 pixels; with the posterior median (L1's optimum, the
    reference's loss) the estimate of x_0 is a hard per-pixel decision from the first steps on,
    and the share collapses."""
    p = 0.25
    schedule = NoiseSchedule(make_beta_schedule("linear", 200, 1e-4, 0.1))
    share = {}
    for statistic in ("mean", "median"):
        diffusion = GaussianDiffusion(TwoLevelOracle(p, statistic), 32, 1, schedule)
        x = diffusion.sample(4, "cpu", sampler=sampler, steps=200, eta=1.0,
                             generator=torch.Generator().manual_seed(0))
        share[statistic] = (x > 0).double().mean().item()
    assert abs(share["mean"] - p) < 0.03, share
    assert share["median"] < 0.75 * p, share


def test_laplacian_energy_by_hand():
    flat = torch.full((1, 1, 5, 5), 0.3)
    assert laplacian_energy(flat).item() == 0.0
    spike = torch.zeros(1, 1, 5, 5)
    spike[0, 0, 2, 2] = 1.0
    # interior 3 x 3: centre -4, its 4 neighbours +1 each, corners 0 -> mean |.| = 8 / 9
    assert laplacian_energy(spike).item() == pytest.approx(8 / 9)
