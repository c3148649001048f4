"""Indexing throughput: Easel against transformers' CLIPModel, same weights, same files, same threads.

    cargo build --release
    /work/venv/bin/python benches/clip_index_vs_transformers.py [--easel target/release/easel]
        [--work-dir /tmp/easel-bench] [--images 64] [--threads 2]

Runs `easel bench --gallery --json` (which makes random ViT-B/32 weights in transformers' layout
and the test images, once, then indexes them: walk, read, SHA-256, decode, preprocess, embed,
SQLite commit), then times transformers on the same folder and files: Pillow decode,
CLIPImageProcessor, get_image_features, L2 normalisation, in batches of 16 as Easel does, after
one warm-up batch. Prints both numbers and their ratio (Easel / transformers; > 1 means Easel
is faster). Easel's number includes hashing and database writes that the transformers side
does not do.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--easel", default="target/release/easel")
parser.add_argument("--work-dir", default="/tmp/easel-bench")
parser.add_argument("--images", type=int, default=64)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--batch", type=int, default=16)
args = parser.parse_args()

os.environ["RAYON_NUM_THREADS"] = str(args.threads)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

out = subprocess.run(
    [args.easel, "bench", "--gallery", "--json", "--work-dir", args.work_dir,
     "--gallery-images", str(args.images)],
    check=True, capture_output=True, text=True, env=os.environ,
)
easel = json.loads(out.stdout)

import torch  # noqa: E402  (after Easel ran: torch's import should not compete with it)
from PIL import Image  # noqa: E402
from transformers import CLIPImageProcessor, CLIPModel  # noqa: E402
import transformers  # noqa: E402

transformers.utils.logging.set_verbosity_error()
torch.set_num_threads(args.threads)
clip_dir = Path(easel["clip_model"])
model = CLIPModel.from_pretrained(clip_dir).eval()
processor = CLIPImageProcessor.from_pretrained(clip_dir)
files = sorted(p for p in Path(easel["images_dir"]).iterdir() if not p.name.startswith("."))


def embed(paths):
    images = [Image.open(p).convert("RGB") for p in paths]
    pixels = processor(images=images, return_tensors="pt").pixel_values
    out = model.get_image_features(pixel_values=pixels)
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return feats / feats.norm(dim=-1, keepdim=True)


with torch.inference_mode():
    embed(files[: args.batch])  # warm-up, as Easel's bench embeds one batch first
    t = time.perf_counter()
    for i in range(0, len(files), args.batch):
        embed(files[i : i + args.batch])
    hf_seconds = time.perf_counter() - t
hf_rate = len(files) / hf_seconds
ratio = easel["index_images_per_s"] / hf_rate
result = {
    "threads": args.threads, "images": len(files),
    "easel_images_per_s": easel["index_images_per_s"], "transformers_images_per_s": hf_rate,
    "ratio_easel_over_transformers": ratio,
    "torch": torch.__version__, "transformers": transformers.__version__,
    "processor": type(processor).__name__,
    "easel_query_top10_ms_median": easel["query_top10_ms_median"],
    "easel_text_encode_ms": easel["text_encode_ms"],
    "easel_index_bytes_per_image": easel["index_bytes_per_image"],
}
print(json.dumps(result, indent=1))
print(f"indexing throughput, {args.threads} threads, {len(files)} images: Easel {easel['index_images_per_s']:.2f}/s, "
      f"transformers {hf_rate:.2f}/s, ratio {ratio:.2f}", file=sys.stderr)
