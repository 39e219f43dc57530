"""python -m kdjax.export MODEL OUT --format=FMT: see ``--help`` and ``kdjax/export/__init__.py``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from kdjax.export import FORMATS, FormatUnavailable, get_exporter

PRECISION_CHOICES = ("fp32", "fp16", "bf16", "int8")  # int8: onnx / tensorrt of a quantized model


def build_parser() -> argparse.ArgumentParser:
  formats = "\n".join(f"  {name:<11} {desc}" for name, (_, _, desc) in FORMATS.items())
  p = argparse.ArgumentParser(
    prog="python -m kdjax.export",
    description="Export a kdjax / Hugging Face model as a deployable artefact, with an "
    "export.json manifest (source, format, precision, input signature, labels, max length, "
    "max abs diff against the JAX fp32 forward measured at export time).",
    epilog=f"formats:\n{formats}\n\nexample:\n  python -m kdjax.export runs/tnews "
    "exports/tnews_jax --format=jax --precision=bf16",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "model",
    metavar="MODEL",
    help="a kdjax model directory (kdjax_model.json), a trainer workdir (student/ + "
    "checkpoints/) or a Hugging Face directory (config.json + weights + vocab.txt)",
  )
  p.add_argument(
    "out",
    metavar="OUT",
    help="the export directory to create; it must not exist or be empty (unless --force). "
    "Written into a temporary directory beside it and renamed at the end, so a failed export "
    "leaves nothing behind",
  )
  p.add_argument(
    "--format", required=True, choices=tuple(FORMATS), help="the artefact format (see below)"
  )
  p.add_argument(
    "--precision",
    default="fp32",
    choices=PRECISION_CHOICES,
    help="compute precision of the artefact (default fp32; not every format takes every one; "
    "int8: --format=onnx|tensorrt of a quantized model directory (quantization.json), as QDQ)",
  )
  p.add_argument(
    "--step",
    type=int,
    default=None,
    help="for a trainer workdir: the checkpoint step to export (default: the best dev "
    "checkpoint, else the latest)",
  )
  p.add_argument(
    "--max_length",
    type=int,
    default=None,
    help="longest input (tokens) the artefact takes (default: the run's max_seq_length for "
    "a workdir, else the model's position limit)",
  )
  p.add_argument(
    "--force",
    action="store_true",
    help="replace OUT if it exists and is not empty (only after the new export succeeded)",
  )
  return p


def _check_out(out: str, model: str, force: bool) -> None:
  if os.path.lexists(out) and not os.path.isdir(out):
    raise ValueError(f"{out}: exists and is not a directory")
  if os.path.isdir(out) and os.listdir(out) and not force:
    raise ValueError(f"{out}: exists and is not empty (use --force to replace it)")
  o, m = os.path.realpath(out), os.path.realpath(model)
  if o == m or m.startswith(o + os.sep) or o.startswith(m + os.sep):
    raise ValueError(f"{out}: must not be MODEL ({model}), inside it or contain it")


TOKENIZER_DIR = "tokenizer"


def _add_tokenizer(source, out_dir: str, fmt: str, extra: dict) -> None:
  """Every artefact that takes token ids travels with its tokenizer (``tokenizer/``), so that
  ``kdjax.predict`` and users tokenize exactly as at training time without the source model.
  The hf format holds its tokenizer itself; the SavedModel embeds its vocabulary in the graph
  but gets the directory too (for token-id callers)."""
  if fmt == "hf":
    return
  tok_dir = os.path.join(out_dir, TOKENIZER_DIR)
  if not os.path.isdir(tok_dir):
    source.tokenizer.save(tok_dir)
    files = sorted(os.path.join(TOKENIZER_DIR, f) for f in os.listdir(tok_dir))
    extra["files"] = [*extra["files"], *files]
  extra.setdefault("tokenizer_dir", TOKENIZER_DIR)


def export_model(
  model: str,
  out: str,
  fmt: str,
  precision: str = "fp32",
  step: int | None = None,
  max_length: int | None = None,
  force: bool = False,
) -> dict:
  """Exports ``model`` to ``out`` as ``fmt``; returns the manifest (also ``out/export.json``)."""
  from kdjax.export import manifest

  if precision not in PRECISION_CHOICES:
    raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISION_CHOICES)}")
  _check_out(out, model, force)
  exporter = get_exporter(fmt)
  from kdjax.export.source import load_source

  source = load_source(model, step=step, max_length=max_length)
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.tmp-", dir=parent)
  try:
    try:
      extra = exporter.export(source, tmp, precision)
    except ModuleNotFoundError as e:
      raise FormatUnavailable(f"format {fmt!r} needs the missing package {e.name!r}") from e
    _add_tokenizer(source, tmp, fmt, extra)
    m = manifest.build(source, fmt, precision, extra)
    manifest.write(tmp, m)
    if os.path.isdir(out):
      shutil.rmtree(out)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return m


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    m = export_model(
      args.model,
      args.out,
      args.format,
      precision=args.precision,
      step=args.step,
      max_length=args.max_length,
      force=args.force,
    )
  except (ValueError, FileNotFoundError, FormatUnavailable, NotImplementedError, OSError) as e:
    msg = " ".join(str(e).split()) or type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2
  print(
    f"exported {args.model} -> {args.out} ({m['format']}, {m['precision']}, head {m['head']}, "
    f"max_abs_diff {m['max_abs_diff']:.3g})"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
