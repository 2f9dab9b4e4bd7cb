"""Write a random-weight CosyVoice3 or CosyVoice2 model directory in the official release layout (for benchmarks
and demos).

python benchmarks/make_model.py --family cosyvoice3 --size full --seed 0 /tmp/cv3-full
python benchmarks/make_model.py --family cosyvoice2 --size full --seed 0 /tmp/cv2-full
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from voiceclone.loading.demo import build_model_dir
from voiceclone.loading.families import FAMILIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="new directory to write (must not exist)")
    parser.add_argument("--family", default="cosyvoice3", choices=list(FAMILIES))
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"], help="tiny: fixture dims; full: 0.5B")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (same seed, same files)")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} already exists")
    start = time.perf_counter()
    build_model_dir(args.out, family=args.family, size=args.size, seed=args.seed)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
