#!/usr/bin/env bash
# Rebuilds assets/fonts/DejaVuSans-symbols.ttf: the symbols the viewer draws itself (↵ → ‖ ✕ ↓ × −
# α … ·) and their neighbours, cut from DejaVu Sans so they never depend on a system font.
#
# Needs fonttools' pyftsubset (tested with fonttools 4.68.0), e.g. in a scratch venv:
#   python3 -m venv /tmp/ft && /tmp/ft/bin/pip install fonttools==4.68.0 && PATH=/tmp/ft/bin:$PATH
# and DejaVu Sans (Debian: fonts-dejavu-core), or its path as the first argument.
# After changing the ranges, run `cargo test --test fonts` (it checks every symbol in src/app).
set -euo pipefail
cd "$(dirname "$0")/../.."

src="${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}"
out=assets/fonts/DejaVuSans-symbols.ttf

ranges=(
  U+00A0-00FF   # Latin-1 punctuation and signs: · × ± ° µ « »
  U+0391-03A9   # Greek capitals
  U+03B1-03C9   # Greek small letters: α
  U+2010-2027   # dashes, quotes, ‖ • …
  U+2030-203A   # ‰ ′ ‹ ›
  U+2070-209F   # superscripts and subscripts
  U+2190-21FF   # arrows: ← ↑ → ↓ ↵
  U+2200-22FF   # mathematical operators: − ≈ ≤ ≥ ∞ ⋅
  U+2318        # ⌘
  U+232B        # ⌫
  U+23CE        # ⏎
  U+2580-259F   # block elements (bars)
  U+25A0-25FF   # geometric shapes: ▲ ▼ ● ○ ■ □
  U+2713-2718   # ✓ ✔ ✕ ✖ ✗ ✘
  U+27E8-27E9   # ⟨ ⟩
  U+FFFD        # replacement character
)
unicodes=$(printf '%s,' "${ranges[@]}")

pyftsubset "$src" \
  --unicodes="${unicodes%,}" \
  --no-hinting \
  --layout-features= \
  --drop-tables+=MATH,FFTM \
  --output-file="$out"
ls -l "$out"
