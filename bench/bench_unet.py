"""The SR3 UNet's training step against the reference UNet, and the speed options, as JSON lines.

    python bench/bench_unet.py --reference REF_DIR/unet.py [--size 32 --batch 4 --repeats 7]
    python bench/bench_unet.py --reference ... --only curves --curve-steps 200
    python bench/bench_unet.py --reference ... --only profile

`--reference` is a file holding the authors' `UNet` class (model/sr3_modules/unet.py of their public
code, copied into a scratch folder outside this repository; it is never part of the repo). Without it
only our variants are timed.

1. `step`: one training step (forward, L1 loss, backward, Adam) of the paper's UNet (inner 64, mults
   1-2-4-8-8, attention at 16, 2 res blocks, dropout 0.2) with the same weights and inputs in every
   variant; the variants are timed in turn, round after round, in this one process, so the machine's
   load hits them alike; medians and ratios to the reference's median are printed. Variants: the
   reference; ours by default; ours with channels-last; with bf16 autocast on the CPU; with the
   attention as two matmuls instead of `F.scaled_dot_product_attention`; with `torch.compile`
   (`--compile`; steady state after warm-up steps); and all the numerically safe options together.
2. `profile`: `aten::copy_` calls and their share of the step's self CPU time, per variant.
3. `curves`: `--curve-steps` training steps of a small UNet from the same seed on the same data,
   per option; the largest loss difference to the fp32 default run.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ubf.models.sr3_unet import SR3UNet, count_parameters  # noqa: E402

PAPER = dict(in_channel=5, out_channel=5, inner_channel=64, norm_groups=32, channel_mults=(1, 2, 4, 8, 8),
             attn_res=(16,), res_blocks=2, dropout=0.2)
SMALL = dict(in_channel=5, out_channel=5, inner_channel=16, norm_groups=8, channel_mults=(1, 2, 2),
             attn_res=(8,), res_blocks=1, dropout=0.0)


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def load_reference(path: str):
    spec = importlib.util.spec_from_file_location("reference_unet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UNet


class Variant:
    """A model, its optimizer and the options it runs with (memory format, autocast dtype, compile)."""

    def __init__(self, name: str, model: torch.nn.Module, channels_last=False, bf16=False, compile=False):
        self.name, self.channels_last, self.bf16 = name, channels_last, bf16
        self.module = model.to(memory_format=torch.channels_last) if channels_last else model
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=1e-4)
        self.forward = torch.compile(self.module) if compile else self.module

    def step(self, x: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> float:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            prediction = self.forward(x, level)
        loss = (prediction.float() - noise).abs().sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def make_variants(config: dict, size: int, reference, names: list[str]) -> list[Variant]:
    torch.manual_seed(0)
    base = SR3UNet(image_size=size, **config)
    state = base.state_dict()

    def ours(**kwargs) -> SR3UNet:
        model = SR3UNet(image_size=size, **config, **kwargs)
        model.load_state_dict(state)
        return model

    builders = {
        "ours": lambda: Variant("ours", ours()),
        "channels_last": lambda: Variant("channels_last", ours(), channels_last=True),
        "bf16": lambda: Variant("bf16", ours(), bf16=True),
        "matmul_attention": lambda: Variant("matmul_attention", ours(fused_attention=False)),
        "compile": lambda: Variant("compile", ours(), compile=True),
        "channels_last+bf16": lambda: Variant("channels_last+bf16", ours(), channels_last=True, bf16=True),
        "channels_last+bf16+compile": lambda: Variant("channels_last+bf16+compile", ours(), channels_last=True,
                                                      bf16=True, compile=True),
    }
    variants = []
    if reference is not None:
        model = reference(image_size=size, **{k: v for k, v in config.items()})
        model.load_state_dict(state)
        assert count_parameters(model) == count_parameters(base)
        variants.append(Variant("reference", model))
    variants += [builders[name]() for name in names]
    return variants


def inputs(batch: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 5, size, size, generator=g) * 2 - 1, torch.rand(batch, generator=g),
            torch.randn(batch, 5, size, size, generator=g))


def bench_steps(args, reference) -> None:
    # --variants is the exact list (compile variants may be named there); --compile adds both otherwise
    names = args.variants or ["ours", "channels_last", "bf16", "matmul_attention", "channels_last+bf16"]
    if args.compile and not args.variants:
        names += ["compile", "channels_last+bf16+compile"]
    variants = make_variants(PAPER, args.size, reference, names)
    x, level, noise = inputs(args.batch, args.size, 0)
    for variant in variants:  # warm-up (compilation happens here)
        started = time.perf_counter()
        for _ in range(args.warmup + (2 if "compile" in variant.name else 0)):
            variant.step(x, level, noise)
        emit(bench="unet_warmup", variant=variant.name, seconds=round(time.perf_counter() - started, 1))
    times = {v.name: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            started = time.perf_counter()
            variant.step(x, level, noise)
            times[variant.name].append(time.perf_counter() - started)
    base = statistics.median(times["reference"]) if reference is not None else statistics.median(times["ours"])
    for name, values in times.items():
        median = statistics.median(values)
        emit(bench="unet_step", size=args.size, batch=args.batch, threads=torch.get_num_threads(), variant=name,
             median_s=round(median, 3), min_s=round(min(values), 3), max_s=round(max(values), 3),
             ratio_to_reference=round(median / base, 3) if reference is not None else None,
             repeats=args.repeats, load_avg=os.getloadavg()[0])


def bench_profile(args, reference) -> None:
    from torch.profiler import ProfilerActivity, profile
    variants = make_variants(PAPER, args.size, reference, ["ours", "channels_last"])
    x, level, noise = inputs(args.batch, args.size, 0)
    for variant in variants:
        variant.step(x, level, noise)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                variant.step(x, level, noise)
        events = {e.key: e for e in prof.key_averages()}
        total = sum(e.self_cpu_time_total for e in events.values())
        copies = events.get("aten::copy_")
        emit(bench="unet_profile", variant=variant.name, steps=3, size=args.size, batch=args.batch,
             copy_calls=copies.count if copies else 0,
             copy_share=round(copies.self_cpu_time_total / total, 4) if copies else 0.0)


def bench_curves(args) -> None:
    """Loss curves of the small UNet from one seed on one data stream, per option."""
    size, batch = 32, 4
    g = torch.Generator().manual_seed(1)
    data = torch.distributions.Dirichlet(torch.ones(5)).sample((16, size, size)).permute(0, 3, 1, 2) * 2 - 1
    options = {"ours": {}, "channels_last": {"channels_last": True}, "bf16": {"bf16": True},
               "matmul_attention": {"fused": False}}
    if args.compile:
        options["compile"] = {"compile": True}
    curves = {}
    for name, opts in options.items():
        torch.manual_seed(0)
        model = SR3UNet(image_size=size, fused_attention=opts.get("fused", True), **SMALL)
        variant = Variant(name, model, channels_last=opts.get("channels_last", False), bf16=opts.get("bf16", False),
                          compile=opts.get("compile", False))
        g.manual_seed(1)
        losses = []
        started = time.perf_counter()
        for step in range(args.curve_steps):
            rows = torch.randint(0, len(data), (batch,), generator=g)
            level, noise = torch.rand(batch, generator=g), torch.randn(batch, 5, size, size, generator=g)
            gamma = level.view(-1, 1, 1, 1)
            x = gamma * data[rows] + (1 - gamma ** 2).sqrt() * noise
            losses.append(variant.step(x, level, noise) / noise.numel())  # mean L1 per element
        curves[name] = losses
        difference = max(abs(a - b) for a, b in zip(losses, curves["ours"]))
        emit(bench="unet_curve", variant=name, steps=args.curve_steps, first_loss=round(losses[0], 5),
             last10_mean=round(statistics.mean(losses[-10:]), 5), max_abs_difference_to_ours=round(difference, 6),
             max_rel_difference_to_ours=round(max(abs(a - b) / b for a, b in zip(losses, curves["ours"])), 6),
             seconds=round(time.perf_counter() - started, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="a .py file with the reference's UNet class (scratch copy)")
    parser.add_argument("--only", choices=("step", "profile", "curves"), action="append")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--curve-steps", type=int, default=200)
    parser.add_argument("--variants", nargs="+", help="our variants to time, exactly (default: all but compile; "
                        "compile and channels_last+bf16+compile may be named)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = load_reference(args.reference) if args.reference else None
    emit(bench="machine", nproc=os.cpu_count(), torch=torch.__version__, threads=args.threads,
         cpu_capability=torch.backends.cpu.get_cpu_capability(), mkldnn=torch.backends.mkldnn.is_available(),
         load_avg=[round(v, 2) for v in os.getloadavg()])
    for part in args.only or ["profile", "step", "curves"]:
        {"step": lambda: bench_steps(args, reference), "profile": lambda: bench_profile(args, reference),
         "curves": lambda: bench_curves(args)}[part]()
    emit(bench="load_after", load_avg=[round(v, 2) for v in os.getloadavg()])


if __name__ == "__main__":
    main()
