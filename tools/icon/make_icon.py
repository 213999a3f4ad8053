#!/usr/bin/env python3
"""Draws Hubel's icon: an oriented receptive field (a Gabor patch, as Hubel and Wiesel's simple
cells respond to a tilted bar) sampled on a grid of cells, coloured with the viewer's diverging map
(src/app/colors.rs: blue · white · red), on a dark rounded square.

Writes assets/icon/hubel.svg, then renders the PNGs with ImageMagick (`convert`):
assets/icon/hubel-256.png (the .deb's hicolor icon) and assets/icon/hubel-64.png (the window icon,
compiled in by src/app/icon.rs). Run from anywhere: python3 tools/icon/make_icon.py
"""
import math
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "assets" / "icon"

# colors.rs: NEG, MID, POS
NEG = (49, 104, 200)
MID = (245, 245, 245)
POS = (200, 45, 45)
BACKGROUND = "#1c2029"

SIZE = 256
N = 9            # cells per side
MARGIN = 26      # from the icon's edge to the grid
GAP = 4          # between cells


def field(x, y):
    """A Gabor receptive field on [-1, 1]²: an excitatory bar tilted 30° from vertical, flanked by
    inhibitory bands, fading out with distance. Returns (value, envelope)."""
    theta = math.radians(30)
    xr = x * math.cos(theta) + y * math.sin(theta)
    envelope = math.exp(-(x * x + y * y) / (2 * 0.5 ** 2))
    return envelope * math.cos(2 * math.pi * 0.8 * xr), envelope


def diverging(t, alpha):
    """The diverging map at t in [-1, 1], faded into the background by alpha (blended here, so
    every SVG renderer draws the same colours)."""
    t = max(-1.0, min(1.0, t))
    a, b = (MID, POS) if t >= 0 else (MID, NEG)
    t = abs(t)
    bg = tuple(int(BACKGROUND[i:i + 2], 16) for i in (1, 3, 5))
    c = [a[i] + (b[i] - a[i]) * t for i in range(3)]
    return "#%02x%02x%02x" % tuple(round(bg[i] + (c[i] - bg[i]) * alpha) for i in range(3))


def svg():
    cell = (SIZE - 2 * MARGIN - (N - 1) * GAP) / N
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" '
        f'viewBox="0 0 {SIZE} {SIZE}">',
        "<title>Hubel</title>",
        f'<rect x="4" y="4" width="{SIZE - 8}" height="{SIZE - 8}" rx="44" fill="{BACKGROUND}"/>',
    ]
    for row in range(N):
        for col in range(N):
            x = -1 + 2 * (col + 0.5) / N
            y = -1 + 2 * (row + 0.5) / N
            v, envelope = field(x, y)
            px = MARGIN + col * (cell + GAP)
            py = MARGIN + row * (cell + GAP)
            parts.append(
                f'<rect x="{px:.2f}" y="{py:.2f}" width="{cell:.2f}" height="{cell:.2f}" '
                f'rx="3.5" fill="{diverging(v * 1.5, 0.15 + 0.85 * envelope)}"/>'
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "hubel.svg"
    path.write_text(svg())
    for size in (256, 64):
        png = OUT / f"hubel-{size}.png"
        subprocess.run(
            ["convert", "-background", "none", "-density", str(72 * size // SIZE * 4),
             str(path), "-resize", f"{size}x{size}", "-strip",
             "-define", "png:exclude-chunks=date,time", f"PNG32:{png}"],
            check=True,
        )
        print(png)
    print(path)


if __name__ == "__main__":
    main()
