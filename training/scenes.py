"""Procedural captioned scenes: one shape on a plain background, deterministic from a seed.

The vocabulary (colours, shapes, sizes, positions, the stripe style) lives in scenes.json, which
Easel's Rust quality checker reads too. Shapes are drawn at 4x and box-filtered down, so edges are
anti-aliased like a real picture's.
"""

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPEC = json.loads((Path(__file__).resolve().parent / "scenes.json").read_text())
SIZE = SPEC["image_size"]
COLOURS = list(SPEC["colours"])
SHAPES = SPEC["shapes"]
SIZES = list(SPEC["sizes"])
POSITIONS = list(SPEC["positions"])
SS = 4  # supersampling factor


@dataclass
class Scene:
    shape: str
    colour: str
    background: str
    size: str
    position: str
    striped: bool
    dx: int
    dy: int
    scale: float

    def full_caption(self):
        text = f"a {self.size} {self.colour} {self.shape} on a {self.background} background, {self.position}"
        return text + (", striped" if self.striped else "")


def random_scene(rng: random.Random, striped=False) -> Scene:
    colour, background = rng.sample(COLOURS, 2)
    return Scene(
        shape=rng.choice(SHAPES),
        colour=colour,
        background=background,
        size=rng.choice(SIZES),
        position=rng.choice(POSITIONS),
        striped=striped,
        dx=rng.randint(-2, 2),
        dy=rng.randint(-2, 2),
        scale=rng.uniform(0.92, 1.08),
    )


def caption(scene: Scene, rng: random.Random) -> str:
    """One of several phrasings; size, position and background may be left out."""
    size = scene.size if rng.random() < 0.8 else None
    pos = scene.position if rng.random() < 0.8 else None
    bg = scene.background if rng.random() < 0.9 else None
    noun = " ".join(w for w in (size, scene.colour, scene.shape) if w)
    where = {None: None, "center": "in the center"}.get(pos, f"at the {pos}" if pos else None)
    form = rng.randrange(4)
    if form == 0:
        parts = [f"a {noun}"] + ([f"on a {bg} background"] if bg else []) + ([where] if where else [])
        text = " ".join(parts[:2]) + ("".join(f", {p}" for p in parts[2:]))
    elif form == 1:
        text = ", ".join([noun] + ([f"{bg} background"] if bg else []) + ([pos] if pos else []))
    elif form == 2:
        text = (f"{bg} background with a {noun}" if bg else f"a {noun}") + (f" {where}" if where else "")
    else:
        text = f"a {noun}" + (f" {where}" if where else "") + (f" on a {bg} background" if bg else "")
    if scene.striped:
        text = rng.choice([f"{text}, striped", text.replace(scene.shape, f"striped {scene.shape}", 1)])
    return text.replace("a orange", "an orange")


def _polygon(shape, cx, cy, s):
    if shape == "square":
        h = SPEC["square_side"] * s / 2
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        h = s / 2
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = s / 2 if k % 2 == 0 else SPEC["star_inner"] * s / 2
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return pts
    raise ValueError(shape)


def shape_mask(shape, cx, cy, s, size=SIZE):
    """Anti-aliased coverage in [0, 1] of one shape centred at (cx, cy) with nominal size s."""
    big = Image.new("L", (size * SS, size * SS), 0)
    d = ImageDraw.Draw(big)
    cx, cy, s = cx * SS, cy * SS, s * SS
    if shape in ("circle", "ring"):
        r = s / 2
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            ri = SPEC["ring_inner"] * r
            d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    else:
        d.polygon(_polygon(shape, cx, cy, s), fill=255)
    small = big.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render(scene: Scene) -> np.ndarray:
    """The scene as an HxWx3 uint8 array."""
    cx, cy = SPEC["positions"][scene.position]
    s = SPEC["sizes"][scene.size] * scene.scale
    mask = shape_mask(scene.shape, cx + scene.dx, cy + scene.dy, s)[..., None]
    bg = np.array(SPEC["colours"][scene.background], np.float32)
    fg = np.broadcast_to(np.array(SPEC["colours"][scene.colour], np.float32), (SIZE, SIZE, 3)).copy()
    if scene.striped:
        period = SPEC["stripe_period"]
        rows = (np.arange(SIZE) + scene.dy) % period >= period // 2
        fg[rows] = np.array(SPEC["stripe_colour"], np.float32)
    img = bg * (1 - mask) + fg * mask
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def dataset(n, seed, striped=False):
    """n (image, caption, scene) triples from one seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sc = random_scene(rng, striped)
        out.append((render(sc), caption(sc, rng), sc))
    return out


def write_set(out: Path, n, seed, striped=False):
    """n scenes as NNN.png plus index.json with each file's caption and attributes."""
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for i, (img, cap, sc) in enumerate(dataset(n, seed, striped)):
        name = f"{i:03}.png"
        Image.fromarray(img).save(out / name, optimize=True)
        index.append({"file": name, "caption": cap, "shape": sc.shape, "colour": sc.colour,
                      "background": sc.background, "size": sc.size, "position": sc.position,
                      "striped": sc.striped})
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Writes a set of scenes (PNG files + index.json).")
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=777, help="the training run uses 20261127 and the two after it")
    ap.add_argument("--striped", action="store_true")
    args = ap.parse_args()
    write_set(args.out, args.count, args.seed, args.striped)
