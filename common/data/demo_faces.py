"""Procedural anime-style faces for demo data (HW6's faces folder, HW8's face arrays): a pure
function of the generator's state, drawn with PIL."""

from __future__ import annotations

import numpy as np

HAIR = [(40, 30, 30), (230, 200, 90), (200, 60, 60), (70, 90, 200), (240, 150, 190),
        (120, 70, 40), (200, 200, 210), (60, 160, 90), (150, 80, 180)]
EYES = [(40, 90, 200), (170, 40, 40), (60, 150, 70), (140, 60, 170), (200, 140, 40),
        (90, 60, 40)]


def demo_face(rng: np.random.Generator, size: int = 96):
    """One anime-style face: background, hair behind, a skin-coloured head, bangs, two large
    eyes with irises and highlights, a small mouth; colours, sizes and positions vary."""
    from PIL import Image, ImageDraw

    def colour(base, spread=25):
        return tuple(int(np.clip(c + rng.normal(0, spread), 0, 255)) for c in base)

    bg = tuple(int(c) for c in rng.integers(150, 256, 3))
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    s = size / 96
    cx, cy = 48 * s + rng.normal(0, 3) * s, 52 * s + rng.normal(0, 3) * s
    head_w, head_h = rng.uniform(26, 32) * s, rng.uniform(30, 36) * s
    hair = colour(HAIR[int(rng.integers(len(HAIR)))])
    draw.ellipse([cx - head_w - 8 * s, cy - head_h - 10 * s, cx + head_w + 8 * s,
                  cy + head_h * rng.uniform(0.3, 1.2)], fill=hair)      # hair behind
    skin = colour((250, 222, 200), 8)
    draw.ellipse([cx - head_w, cy - head_h, cx + head_w, cy + head_h], fill=skin)
    fringe = cy - head_h * rng.uniform(0.2, 0.45)
    draw.chord([cx - head_w - 2 * s, cy - head_h - 8 * s, cx + head_w + 2 * s,
                fringe + 10 * s], 180, 360, fill=hair)                   # bangs
    eye_y = cy + rng.uniform(-2, 6) * s
    gap, eye_w, eye_h = rng.uniform(11, 15) * s, rng.uniform(6, 8) * s, rng.uniform(7, 10) * s
    iris = colour(EYES[int(rng.integers(len(EYES)))], 20)
    for side in (-1, 1):
        ex = cx + side * gap
        draw.ellipse([ex - eye_w, eye_y - eye_h, ex + eye_w, eye_y + eye_h], fill=(255, 255, 255))
        draw.ellipse([ex - eye_w * 0.75, eye_y - eye_h * 0.8, ex + eye_w * 0.75,
                      eye_y + eye_h], fill=iris)
        draw.ellipse([ex - eye_w * 0.3, eye_y - eye_h * 0.2, ex + eye_w * 0.3,
                      eye_y + eye_h * 0.6], fill=(20, 20, 30))          # pupil
        draw.ellipse([ex - eye_w * 0.55, eye_y - eye_h * 0.65, ex - eye_w * 0.1,
                      eye_y - eye_h * 0.2], fill=(255, 255, 255))       # highlight
        draw.line([ex - eye_w * 1.1, eye_y - eye_h * 1.05, ex + eye_w * 1.1,
                   eye_y - eye_h * 1.05], fill=(40, 30, 30), width=max(1, int(2 * s)))
    mouth_y = cy + head_h * rng.uniform(0.5, 0.7)
    mouth_w = rng.uniform(3, 7) * s
    if rng.random() < 0.5:
        draw.arc([cx - mouth_w, mouth_y - 3 * s, cx + mouth_w, mouth_y + 3 * s], 20, 160,
                 fill=(180, 60, 70), width=max(1, int(1.5 * s)))
    else:
        draw.ellipse([cx - mouth_w * 0.5, mouth_y - 2 * s, cx + mouth_w * 0.5, mouth_y + 2 * s],
                     fill=(200, 80, 90))
    return im
