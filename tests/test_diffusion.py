import math

import numpy as np
import pytest
import torch

from ubf.models.diffusion import GaussianDiffusion, NoiseSchedule, make_beta_schedule, q_sample
from ubf.models.sr3_unet import SR3UNet



# schedules ---------------------------------------------------------------------------------------

def test_linear_quad_warmup_const_jsd_closed_forms():
    np.testing.assert_allclose(make_beta_schedule("linear", 5, 1e-4, 5e-4), [1e-4, 2e-4, 3e-4, 4e-4, 5e-4])
    np.testing.assert_allclose(make_beta_schedule("quad", 3, 0.01, 0.09), [0.01, 0.04, 0.09])  # sqrt: .1 .2 .3
    warm = make_beta_schedule("warmup10", 20, 0.001, 0.002)
    np.testing.assert_allclose(warm[:2], [0.001, 0.002])
    np.testing.assert_allclose(warm[2:], 0.002)
    warm50 = make_beta_schedule("warmup50", 4, 0.1, 0.3)
    np.testing.assert_allclose(warm50, [0.1, 0.3, 0.3, 0.3])
    np.testing.assert_allclose(make_beta_schedule("const", 3, 0.1, 0.2), [0.2, 0.2, 0.2])
    np.testing.assert_allclose(make_beta_schedule("jsd", 4), [1 / 4, 1 / 3, 1 / 2, 1])
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_beta_schedule("sigmoid", 10)


def test_cosine_schedule_alpha_bar_is_squared_cosine():
    T, s = 100, 8e-3
    betas = make_beta_schedule("cosine", T, cosine_s=s)
    alpha_bar = np.cumprod(1 - betas)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    expected = np.array([f(t) / f(0) for t in range(1, T + 1)])
    unclipped = betas < 0.999
    assert unclipped[:-1].all() and not unclipped[-1]  # only the last beta hits the clip
    np.testing.assert_allclose(alpha_bar[:-1], expected[:-1], rtol=1e-10)


def test_schedule_coefficients_by_hand():
    sched = NoiseSchedule([0.1, 0.2])
    # alphas 0.9, 0.8; alpha_bar 0.9, 0.72
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), [0.9, 0.72])
    np.testing.assert_allclose(sched.alphas_cumprod_prev.numpy(), [1.0, 0.9])
    np.testing.assert_allclose(sched.noise_levels.numpy(), [1.0, math.sqrt(0.9), math.sqrt(0.72)])
    np.testing.assert_allclose(sched.posterior_variance.numpy(), [0.0, 0.2 * 0.1 / 0.28])
    np.testing.assert_allclose(sched.posterior_log_variance_clipped[0].item(), math.log(1e-20))
    np.testing.assert_allclose(sched.posterior_mean_coef1.numpy(), [1.0, 0.2 * math.sqrt(0.9) / 0.28])
    np.testing.assert_allclose(sched.posterior_mean_coef2.numpy(), [0.0, 0.1 * math.sqrt(0.8) / 0.28])
    np.testing.assert_allclose(sched.sqrt_recipm1_alphas_cumprod.numpy(), np.sqrt([1 / 0.9 - 1, 1 / 0.72 - 1]))


def test_posterior_matches_bayes_on_random_schedule():
    betas = make_beta_schedule("linear", 50, 1e-3, 0.2)
    sched = NoiseSchedule(betas)
    abar = np.cumprod(1 - betas)
    for t in (1, 10, 49):
        # q(x_{t-1}|x_t,x_0) precision = 1/(1-abar_{t-1}) + alpha_t/beta_t
        precision = 1 / (1 - abar[t - 1]) + (1 - betas[t]) / betas[t]
        np.testing.assert_allclose(sched.posterior_variance[t].item(), 1 / precision, rtol=1e-12)
        x0, xt = 0.3, -0.7
        mean = (math.sqrt(abar[t - 1]) * x0 / (1 - abar[t - 1]) + math.sqrt(1 - betas[t]) * xt / betas[t]) / precision
        got = sched.q_posterior_mean(torch.tensor(x0, dtype=torch.float64), torch.tensor(xt, dtype=torch.float64), t)
        np.testing.assert_allclose(got.item(), mean, rtol=1e-12)


def test_predict_start_inverts_q_sample_at_grid_levels():
    sched = NoiseSchedule(make_beta_schedule("linear", 20, 1e-3, 0.1))
    x0 = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for t in (0, 7, 19):
        xt = q_sample(x0, sched.sqrt_alphas_cumprod[t].expand(2), eps)
        torch.testing.assert_close(sched.predict_start_from_noise(xt, t, eps), x0)
        torch.testing.assert_close(sched.predict_noise_from_start(xt, t, x0), eps)


def test_q_sample_statistics():
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4, 1, 100, 100), 0.5)
    noise = torch.randn(x0.shape, generator=g)
    xt = q_sample(x0, torch.full((4,), 0.6), noise)
    assert abs(xt.mean().item() - 0.3) < 0.01       # gamma * x0
    assert abs(xt.std().item() - 0.8) < 0.01        # sqrt(1 - gamma^2)


# training noise levels and loss ------------------------------------------------------------------

class Zero(torch.nn.Module):
    def forward(self, x, level):
        return torch.zeros_like(x)


def test_noise_levels_one_interval_per_batch_or_per_sample():
    sched = NoiseSchedule(make_beta_schedule("linear", 10, 0.05, 0.3))
    levels = sched.noise_levels.numpy()
    interval = lambda g: np.searchsorted(-levels, -g)  # levels decrease: gamma in (levels[t], levels[t-1]] -> t
    per_batch = GaussianDiffusion(Zero(), 4, 1, sched)
    per_sample = GaussianDiffusion(Zero(), 4, 1, sched, t_per_sample=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        gamma = per_batch.draw_noise_levels(64, "cpu", gen).double().numpy()
        assert len(set(interval(gamma))) == 1
        assert gamma.min() >= levels[-1] - 1e-6 and gamma.max() <= 1.0
    gamma = per_sample.draw_noise_levels(256, "cpu", gen).double().numpy()
    assert len(set(interval(gamma))) == 10


def test_loss_reductions():
    sched = NoiseSchedule(make_beta_schedule("linear", 10, 0.05, 0.3))
    x0 = torch.rand(2, 3, 4, 4)
    losses = {}
    for kind in ("l1", "l1_mean", "l1_sum", "l2", "l2_mean", "l2_sum"):
        diffusion = GaussianDiffusion(Zero(), 4, 3, sched, loss_type=kind)
        losses[kind] = diffusion.training_loss(x0, torch.Generator().manual_seed(5)).item()
    # Zero predicts nothing: the loss is the noise's own norm (the noise is drawn after t and gammas)
    gen = torch.Generator().manual_seed(5)
    GaussianDiffusion(Zero(), 4, 3, sched).draw_noise_levels(2, "cpu", gen)
    noise = torch.randn(2, 3, 4, 4, generator=gen)
    # the reference back-propagates L1Loss(reduction='sum') / (b*c*h*w): b*c*h*w = 2*3*4*4 = 96
    assert losses["l1"] == pytest.approx(noise.abs().sum().item() / 96, rel=1e-5)
    assert losses["l1_mean"] == pytest.approx(losses["l1"], rel=1e-6)
    assert losses["l1_sum"] == pytest.approx(noise.abs().sum().item(), rel=1e-5)
    assert losses["l2"] == pytest.approx((noise ** 2).sum().item() / 96, rel=1e-5)
    assert losses["l2_sum"] == pytest.approx(losses["l2"] * 96, rel=1e-5)


def test_training_on_a_fixed_batch_reduces_the_loss():
    torch.manual_seed(0)
    unet = SR3UNet(in_channel=2, out_channel=2, inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(),
                   res_blocks=1, image_size=8)
    diffusion = GaussianDiffusion(unet, 8, 2, NoiseSchedule(make_beta_schedule("linear", 100, 1e-4, 0.1)),
                                  loss_type="l1_mean")
    x0 = torch.rand(4, 2, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def held_out_loss():
        gen = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return sum(diffusion.training_loss(x0, gen).item() for _ in range(8)) / 8

    before = held_out_loss()
    optimizer = torch.optim.Adam(unet.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(7)
    for _ in range(200):
        loss = diffusion.training_loss(x0, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert after < 0.6 * before, (before, after)


# samplers ----------------------------------------------------------------------------------------

def tiny_diffusion(T=20, clip=True):
    torch.manual_seed(0)
    unet = SR3UNet(in_channel=2, out_channel=2, inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(4,),
                   res_blocks=1, image_size=8).eval()
    return GaussianDiffusion(unet, 8, 2, NoiseSchedule(make_beta_schedule("linear", T, 1e-3, 0.2)),
                             clip_denoised=clip)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_seeded_sampling_is_deterministic(sampler):
    diffusion = tiny_diffusion()
    draw = lambda seed: diffusion.sample(2, "cpu", sampler=sampler, steps=5, eta=0.5,
                                         generator=torch.Generator().manual_seed(seed))
    a, b, c = draw(1), draw(1), draw(2)
    assert a.shape == (2, 2, 8, 8)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_ddim_eta_zero_depends_only_on_the_initial_noise():
    diffusion = tiny_diffusion()
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    a = diffusion.ddim_sample(noise.shape, "cpu", steps=7, eta=0.0, generator=torch.Generator().manual_seed(1),
                              noise=noise)
    b = diffusion.ddim_sample(noise.shape, "cpu", steps=7, eta=0.0, generator=torch.Generator().manual_seed(2),
                              noise=noise)
    assert torch.equal(a, b)
    c = diffusion.ddim_sample(noise.shape, "cpu", steps=7, eta=1.0, generator=torch.Generator().manual_seed(1),
                              noise=noise)
    assert not torch.allclose(a, c)


def test_ddim_with_all_steps_and_eta_one_is_the_ancestral_sampler():
    diffusion = tiny_diffusion(T=15)
    shape = (2, 2, 8, 8)
    ancestral = diffusion.ancestral_sample(shape, "cpu", torch.Generator().manual_seed(4))
    ddim = diffusion.ddim_sample(shape, "cpu", steps=15, eta=1.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ddim, ancestral, atol=1e-4, rtol=1e-4)


def test_ddim_timesteps():
    diffusion = tiny_diffusion(T=20)
    assert diffusion.ddim_timesteps(20) == list(range(19, -1, -1))
    assert diffusion.ddim_timesteps(5) == [19, 14, 10, 5, 0]
    assert diffusion.ddim_timesteps(1) == [19]
    with pytest.raises(ValueError):
        diffusion.ddim_timesteps(21)


class GaussianOptimum(torch.nn.Module):
    """The exact noise predictor E[eps | x_t] for data x_0 ~ N(mu, s^2), conditioned on gamma."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, gamma):
        g = gamma.reshape(-1, 1, 1, 1).double()
        var = g ** 2 * self.s ** 2 + 1 - g ** 2
        return (torch.sqrt(1 - g ** 2) * (x.double() - g * self.mu) / var).to(x.dtype)


@pytest.mark.parametrize("sampler, steps", [("ancestral", None), ("ddim", 400)])
def test_samplers_recover_gaussian_data_with_the_exact_denoiser(sampler, steps):
    mu, s = 0.3, 0.2
    sched = NoiseSchedule(make_beta_schedule("linear", 400, 1e-4, 0.05))
    diffusion = GaussianDiffusion(GaussianOptimum(mu, s), 50, 1, sched, clip_denoised=False)
    x = diffusion.sample(4, "cpu", sampler=sampler, steps=steps or 50, eta=0.0,
                         generator=torch.Generator().manual_seed(0)).double()
    assert abs(x.mean().item() - mu) < 0.01
    assert abs(x.std().item() - s) < 0.01
