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

Two more cases, each one command (every engine in a process of its own, one after the other;
peak RSS is each process's own maximum resident set, read with wait4):

    /tmp/venv/bin/python benches/sd_vs_diffusers.py --case turbo [--sizes 512] [--reps 2]
        [--model /tmp/easel-bench/sd21-turbo-random] [--dtypes f32 ...]

`--case turbo`: SD-Turbo's architecture (SD 2.1: OpenCLIP-H text encoder of 23 layers, UNet with
linear projections and 1024-wide cross-attention, SD 1.5's VAE), one step without CFG, i.e. the
time per image of a Turbo run: text encode of the prompt alone + one UNet step at batch 1 + VAE
decode. The random-weight fp32 diffusers folder (~5 GB, OpenAI's CLIP vocabulary with pad "!",
SD-Turbo's EulerDiscrete "trailing" scheduler config) is made once under --work-dir. Easel runs
`easel bench --cfg 0 --stages text,unet,vae-decode`; diffusers times CLIPTextModel, the UNet
at batch 1 and AutoencoderKL.decode (fp32), then the same weights through the real
`StableDiffusionPipeline` (1 step, guidance_scale 0, output_type "np") end to end.

    /tmp/venv/bin/python benches/sd_vs_diffusers.py --case sdxl [--sizes 1024] [--reps 1]
        [--model /tmp/easel-full/sdxl-single.safetensors]
        [--diffusers-model /tmp/easel-full/sdxl-diffusers-fp16] [--dtypes f32 bf16]

`--case sdxl`: one SDXL UNet step with CFG (batch 2), per precision: Easel on the single file
(`easel bench --stages unet`, weights kept in that precision, computed in f32) against diffusers'
`UNet2DConditionModel` alone, loaded from the same weights as a diffusers folder in torch's
float32 / bfloat16 / float16 (computed in that precision), called with random latents, timestep
500, random text states [2, 77, 2048], pooled [2, 1280] and time_ids (size, size, 0, 0, size,
size). A diffusers step that takes longer than --slow-s (default 360 s) is timed once, without
warm-up (reported). Easel loads the whole pipeline, diffusers only the UNet: the table also gives
Easel's peak less the text encoders' and VAE's weight bytes at its precision.
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


# SD-Turbo (stabilityai/sd-turbo): SD 2.1's UNet, OpenCLIP-H text encoder and SD 1.5's VAE.
TURBO_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=[5, 10, 20, 20],
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32, norm_eps=1e-5,
    act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, upcast_attention=False,
)
TURBO_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
    projection_dim=512, bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
)
SD_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215, act_fn="silu",
)
# SD-Turbo's scheduler_config.json (written by hand, so no other class defaults are baked in).
TURBO_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1,
    "timestep_spacing": "trailing", "prediction_type": "epsilon", "interpolation_type": "linear",
    "use_karras_sigmas": False, "set_alpha_to_one": False, "skip_prk_steps": True,
    "clip_sample": False, "sample_max_value": 1.0, "trained_betas": None,
}

TURBO_STAGES = [
    ("text_encode_ms", "text encode (prompt only)"),
    ("unet_step_cfg_ms", "UNet step (batch 1, no CFG)"),
    ("vae_decode_ms", "VAE decode"),
    ("per_image_ms", "time per image (sum)"),
]


def make_turbo_child(out):
    """Writes the random-weight SD-Turbo-architecture diffusers folder (fp32), once."""
    import shutil
    import torch
    import diffusers
    import transformers
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
    from make_checkpoints import openai_tokenizer_dir  # OpenAI's vocabulary, from the cargo registry

    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    torch.manual_seed(0)
    # Default initialisers: small random values whose activations stay O(1) (no denormals).
    unet = UNet2DConditionModel(**TURBO_UNET)
    vae = AutoencoderKL(**SD_VAE)
    text = CLIPTextModel(CLIPTextConfig(**TURBO_TEXT))
    openai_tokenizer_dir(tmp / "tokenizer", "!")  # SD 2.x pads with "!"
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(tmp / "tokenizer"),
        unet=unet, scheduler=EulerDiscreteScheduler.from_config(
            {k: v for k, v in TURBO_SCHEDULER.items() if k[0] != "_"}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp, safe_serialization=True)
    openai_tokenizer_dir(tmp / "tokenizer", "!")
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(TURBO_SCHEDULER, indent=1) + "\n")
    tmp.rename(out)
    print(json.dumps({"made": str(out)}))


def turbo_child(model, size, reps, threads):
    """Times diffusers on an SD-Turbo-architecture folder: one prompt, one UNet step at batch 1,
    VAE decode (fp32), then the whole StableDiffusionPipeline at 1 step (own process)."""
    import torch
    import diffusers
    import transformers
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTokenizer

    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Path(model)
    text = CLIPTextModel.from_pretrained(model / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(model / "unet").eval()
    vae = AutoencoderKL.from_pretrained(model / "vae").eval()
    out = {"size": size, "threads": threads, "torch": torch.__version__,
           "peak_rss_after_load_mib": peak_rss_mib()}
    with torch.inference_mode():
        # Encoding cost depends only on the 77 positions, not on which ids fill them.
        ids = torch.randint(0, text.config.vocab_size, (1, 77))
        out["text_encode_ms"] = median_ms(lambda: text(ids)[0], reps + 1)
        ctx = torch.randn(1, 77, text.config.hidden_size)
        lat = torch.randn(1, unet.config.in_channels, size // 8, size // 8)
        t = torch.tensor(999.0)  # SD-Turbo's one "trailing" step
        out["unet_step_cfg_ms"] = median_ms(lambda: unet(lat, t, encoder_hidden_states=ctx).sample, reps)
        z = lat / vae.config.scaling_factor
        out["vae_decode_ms"] = median_ms(lambda: vae.decode(z).sample, reps)
    out["peak_rss_mib"] = peak_rss_mib()
    # The same modules through the real pipeline: tokenizer, 1 Euler "trailing" step, no CFG,
    # decode and conversion to a numpy image.
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(model / "tokenizer"),
        unet=unet, scheduler=EulerDiscreteScheduler.from_pretrained(model / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a photograph of an astronaut riding a horse on the moon, highly detailed"
    with torch.inference_mode():
        out["pipeline_ms"] = median_ms(lambda: pipe(
            prompt, height=size, width=size, num_inference_steps=1, guidance_scale=0.0,
            output_type="np", generator=torch.Generator().manual_seed(0)), reps)
    out["pipeline_timesteps"] = [float(x) for x in pipe.scheduler.timesteps]
    out["peak_rss_with_pipeline_mib"] = peak_rss_mib()
    print(json.dumps(out))


TORCH_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def sdxl_child(folder, size, reps, threads, dtype, slow_s):
    """Times one SDXL UNet step with CFG (batch 2) in diffusers at `dtype` (own process)."""
    import torch
    import diffusers
    from diffusers import UNet2DConditionModel

    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dt = getattr(torch, TORCH_DTYPES[dtype])
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dt).eval()
    out = {"size": size, "threads": threads, "torch": torch.__version__, "dtype": str(dt),
           "load_ms": (time.perf_counter() - t0) * 1e3, "peak_rss_after_load_mib": peak_rss_mib()}
    lat = torch.randn(2, unet.config.in_channels, size // 8, size // 8, dtype=dt)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, dtype=dt)
    # The pooled text embedding's width: what the add embedding takes besides the 6 time ids.
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(2, pooled, dtype=dt),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=dt)}
    t = torch.tensor(500.0)

    def step():
        unet(lat, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample

    with torch.inference_mode():
        # The warm-up is timed too: when it alone runs past slow_s it is the result (no
        # warm-up), so the case stays within its time.
        w = time.perf_counter()
        step()
        out["first_step_ms"] = (time.perf_counter() - w) * 1e3
        out["warmed_up"] = out["first_step_ms"] <= slow_s * 1e3
        if out["warmed_up"]:
            times = []
            for _ in range(reps):
                w = time.perf_counter()
                step()
                times.append((time.perf_counter() - w) * 1e3)
            out["unet_step_cfg_ms"] = sorted(times)[len(times) // 2]
        else:
            out["unet_step_cfg_ms"] = out["first_step_ms"]
    out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out))


def run_measured(cmd, what):
    """Runs `cmd` to the end; its last stdout line as JSON, with the process's own peak RSS
    (ru_maxrss from wait4, MiB) and wall time added."""
    import tempfile

    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, text=True, env=os.environ)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        so.seek(0)
        se.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{what} failed ({proc.returncode}):\n{se.read()[-3000:]}")
        res = json.loads(so.read().strip().splitlines()[-1])
    res["process_peak_rss_mib"] = usage.ru_maxrss / 1024.0
    res["wall_s"] = wall
    return res


def loadavg():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def st_tensors(path):
    """(name, dtype, shape) of each tensor in a safetensors file, from its header alone."""
    import struct

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return [(k, v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"]


def param_count(folder, part):
    total = 0
    for p in (Path(folder) / part).glob("*.safetensors"):
        for _, _, shape in st_tensors(p):
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def run_turbo(args):
    model = Path(args.model or Path(args.work_dir) / "sd21-turbo-random")
    if not (model / "model_index.json").is_file():
        print(f"making random SD-Turbo-architecture weights in {model} (once)…", flush=True)
        model.parent.mkdir(parents=True, exist_ok=True)
        run_measured([sys.executable, __file__, "--make-turbo-child", str(model)], "making the folder")
    wbytes = weight_bytes(model)
    for size in args.sizes:
        runs, ref = [None] * len(args.dtypes), None
        for r in range(args.rounds):
            for i, dtype in enumerate(args.dtypes):
                print(f"[{time.strftime('%H:%M:%S')}] load {loadavg()}: Easel {dtype} {size}² "
                      f"(round {r + 1})", flush=True)
                runs[i] = fastest(runs[i], run_measured(
                    [args.easel, "bench", "--json", "--model", str(model), "--size", str(size),
                     "--reps", str(args.reps), "--cfg", "0", "--stages", "text,unet,vae-decode",
                     "--dtype", dtype], f"easel {dtype}"))
            print(f"[{time.strftime('%H:%M:%S')}] load {loadavg()}: diffusers {size}² "
                  f"(round {r + 1})", flush=True)
            ref = fastest(ref, run_measured(
                [sys.executable, __file__, "--turbo-child", str(model), str(size), str(args.reps),
                 str(args.threads)], "diffusers"))
        # The time per image: the sum of each stage's (fastest) time, on both sides.
        for run in runs + [ref]:
            run["per_image_ms"] = sum(run[k] for k, _ in TURBO_STAGES[:3])
        for easel in runs:
            report_turbo(size, easel, ref, wbytes / 2**20)


def report_turbo(size, easel, ref, wmib):
    assert easel["unet_batch"] == 1, easel["unet_batch"]
    print(f"\n{size}×{size} SD-Turbo architecture (SD 2.1), 1 step, no CFG; Easel with "
          f"{easel.get('dtype', 'f32')} weights, diffusers fp32 (torch {ref['torch']})")
    print(f"{'stage':<34}{'Easel ms':>10}{'diffusers':>11}{'ratio':>7}")
    for key, label in TURBO_STAGES:
        e, d = easel.get(key), ref.get(key)
        print(f"{label:<34}{fmt(e):>10}{fmt(d):>11}{fmt(e / d if e and d else None, '.2f'):>7}")
    p = ref["pipeline_ms"]
    print(f"{'diffusers pipeline, 1 step e2e':<34}{'':>10}{p:>11.0f}{easel['per_image_ms'] / p:>7.2f}"
          f"   (timesteps {ref['pipeline_timesteps']}; ratio: Easel's sum ÷ it)")
    e_rss, d_rss = easel["process_peak_rss_mib"], ref["peak_rss_mib"]
    print(f"{'peak RSS MiB (× fp32 weights)':<34}{e_rss:>10.0f}{d_rss:>11.0f}{e_rss / d_rss:>7.2f}"
          f"   fp32 weights {wmib:.0f} MiB: Easel {e_rss / wmib:.2f}×, diffusers {d_rss / wmib:.2f}×"
          f"; diffusers with the pipeline run {ref['peak_rss_with_pipeline_mib']:.0f}")


def run_sdxl(args):
    easel_model = args.model or "/tmp/easel-full/sdxl-single.safetensors"
    folder = Path(args.diffusers_model)
    counts = {part: param_count(folder, part)
              for part in ["unet", "text_encoder", "text_encoder_2", "vae"]}
    for size in args.sizes:
        runs, refs = [None] * len(args.dtypes), [None] * len(args.dtypes)
        for r in range(args.rounds):
            for i, dtype in enumerate(args.dtypes):
                print(f"[{time.strftime('%H:%M:%S')}] load {loadavg()}: Easel {dtype} {size}² "
                      f"(round {r + 1})", flush=True)
                runs[i] = fastest(runs[i], run_measured(
                    [args.easel, "bench", "--json", "--model", str(easel_model), "--size", str(size),
                     "--reps", str(args.reps), "--stages", "unet", "--dtype", dtype], f"easel {dtype}"))
                print(f"[{time.strftime('%H:%M:%S')}] load {loadavg()}: diffusers "
                      f"{TORCH_DTYPES[dtype]} {size}² (round {r + 1})", flush=True)
                refs[i] = fastest(refs[i], run_measured(
                    [sys.executable, __file__, "--sdxl-child", str(folder), str(size), str(args.reps),
                     str(args.threads), dtype, str(args.slow_s)], f"diffusers {dtype}"))
        report_sdxl(size, args.dtypes, runs, refs, counts)


def report_sdxl(size, dtypes, runs, refs, counts):
    print(f"\n{size}×{size} SDXL 1.0 architecture, one UNet step with CFG (batch 2)  "
          f"(torch {refs[0]['torch']}; diffusers loads the UNet alone)")
    print(f"{'precision (Easel / torch)':<26}{'Easel ms':>10}{'diffusers':>11}{'ratio':>7}"
          f"{'Easel RSS':>11}{'diff. RSS':>11}{'ratio':>7}{'Easel−TE/VAE':>14}{'ratio':>7}")
    other = counts["text_encoder"] + counts["text_encoder_2"] + counts["vae"]
    for dtype, e, d in zip(dtypes, runs, refs):
        assert e["sdxl"] and e["unet_batch"] == 2, (e["sdxl"], e["unet_batch"])
        em, dm = e["unet_step_cfg_ms"], d["unet_step_cfg_ms"]
        er, dr = e["process_peak_rss_mib"], d["process_peak_rss_mib"]
        # Easel holds the text encoders and VAE too, at its weight precision.
        er_unet = er - other * (4 if dtype == "f32" else 2) / 2**20
        label = f"{dtype} / {TORCH_DTYPES[dtype]}"
        note = "" if d["warmed_up"] else "  (diffusers: one run, no warm-up)"
        print(f"{label:<26}{em:>10.0f}{dm:>11.0f}{em / dm:>7.2f}{er:>11.0f}{dr:>11.0f}{er / dr:>7.2f}"
              f"{er_unet:>14.0f}{er_unet / dr:>7.2f}{note}")
    for dtype, e, d in zip(dtypes, runs, refs):
        print(f"  {dtype}: Easel load {e['load_ms'] / 1e3:.0f} s, RSS after load "
              f"{e['peak_rss_mib']['after_load']:.0f} MiB (own count), process wall {e['wall_s']:.0f} s; "
              f"diffusers load {d['load_ms'] / 1e3:.0f} s, RSS after load {d['peak_rss_after_load_mib']:.0f} "
              f"MiB, first step {d['first_step_ms'] / 1e3:.0f} s, process wall {d['wall_s']:.0f} s")
    total = sum(counts.values())
    print("fp32 weights: " + ", ".join(
        f"{k} {v / 1e9:.3f} B params = {v * 4 / 2**20:.0f} MiB" for k, v in counts.items())
        + f"; total {total / 1e9:.3f} B = {total * 4 / 2**20:.0f} MiB")


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
    if len(sys.argv) == 6 and sys.argv[1] in ("--diffusers-child", "--openvino-child", "--turbo-child"):
        fn = {"--diffusers-child": diffusers_child, "--openvino-child": openvino_child,
              "--turbo-child": turbo_child}[sys.argv[1]]
        fn(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    if len(sys.argv) == 8 and sys.argv[1] == "--sdxl-child":
        a = sys.argv[2:]
        sdxl_child(a[0], int(a[1]), int(a[2]), int(a[3]), a[4], float(a[5]))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--make-turbo-child":
        make_turbo_child(sys.argv[2])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="sd15", choices=["sd15", "turbo", "sdxl"],
                        help="sd15: SD 1.5 stage by stage (default); turbo: SD-Turbo (SD 2.1) "
                             "1 step without CFG; sdxl: one SDXL UNet step with CFG")
    parser.add_argument("--easel", default="target/release/easel")
    parser.add_argument("--work-dir", default="/tmp/easel-bench")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="default: 256 512 (sd15), 512 (turbo), 1024 (sdxl)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, help="default: 2 (sd15, turbo), 1 (sdxl)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the engines this many times; each keeps its fastest")
    parser.add_argument("--openvino", action="store_true")
    parser.add_argument("--dtypes", nargs="+", choices=["f32", "f16", "bf16"],
                        help="Easel weight precisions to run (each against the same references); "
                             "default f32, and f32 bf16 for sdxl (where diffusers runs each too)")
    parser.add_argument("--model", help="turbo: the diffusers folder (made once when missing; "
                        "default WORK_DIR/sd21-turbo-random); sdxl: what Easel loads "
                        "(default /tmp/easel-full/sdxl-single.safetensors)")
    parser.add_argument("--diffusers-model", default="/tmp/easel-full/sdxl-diffusers-fp16",
                        help="sdxl: the same weights as a diffusers folder, for diffusers")
    parser.add_argument("--slow-s", type=float, default=360.0,
                        help="sdxl: a diffusers step slower than this is timed once, unwarmed")
    args = parser.parse_args()
    args.sizes = args.sizes or {"sd15": [256, 512], "turbo": [512], "sdxl": [1024]}[args.case]
    args.reps = args.reps or (1 if args.case == "sdxl" else 2)
    args.dtypes = args.dtypes or (["f32", "bf16"] if args.case == "sdxl" else ["f32"])
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"{args.threads} threads, load average before: {load:.2f}")
    if args.case != "sd15":
        (run_turbo if args.case == "turbo" else run_sdxl)(args)
        print(f"\nload average after: {loadavg()}")
        return

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
