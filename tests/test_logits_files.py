"""Teacher logits files: kdjax's TSV and EasyNLP's predictor output (round trips, detection,
alignment errors), and ``python -m kdjax.evaluate --logits_format``."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from kdjax.data.logits_tsv import detect_logits_format, read_logits_tsv, write_logits_tsv
from kdjax.data.tasks import Example

LABELS = ("0", "1")


def label_string(label):
  return "" if label is None else LABELS[int(label)]


EXAMPLES = [Example(i, f"text {i}", None, i % 2) for i in range(5)]
LOGITS = np.array(
  [[0.1, -0.2], [1e-8, 3.5], [-1.25, 0.333333343], [123456.789, -7e-5], [0.0, -0.0]], np.float32
)


def _lines(path):
  return open(path, encoding="utf-8").read().splitlines()


def _write_text(path, lines):
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write("".join(line + "\n" for line in lines))
  return str(path)


def _easynlp_line(row) -> str:
  # What EasyNLP's SequenceClassificationPredictor.postprocess puts in the "logits" column
  # (",".join(str(t) for t in logits[b]) over a float32 row) and SimplePredictorManager
  # writes with --output_schema=logits: that field alone, then "\n"; no header.
  return ",".join(str(t) for t in np.asarray(row, np.float32))


# ------------------------------------------------------------------ round trips


def test_kdjax_round_trip(tmp_path):
  path = str(tmp_path / "kd.tsv")
  write_logits_tsv(path, EXAMPLES, LOGITS, label_string)
  lines = _lines(path)
  assert lines[0] == "id\tlabel\tlogits" and len(lines) == 6
  assert lines[1].split("\t")[:2] == ["0", "0"]
  assert detect_logits_format(path) == "kdjax"
  for fmt in ("auto", "kdjax"):
    got = read_logits_tsv(path, EXAMPLES, 2, label_string, format=fmt)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, LOGITS)


def test_easynlp_round_trip(tmp_path):
  path = str(tmp_path / "pred.tsv")
  write_logits_tsv(path, EXAMPLES, LOGITS, label_string, format="easynlp")
  lines = _lines(path)
  assert len(lines) == len(EXAMPLES)  # no header
  assert lines == [_easynlp_line(row) for row in LOGITS]
  assert all("\t" not in line and line.count(",") == 1 for line in lines)
  assert detect_logits_format(path) == "easynlp"
  for fmt in ("auto", "easynlp"):
    np.testing.assert_array_equal(
      read_logits_tsv(path, EXAMPLES, 2, label_string, format=fmt), LOGITS
    )
  # Positional call (the vanilla-KD recipe's) auto-detects too.
  np.testing.assert_array_equal(
    read_logits_tsv(path, EXAMPLES, 2, label_string, "the training split"), LOGITS
  )


def test_reads_a_file_as_easynlp_writes_it(tmp_path):
  # Three-label rows, numpy float32 str()s as EasyNLP produces them (incl. exponents).
  rows = np.array([[-0.35964707, 1.2, 3e-06], [2.0, -1.0, 0.5]], np.float32)
  text = "".join(_easynlp_line(r) + "\n" for r in rows)
  assert "e-06" in text
  path = tmp_path / "pred.tsv"
  path.write_text(text, "utf-8")
  exs = [Example(i, "t", None, None) for i in range(2)]
  got = read_logits_tsv(str(path), exs, 3, label_string)
  np.testing.assert_array_equal(got, rows)
  # CRLF line ends and a trailing blank line are tolerated
  path.write_text(text.replace("\n", "\r\n") + "\r\n", "utf-8")
  np.testing.assert_array_equal(read_logits_tsv(str(path), exs, 3, label_string), rows)


def test_bad_format_argument(tmp_path):
  path = str(tmp_path / "x.tsv")
  with pytest.raises(ValueError, match="unknown logits file format 'csv'"):
    write_logits_tsv(path, EXAMPLES, LOGITS, label_string, format="csv")
  write_logits_tsv(path, EXAMPLES, LOGITS, label_string)
  with pytest.raises(ValueError, match="unknown logits file format"):
    read_logits_tsv(path, EXAMPLES, 2, label_string, format="tsv")


# ------------------------------------------------------------------ errors


def _easynlp_file(tmp_path, lines=None):
  lines = [_easynlp_line(r) for r in LOGITS] if lines is None else lines
  return _write_text(tmp_path / "pred.tsv", lines)


def _error(path, fmt="auto", examples=EXAMPLES, num_labels=2):
  with pytest.raises(ValueError) as e:
    read_logits_tsv(path, examples, num_labels, label_string, format=fmt)
  return str(e.value)


def test_easynlp_row_count_mismatch(tmp_path):
  good = [_easynlp_line(r) for r in LOGITS]
  path = _easynlp_file(tmp_path, good[:-1])
  msg = _error(path)
  assert f"{path}: 4 rows of logits" in msg and "has 5 examples" in msg
  path = _easynlp_file(tmp_path, good + ["0.5,0.5"])
  assert f"{path}: 6 rows of logits" in _error(path)
  # a blank line inside the file misaligns everything after it
  path = _easynlp_file(tmp_path, good[:2] + [""] + good[2:4])
  assert f"{path}:3: 0 logits but the task has 2 labels" in _error(path)


def test_easynlp_logit_count_and_values(tmp_path):
  good = [_easynlp_line(r) for r in LOGITS]
  path = _easynlp_file(tmp_path, good[:2] + ["0.25"] + good[3:])
  assert f"{path}:3: 1 logits but the task has 2 labels" in _error(path)
  path = _easynlp_file(tmp_path, good[:2] + ["0.25,1,2"] + good[3:])
  assert f"{path}:3: 3 logits but the task has 2 labels" in _error(path)
  path = _easynlp_file(tmp_path, [good[0], "0.1,abc"] + good[2:])
  assert f"{path}:2: logits '0.1,abc' are not comma-separated floats" in _error(path)
  path = _easynlp_file(tmp_path, [good[0], "0.1 0.2"] + good[2:])
  assert f"{path}:2: logits '0.1 0.2' are not comma-separated floats" in _error(path)
  path = _easynlp_file(tmp_path, good[:4] + ["nan,1.0"])
  assert f"{path}:5: non-finite logits 'nan,1.0'" in _error(path)
  path = _easynlp_file(tmp_path, good[:4] + ["inf,1.0"])
  assert f"{path}:5: non-finite logits" in _error(path)


def test_easynlp_extra_columns_rejected(tmp_path):
  # --append_cols / a wider --output_schema add tab-separated fields: not a logits-only file
  good = [_easynlp_line(r) for r in LOGITS]
  path = _easynlp_file(tmp_path, good[:1] + [good[1] + "\t1"] + good[2:])
  msg = _error(path, fmt="easynlp")
  assert f"{path}:2: 2 tab-separated fields" in msg and "--output_schema=logits" in msg
  # on the first line auto-detection cannot tell what it is
  path = _easynlp_file(tmp_path, ["1\t" + good[0]] + good[1:])
  assert f"{path}:1: expected the header" in _error(path)


def test_forced_format_mismatch(tmp_path):
  kd = str(tmp_path / "kd.tsv")
  write_logits_tsv(kd, EXAMPLES, LOGITS, label_string)
  assert f"{kd}:1: header 'id<TAB>label<TAB>logits': a kdjax logits file" in _error(
    kd, fmt="easynlp"
  )
  ez = _easynlp_file(tmp_path)
  assert f"{ez}:1: expected the header 'id<TAB>label<TAB>logits'" in _error(ez, fmt="kdjax")


def test_undetectable_and_missing_files(tmp_path):
  empty = _write_text(tmp_path / "empty.tsv", [])
  assert f"{empty}:1: expected the header" in _error(empty)
  with pytest.raises(ValueError, match="expected the header"):
    detect_logits_format(empty)
  with pytest.raises(FileNotFoundError, match="--logits_output"):
    read_logits_tsv(str(tmp_path / "nope.tsv"), EXAMPLES, 2, label_string)


def test_kdjax_errors_still_checked(tmp_path):
  path = str(tmp_path / "kd.tsv")
  write_logits_tsv(path, EXAMPLES, LOGITS, label_string)
  lines = _lines(path)
  swapped = _write_text(tmp_path / "swapped.tsv", [lines[0], lines[2], lines[1]] + lines[3:])
  assert f"{swapped}:2: id '1'" in _error(swapped)
  short = _write_text(tmp_path / "short.tsv", lines[:-1])
  assert f"{short}: 4 rows of logits" in _error(short)


# ------------------------------------------------------------------ evaluate CLI


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from helpers_classification import write_tiny_model

  return write_tiny_model(
    str(tmp_path_factory.mktemp("teacher")), head="classification", seed=5, num_hidden_layers=1
  )


def _evaluate(teacher_dir, out, *extra):
  from helpers_classification import GLUE

  from kdjax import evaluate as evaluate_cli

  args = ["--model", teacher_dir, "--task", "sst-2", "--data_dir", GLUE, "--split", "train"]
  args += ["--logits_output", out, "--max_seq_length", "16", "--output_dir", os.path.dirname(out)]
  return evaluate_cli.main(args + list(extra))


def test_evaluate_writes_both_formats(tmp_path, teacher_dir):
  from helpers_classification import GLUE

  from kdjax.data.task import get_classification_task
  from kdjax.data.tasks import load_split

  task = get_classification_task("sst-2")
  examples = load_split("sst-2", GLUE, "train")
  kd, ez = str(tmp_path / "kd.tsv"), str(tmp_path / "pred.tsv")
  assert _evaluate(teacher_dir, kd) == 0  # default: kdjax
  assert _evaluate(teacher_dir, ez, "--logits_format", "easynlp") == 0
  assert _lines(kd)[0] == "id\tlabel\tlogits"
  assert len(_lines(ez)) == len(examples) and "\t" not in open(ez).read()
  a = read_logits_tsv(kd, examples, 2, task.label_string)
  b = read_logits_tsv(ez, examples, 2, task.label_string)
  np.testing.assert_array_equal(a, b)
  assert _lines(ez) == [_easynlp_line(r) for r in a]
  with pytest.raises(SystemExit):
    _evaluate(teacher_dir, str(tmp_path / "x.tsv"), "--logits_format", "csv")


def test_vanilla_kd_recipe_reads_easynlp_files(tmp_path, teacher_dir):
  """The student side: logits_saved_path may be an EasyNLP file (auto-detected); a
  misaligned one is reported by the recipe, naming the file."""
  from helpers_classification import GLUE

  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
  import vanilla_kd as kd_config

  from kdjax.recipes import vanilla_kd

  ez = str(tmp_path / "pred.tsv")
  assert _evaluate(teacher_dir, ez, "--logits_format", "easynlp") == 0
  short = _write_text(tmp_path / "short.tsv", _lines(ez)[:-1])
  config = kd_config.get_config(
    f"tiny,task=sst-2,data_dir={GLUE},logits={short},student={teacher_dir}"
  )
  with pytest.raises(ValueError, match=r"short\.tsv: 4 rows of logits"):
    vanilla_kd.build(config, str(tmp_path / "wd"))
