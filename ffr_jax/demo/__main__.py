"""Command line of the built-in benchmark.

Examples::

    python -m ffr_jax.demo grid --out=grid.png --strength=0.5
    python -m ffr_jax.demo prepare --root=/tmp/demo/data/real --scale=0.1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ffr_jax.demo import dataset, generator, grid, render


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ffr_jax.demo",
                              description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  g = sub.add_parser("grid", help="PNG of samples: one row per group, real | generated")
  g.add_argument("--out", required=True, help="PNG file to write")
  g.add_argument("--strength", type=float, default=generator.DEFAULT_STRENGTH,
                 help="fingerprint strength of the generated images")
  g.add_argument("--size", type=int, default=render.DEFAULT_SIZE)
  g.add_argument("--per_group", type=int, default=4)
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--zoom", type=int, default=2)
  g.add_argument("--template", choices=sorted(generator.TEMPLATES), default="paper")
  r = sub.add_parser("prepare", help="render the real splits in SpuCo's layout")
  r.add_argument("--root", required=True)
  r.add_argument("--scale", type=float, default=dataset.DEFAULT_SCALE)
  r.add_argument("--size", type=int, default=render.DEFAULT_SIZE)
  r.add_argument("--seed", type=int, default=dataset.DEFAULT_SEED)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if args.command == "grid":
    grid.write_grid(args.out, strength=args.strength, image_size=args.size,
                    per_group=args.per_group, seed=args.seed, zoom=args.zoom,
                    template=args.template)
    print(f"wrote {args.out}")
  else:
    dataset.prepare_real(args.root, scale=args.scale, image_size=args.size,
                         seed=args.seed)
    print(f"rendered into {args.root}: {dataset.split_sizes(args.scale)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
