"""Seed corpora for the fuzz targets, from the test fixtures (run from the repository root):

    python3 fuzz/make_seeds.py [--easel target/release/easel]

Writes fuzz/corpus/<target>/seed-*. Large weight files are made small while keeping their key
layout: every tensor keeps its name, dtype and shape, and all point at the same zero bytes
(safetensors allows overlapping ranges), so a seed still exercises architecture detection and
key mapping; tensors over 128 KiB (token embeddings) are left out. One PNG is made by `easel generate` on the tiny model, so the Easel JSON and A1111
`parameters` chunks are the real ones. Standard library only (plus the easel binary).
"""

import argparse
import json
import os
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

FIX = Path("tests/fixtures")
OUT = Path("fuzz/corpus")


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / f"seed-{name}").write_bytes(data)


MAX_TENSOR_BYTES = 128 << 10


def compact_safetensors(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
    biggest = 0
    for k, v in list(header.items()):
        if k == "__metadata__":
            continue
        numel = 1
        for d in v["shape"]:
            numel *= d
        size = numel * sizes[v["dtype"]]
        if size > MAX_TENSOR_BYTES:
            # The few big ones (token embeddings) would make the seed megabytes.
            del header[k]
            continue
        v["data_offsets"] = [0, size]
        biggest = max(biggest, size)
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + bytes(biggest)


def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def tiny_png(texts, compressed=()):
    """An 2×2 RGB PNG with tEXt chunks (and zTXt for keywords in `compressed`)."""
    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + bytes(6) + b"\x00" + bytes(6))
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
    for k, v in texts:
        if k in compressed:
            out += png_chunk(b"zTXt", k.encode() + b"\x00\x00" + zlib.compress(v.encode()))
        else:
            out += png_chunk(b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1", "replace"))
    out += png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")
    return out


A1111 = [
    "a castle on a hill, (golden hour:1.2)\nNegative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: Euler a, CFG scale: 6.5, Seed: 1234567, Size: 512x768, "
    "Model hash: abcdef1234, Model: dreamy, Clip skip: 2",
    "a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, "
    "Size: 512x512, Denoising strength: 0.45, Hires upscale: 2, Hires steps: 12, "
    'Hires upscaler: Latent, Lora hashes: "style: 0123456789ab", TI hashes: "emb: 0123abcd"',
]
COMFY = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 99, "steps": 12, "cfg": 4.0,
          "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0],
          "negative": ["7", 0], "latent_image": ["5", 0]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 48, "height": 32, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a comfy fox", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
}
PROMPTS = [
    "a (red:1.3) ((circle)) on [blurry] background BREAK second chunk",
    "\\(escaped\\) (unbalanced [brackets (nested:0.5)] <lora:style:0.8> <lora:detail:1:0.5>",
    ", ".join(f"word{i}" for i in range(120)),
    "emoji 🎨 and ümlauts, 日本語のプロンプト, AND ANDs",
]
QUERIES = ["red car - night", "2:sunset + ./ref.png", "- a", "+ +", "0.5:x - -1:y + ~/pic.jpg"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--easel", default="target/release/easel")
    args = ap.parse_args()

    for f in ["embeddings/tinyemb2.safetensors", "embeddings/tinyxl.safetensors",
              "loras/tiny-detail.safetensors"]:
        put("safetensors", Path(f).stem, (FIX / f).read_bytes())
    for f in ["checkpoints/sd1-tiny.safetensors", "checkpoints/sd2-tiny-v.safetensors",
              "checkpoints/sdxl-tiny.safetensors", "loras/tiny-style.safetensors",
              "loras/tiny-style-peft.safetensors", "loras/sdxl-style.safetensors"]:
        put("safetensors", "compact-" + Path(f).stem, compact_safetensors(FIX / f))

    # config: the first byte picks the file (easel::fuzzing::FOLDER_FILES), the rest is its text.
    folder_files = ["model_index.json", "unet/config.json", "vae/config.json",
                    "text_encoder/config.json", "scheduler/scheduler_config.json",
                    "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"]
    for model in ["sd-tiny-a", "sdxl-tiny", "lcm-tiny", "inpaint-tiny"]:
        for i, f in enumerate(folder_files):
            p = FIX / model / f
            if p.is_file():
                put("config", f"{model}-{f.replace('/', '-')}", bytes([i]) + p.read_bytes())

    for f in ["checkpoints/malicious.ckpt", "embeddings/tinyemb.pt"]:
        put("pickle", Path(f).stem, (FIX / f).read_bytes())

    put("png", "scene", (FIX / "scenes/striped/000.png").read_bytes())
    put("png", "a1111", tiny_png([("parameters", A1111[0])]))
    put("png", "comfy", tiny_png([("prompt", json.dumps(COMFY))], compressed=("prompt",)))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "easel.png"
        subprocess.run([args.easel, "generate", "--model", str(FIX / "sd-tiny-a"), "--steps", "2",
                        "--prompt", "a (red:1.2) circle", "--negative", "blurry", "-o", str(out)],
                       check=True, capture_output=True)
        data = out.read_bytes()
        put("png", "easel", data)
        # Its text chunks, for the infotext target.
        pos = 8
        while pos < len(data):
            n = struct.unpack(">I", data[pos:pos + 4])[0]
            kind = data[pos + 4:pos + 8]
            body = data[pos + 8:pos + 8 + n]
            if kind == b"tEXt":
                key, _, text = body.partition(b"\x00")
                put("infotext", "easel-" + key.decode(), text)
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\x00")
                flag, method = rest[0], rest[1]
                text = rest[2:].split(b"\x00", 2)[2]
                put("infotext", "easel-" + key.decode(), zlib.decompress(text) if flag else text)
            pos += 12 + n
    for i, a in enumerate(A1111):
        put("infotext", f"a1111-{i}", a)
    put("infotext", "comfy", json.dumps(COMFY))

    for i, p in enumerate(PROMPTS):
        put("prompt", str(i), p)
        put("tokenizer", str(i), p)
    for i, q in enumerate(QUERIES):
        put("query", str(i), q)
    put("settings", "defaults", json.dumps({"format": 1, "settings": {}}))
    put("settings", "some", json.dumps({"format": 1, "settings": {
        "prompt": "a lighthouse", "steps": 30, "width": 768, "library_dir": "/tmp/x",
        "loras": [{"path": "/a.safetensors", "weight": 0.5}]}}))
    put("settings", "future", json.dumps({"format": 7, "settings": {"steps": "many"}}))


if __name__ == "__main__":
    main()
