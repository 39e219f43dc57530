"""Convert between Hugging Face directories and kdjax checkpoints.

  python -m kdjax.convert SRC DST [--to hf|kdjax] [--step N] [--head auto|none|classification|mlm]

SRC may be
  * a Hugging Face directory (config.json + model.safetensors / pytorch_model.bin):
    converted to a kdjax model directory (kdjax_model.json + orbax params/ + tokenizer);
  * a kdjax model directory, or a kdjax trainer workdir (student/kdjax_model.json +
    checkpoints/): converted to a Hugging Face directory that transformers loads
    (latest checkpoint unless --step is given).
With --keep_layers=0,2,4 only those encoder layers are kept (e.g. a 3-layer student
initialised from every other layer of a 6-layer model).
Nothing is downloaded; both sides are local directories.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kdjax.models import native


def detect(src: str) -> str:
  try:
    return "hf" if native.kind(src) == "hf" else "kdjax"
  except FileNotFoundError:
    raise SystemExit(
      f"error: {src} is neither a Hugging Face directory (config.json) nor a "
      f"kdjax model directory / trainer workdir ({native.DESCRIPTION})"
    ) from None


def convert(
  src: str,
  dst: str,
  to: str | None = None,
  step: int | None = None,
  head: str = "auto",
  keep_layers=None,
) -> str:
  from kdjax import models
  from kdjax.models.surgery import keep_layers as select_layers

  kind = detect(src)
  to = to or ("kdjax" if kind == "hf" else "hf")
  model = models.from_pretrained(src, head=head) if kind == "hf" else native.load(src, step)
  if keep_layers:
    model = select_layers(model, keep_layers)
  if to == "hf":
    models.save_pretrained(model, dst)
  else:
    native.save(model, dst)
  return to


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m kdjax.convert",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("src", help="HF directory, kdjax model directory or trainer workdir")
  parser.add_argument("dst", help="output directory (created)")
  parser.add_argument(
    "--to", choices=["hf", "kdjax"], default=None, help="output format (default: the other one)"
  )
  parser.add_argument(
    "--step", type=int, default=None, help="checkpoint step of a trainer workdir (default: latest)"
  )
  parser.add_argument(
    "--head",
    default="auto",
    choices=["auto", "none", "classification", "mlm"],
    help="head to read from an HF directory (default: from architectures)",
  )
  parser.add_argument(
    "--keep_layers", default=None, help="comma-separated 0-based encoder layers to keep, e.g. 0,2,4"
  )
  parser.add_argument(
    "--to_same",
    action="store_true",
    help="write the same format as SRC (with --keep_layers: HF -> HF)",
  )
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    keep = [int(x) for x in args.keep_layers.split(",")] if args.keep_layers else None
    to = args.to or (detect(args.src) if args.to_same else None)
    to = convert(args.src, args.dst, to, args.step, args.head, keep)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {to} model to {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
