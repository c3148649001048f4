"""Stable Diffusion stage by stage: Easel against diffusers (and OpenVINO, when installed) on the
same SD 1.5-architecture weights, same threads, one command.

    cargo build --release
    /tmp/venv/bin/python benches/sd_vs_diffusers.py [--easel target/release/easel]
        [--work-dir /tmp/easel-bench] [--sizes 256 512] [--threads 2] [--reps 2] [--rounds 1]
        [--openvino] [--dtypes f32 bf16 f16]

For each size it runs `easel bench --json` (which makes the random-weight folder once, then
times text encoding, one UNet step with CFG at batch 2, VAE decode and VAE encode), then
diffusers on the exact same folder in a child process of its own (so each side's peak RSS is
its own): `UNet2DConditionModel`, `AutoencoderKL` and transformers' `CLIPTextModel`, fp32,
`torch.inference_mode`, one warm-up then the median of --reps. With --openvino, the same
diffusers UNet and VAE decoder are converted with `openvino.convert_model` at static shapes and
timed at f32 and bf16 inference precision with INFERENCE_NUM_THREADS = --threads.

Prints a table per size: milliseconds per stage and Easel ÷ reference (< 1 means Easel is
faster), plus peak RSS against the fp32 weight bytes. Run it on a quiet machine: both sides
use the same cores, one after the other, never at once. On a shared one, `--rounds 3`
alternates the engines three times and keeps each one's fastest time per stage.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STAGES = [
    ("text_encode_ms", "text encode (prompt + negative)"),
    ("unet_step_cfg_ms", "UNet step with CFG (batch 2)"),
    ("vae_decode_ms", "VAE decode"),
    ("vae_encode_ms", "VAE encode"),
]


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def diffusers_child(model, size, reps, threads):
    """Times diffusers on `model` and prints one JSON object (runs in its own process)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    import transformers
    import diffusers

    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Path(model)
    text = CLIPTextModel.from_pretrained(model / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(model / "unet").eval()
    vae = AutoencoderKL.from_pretrained(model / "vae").eval()
    out = {"size": size, "threads": threads, "torch": torch.__version__}
    with torch.inference_mode():
        # The bench folder has no tokenizer; encoding cost depends only on the 77 positions.
        ids = torch.randint(0, text.config.vocab_size, (1, 77))
        out["text_encode_ms"] = median_ms(lambda: (text(ids)[0], text(ids)[0]), reps + 1)
        ctx = torch.randn(2, 77, text.config.hidden_size)
        lat = torch.randn(2, unet.config.in_channels, size // 8, size // 8)
        t = torch.tensor(500.0)
        out["unet_step_cfg_ms"] = median_ms(lambda: unet(lat, t, encoder_hidden_states=ctx).sample, reps)
        out["peak_rss_after_unet_mib"] = peak_rss_mib()
        one = lat[:1] / vae.config.scaling_factor
        out["vae_decode_ms"] = median_ms(lambda: vae.decode(one).sample, reps)
        image = torch.rand(1, 3, size, size) * 2 - 1
        out["vae_encode_ms"] = median_ms(lambda: vae.encode(image).latent_dist.mean, reps)
    out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out))


def openvino_child(model, size, reps, threads):
    """Times OpenVINO on the diffusers UNet and VAE decoder, f32 and bf16 (own process)."""
    import torch
    import openvino as ov
    from diffusers import AutoencoderKL, UNet2DConditionModel
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    model = Path(model)
    unet = UNet2DConditionModel.from_pretrained(model / "unet").eval()
    vae = AutoencoderKL.from_pretrained(model / "vae").eval()

    class UNetFn(torch.nn.Module):
        def __init__(self, u):
            super().__init__()
            self.u = u

        def forward(self, lat, t, ctx):
            return self.u(lat, t, encoder_hidden_states=ctx, return_dict=False)[0]

    class Decode(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, z):
            return self.v.decode(z, return_dict=False)[0]

    lat = torch.randn(2, 4, size // 8, size // 8)
    t = torch.tensor(500.0)
    ctx = torch.randn(2, 77, 768)
    z = torch.randn(1, 4, size // 8, size // 8)
    core = ov.Core()
    out = {"size": size, "openvino": ov.__version__}
    with torch.no_grad():
        unet_ir = ov.convert_model(UNetFn(unet), example_input=(lat, t, ctx))
        vae_ir = ov.convert_model(Decode(vae), example_input=(z,))
    del unet, vae
    for precision in ["f32", "bf16"]:
        cfg = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
               "PERFORMANCE_HINT": "LATENCY"}
        cu = core.compile_model(unet_ir, "CPU", cfg)
        cv = core.compile_model(vae_ir, "CPU", cfg)
        ul, ut, uc, zz = lat.numpy(), t.numpy(), ctx.numpy(), z.numpy()
        out[f"unet_step_cfg_ms_{precision}"] = median_ms(lambda: cu([ul, ut, uc]), reps)
        out[f"vae_decode_ms_{precision}"] = median_ms(lambda: cv([zz]), reps)
        del cu, cv
    out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out))


def weight_bytes(model):
    return sum(
        p.stat().st_size
        for part in ["unet", "vae", "text_encoder"]
        for p in (Path(model) / part).glob("*.safetensors")
    )


def child(kind, model, size, reps, threads):
    cmd = [sys.executable, __file__, f"--{kind}-child", str(model), str(size), str(reps), str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if res.returncode != 0:
        sys.exit(f"{kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt(v, spec=".0f"):
    return "—" if v is None else format(v, spec)


def main():
    if len(sys.argv) == 6 and sys.argv[1] in ("--diffusers-child", "--openvino-child"):
        fn = diffusers_child if sys.argv[1] == "--diffusers-child" else openvino_child
        fn(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--easel", default="target/release/easel")
    parser.add_argument("--work-dir", default="/tmp/easel-bench")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the engines this many times; each keeps its fastest")
    parser.add_argument("--openvino", action="store_true")
    parser.add_argument("--dtypes", nargs="+", default=["f32"], choices=["f32", "f16", "bf16"],
                        help="Easel weight precisions to run (each against the same references)")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"{args.threads} threads, load average before: {load:.2f}")

    for size in args.sizes:
        # Rounds alternate the engines, and each stage keeps each engine's fastest round: on a
        # shared machine a slow round measures the neighbours, and alternating gives both
        # engines the same chances of a quiet moment.
        runs, ref, ov = [None] * len(args.dtypes), None, None
        for _ in range(args.rounds):
            for i, dtype in enumerate(args.dtypes):
                res = subprocess.run(
                    [args.easel, "bench", "--json", "--size", str(size), "--reps",
                     str(args.reps), "--work-dir", args.work_dir, "--dtype", dtype],
                    check=True, capture_output=True, text=True, env=os.environ,
                )
                runs[i] = fastest(runs[i], json.loads(res.stdout.strip().splitlines()[-1]))
            model = runs[0]["model"]
            ref = fastest(ref, child("diffusers", model, size, args.reps, args.threads))
            if args.openvino:
                ov = fastest(ov, child("openvino", model, size, args.reps, args.threads))
        ov = ov or {}
        for easel in runs:
            report(size, easel, ref, ov, weight_bytes(model) / 2**20)
    try:
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    except OSError:
        pass


def fastest(best, run):
    """`run`, with each timing (a key ending in `_ms`, or in `_ms_` and a precision) replaced
    by `best`'s where that is lower."""
    if best is None:
        return run
    out = dict(run)
    for key, value in run.items():
        if ("_ms" in key and isinstance(value, (int, float)) and
                isinstance(best.get(key), (int, float))):
            out[key] = min(value, best[key])
    return out


def report(size, easel, ref, ov, wbytes):
    """One table: Easel (at one weight precision) against the references, per stage."""
    print(f"\n{size}×{size}, Easel with {easel.get('dtype', 'f32')} weights  "
          f"(torch {ref['torch']}{', openvino ' + ov['openvino'] if ov else ''})")
    head = f"{'stage':<34}{'Easel ms':>10}{'diffusers':>11}{'ratio':>7}"
    if ov:
        head += f"{'OV f32':>9}{'ratio':>7}{'OV bf16':>9}{'ratio':>7}"
    print(head)
    for key, label in STAGES:
        e, d = easel.get(key), ref.get(key)
        line = f"{label:<34}{fmt(e):>10}{fmt(d):>11}{fmt(e / d if e and d else None, '.2f'):>7}"
        if ov:
            for prec in ["f32", "bf16"]:
                o = ov.get(f"{key}_{prec}")
                line += f"{fmt(o):>9}{fmt(e / o if e and o else None, '.2f'):>7}"
        print(line)
    e_rss = easel["peak_rss_mib"]["after_vae"]
    print(
        f"{'peak RSS MiB (× fp32 weights)':<34}{e_rss:>10.0f}{ref['peak_rss_mib']:>11.0f}"
        f"{e_rss / ref['peak_rss_mib']:>7.2f}   fp32 weights {wbytes:.0f} MiB: Easel "
        f"{e_rss / wbytes:.2f}×, diffusers {ref['peak_rss_mib'] / wbytes:.2f}×"
    )
    for stage in easel.get("profile_ms") or []:
        ops = ", ".join(f"{o['kind']} {o['ms']:.0f}" for o in stage["ops"])
        print(f"Easel {stage['stage']} by kind of op (ms): {ops}")


if __name__ == "__main__":
    main()
