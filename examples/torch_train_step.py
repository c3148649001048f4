"""How fast does PyTorch train the bundled default model's UNet on this CPU?

The PyTorch side of examples/candle_train_step.rs: diffusers' UNet2DConditionModel with the same
config (training/train_default_model.py's UNET_CONFIG), the same batch (64 random latents
[64, 4, 16, 16], one random timestep, random context [64, 77, 64]), MSE against random noise,
backward, AdamW (lr 1e-3, weight decay 1e-4, as the training script), on 2 threads. Two warm-up
steps, then the median of the timed steps.

    /work/venv/bin/python examples/torch_train_step.py [--steps N] [--warmup N] [--batch N]

`--check FILE` instead loads a step written by `candle_train_step --dump FILE` (weights, inputs,
loss and gradients), runs it here and compares every parameter's gradient.
"""

import argparse
import statistics
import time

import diffusers
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

CONFIG = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=[32, 64, 64],
              down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
              layers_per_block=1, cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
              act_fn="silu", center_input_sample=False, flip_sin_to_cos=True, freq_shift=0)
TOKENS = 77
TRAIN_TIMESTEPS = 1000


def check(unet, path):
    """Same weights and inputs as candle's step: are the loss and every gradient the same?"""
    from safetensors.torch import load_file

    d = load_file(path)
    unet.load_state_dict({k[len("param."):]: v for k, v in d.items() if k.startswith("param.")},
                         strict=True)
    unet.train()
    t = torch.full((d["latents"].shape[0],), int(d["timestep"].item()))
    loss = F.mse_loss(unet(d["latents"], t, d["context"]).sample, d["noise"])
    loss.backward()
    worst_name, worst = None, 0.0
    for name, p in unet.named_parameters():
        ref = d[f"grad.{name}"]
        # Error relative to the largest gradient entry of the tensor.
        rel = ((p.grad - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
        if rel > worst:
            worst_name, worst = name, rel
    n = sum(1 for _ in unet.parameters())
    print(f"loss: candle {d['loss'].item():.6f}, torch {loss.item():.6f}")
    print(f"gradients of {n} tensors: worst relative difference {worst:.2e} ({worst_name})")
    if worst > 1e-3 or abs(loss.item() - d["loss"].item()) > 1e-4 * abs(loss.item()):
        raise SystemExit("candle's gradients differ from diffusers'")
    print("candle's loss and gradients match diffusers'")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--check", metavar="FILE")
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**CONFIG)
    if args.check:
        return check(unet, args.check)
    unet.train()
    params = sum(p.numel() for p in unet.parameters())
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-4)

    def step():
        b = args.batch
        latents = torch.randn(b, 4, 16, 16)
        noise = torch.randn(b, 4, 16, 16)
        context = torch.randn(b, TOKENS, 64)
        # One timestep for the whole batch, as Easel's UNet takes (see candle_train_step.rs).
        t = torch.full((b,), int(torch.randint(0, TRAIN_TIMESTEPS, ())))
        t0 = time.perf_counter()
        pred = unet(latents, t, context).sample
        loss = F.mse_loss(pred, noise)
        loss.item()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}: UNet2DConditionModel, "
          f"{params} parameters in {len(list(unet.parameters()))} tensors, batch {args.batch}, "
          f"{torch.get_num_threads()} threads", flush=True)
    for _ in range(args.warmup):
        step()
    times = []
    for i in range(args.steps):
        f, b, o = step()
        print(f"step {i + 1}: {f + b + o:.3f} s (forward {f:.3f}, backward {b:.3f}, AdamW {o:.3f})",
              flush=True)
        times.append((f, b, o))
    med = lambda k: statistics.median(t[k] for t in times)  # noqa: E731
    print(f"median of {args.steps} steps: forward {med(0):.3f} s, backward {med(1):.3f} s, "
          f"AdamW {med(2):.3f} s")
    print(f"params {params}")
    print(f"s/step {statistics.median(sum(t) for t in times):.4f}")


if __name__ == "__main__":
    main()
