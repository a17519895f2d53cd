"""Command line of the built-in benchmark.

Examples::

    python -m ffr_jax.benchmark grid --out=grid.png --strength=0.5 --content_gap=0.5
    python -m ffr_jax.benchmark prepare --root=/tmp/demo/data/real --scale=0.1
    python -m ffr_jax.benchmark pretrain --out=/tmp/upstream.safetensors
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ffr_jax import cli
from ffr_jax.demo import dataset, generator, grid, render, upstream


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ffr_jax.benchmark",
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
  g.add_argument("--content_gap", type=float, default=generator.DEFAULT_CONTENT_GAP,
                 help="content/style shift of the generated images, in [0, 1]")
  r = sub.add_parser("prepare", help="render the real splits in SpuCo's layout")
  r.add_argument("--root", required=True)
  r.add_argument("--scale", type=float, default=dataset.DEFAULT_SCALE)
  r.add_argument("--size", type=int, default=render.DEFAULT_SIZE)
  r.add_argument("--seed", type=int, default=dataset.DEFAULT_SEED)
  t = sub.add_parser("pretrain", help="pretrain the backbone on the upstream dataset "
                     "(the benchmark's ImageNet); weights for model.pretrained")
  t.add_argument("--out", required=True, help="FILE.safetensors (a FILE.json goes next to it)")
  t.add_argument("--classes", type=int, default=upstream.DEFAULT_CLASSES)
  t.add_argument("--per_class", type=int, default=upstream.DEFAULT_PER_CLASS)
  t.add_argument("--epochs", type=int, default=upstream.DEFAULT_EPOCHS)
  t.add_argument("--image_size", type=int, default=render.DEFAULT_SIZE)
  t.add_argument("--seed", type=int, default=0)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one subcommand; a user's mistake is one ``error: ...`` line (exit 2)."""
  args = _parser().parse_args(argv)
  try:
    _run(args)
  except cli.USER_ERRORS as e:
    cli.fail(cli.error_message(e))
  return 0


def _run(args: argparse.Namespace) -> None:
  if args.command == "grid":
    grid.grid_image(strength=args.strength, image_size=args.size,
                    per_group=args.per_group, seed=args.seed, zoom=args.zoom,
                    template=args.template, content_gap=args.content_gap
                    ).save(args.out, optimize=True)
    print(f"wrote {args.out}")
  elif args.command == "pretrain":
    record = upstream.pretrain_to_file(
        args.out, num_classes=args.classes, per_class=args.per_class,
        epochs=args.epochs, image_size=args.image_size, seed=args.seed)
    print(f"wrote {args.out} ({record['weights_bytes']} bytes) and "
          f"{upstream.metadata_path(args.out)}: held-out accuracy "
          f"{record['held_out_accuracy']:.3f} over {args.classes} classes "
          f"(chance {record['chance_accuracy']:.3f}), {record['total_seconds']} s")
  else:
    dataset.prepare_real(args.root, scale=args.scale, image_size=args.size,
                         seed=args.seed)
    print(f"rendered into {args.root}: {dataset.split_sizes(args.scale)}")


if __name__ == "__main__":
  sys.exit(main())
