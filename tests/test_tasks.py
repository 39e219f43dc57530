"""Task registry, official-file readers, prediction writers and metrics.

Fixtures under tests/fixtures/{clue,glue}/<TASK>/ mirror the official CLUE v1
(JSON lines) and GLUE (TSV) layouts, a handful of rows each.
"""

from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest

from kdjax.data import task_metrics as tm
from kdjax.data.hparams import default_hparams
from kdjax.data.tasks import (
  TASKS,
  Example,
  as_columns,
  get_task,
  load_split,
  mark_wsc_spans,
  resolve_path,
  write_clue_predictions,
  write_glue_predictions,
)

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("hf_cache"))


def task_dir(spec_name: str) -> Path:
  spec = get_task(spec_name)
  return FIX / spec.benchmark / spec.name


# (task, split) -> (count, ids, label strings | floats | None)
EXPECTED = {
  ("AFQMC", "train"): (5, [0, 1, 2, 3, 4], ["0", "0", "0", "1", "1"]),
  ("AFQMC", "dev"): (4, [0, 1, 2, 3], ["0", "0", "1", "1"]),
  ("AFQMC", "test"): (3, [0, 1, 2], None),
  ("TNEWS", "train"): (5, [0, 1, 2, 3, 4], ["102", "110", "104", "116", "100"]),
  ("TNEWS", "dev"): (4, [0, 1, 2, 3], ["102", "103", "113", "114"]),
  ("TNEWS", "test"): (3, [0, 1, 2], None),
  ("TNEWS", "test1.0"): (2, [0, 1], None),
  ("IFLYTEK", "train"): (5, [0, 1, 2, 3, 4], ["11", "15", "0", "118", "23"]),
  ("IFLYTEK", "dev"): (4, [0, 1, 2, 3], ["110", "70", "48", "92"]),
  ("IFLYTEK", "test"): (3, [0, 1, 2], None),
  # "-" rows dropped; ids are file row indices (no official id in train/dev)
  ("CMNLI", "train"): (4, [0, 1, 3, 4], ["neutral", "entailment", "entailment", "contradiction"]),
  ("CMNLI", "dev"): (4, [0, 1, 3, 4], ["neutral", "contradiction", "entailment", "contradiction"]),
  ("CMNLI", "test"): (3, [0, 1, 2], None),
  ("OCNLI", "train"): (
    4,
    [0, 1, 2, 4],
    ["entailment", "neutral", "contradiction", "contradiction"],
  ),
  ("OCNLI", "train_3k"): (2, [4, 0], ["contradiction", "entailment"]),
  ("OCNLI", "dev"): (4, [0, 1, 3, 4], ["entailment", "contradiction", "entailment", "neutral"]),
  ("OCNLI", "test"): (3, [0, 1, 2], None),
  ("CLUEWSC2020", "train"): (4, [0, 1, 2, 3], ["false", "true", "true", "true"]),
  ("CLUEWSC2020", "dev"): (3, [0, 1, 2], ["false", "true", "true"]),
  ("CLUEWSC2020", "test"): (3, [0, 1, 2], None),
  ("CSL", "train"): (4, [1, 2, 3, 4], ["1", "0", "1", "0"]),
  ("CSL", "dev"): (3, [5, 6, 7], ["1", "0", "1"]),
  ("CSL", "test"): (3, [100, 101, 102], None),
  ("SST-2", "train"): (5, [0, 1, 2, 3, 4], ["0", "0", "1", "0", "1"]),
  ("SST-2", "dev"): (4, [0, 1, 2, 3], ["1", "0", "1", "1"]),
  ("SST-2", "test"): (4, [0, 1, 2, 3], None),
  ("MRPC", "train"): (5, [0, 1, 2, 3, 4], ["1", "0", "1", "0", "1"]),
  ("MRPC", "dev"): (4, [0, 1, 2, 3], ["1", "0", "0", "1"]),
  ("MRPC", "test"): (3, [0, 1, 2], None),
  ("QQP", "train"): (5, [133273, 402555, 360472, 150662, 183004], ["0", "1", "0", "1", "0"]),
  ("QQP", "dev"): (4, [201359, 263843, 172974, 15329], ["0", "0", "1", "0"]),
  ("QQP", "test"): (3, [0, 1, 2], None),
  ("STS-B", "train"): (5, [0, 1, 2, 3, 4], [5.0, 3.8, 3.8, 2.6, 0.0]),
  ("STS-B", "dev"): (4, [0, 1, 2, 3], [5.0, 4.75, 5.0, 2.4]),
  ("STS-B", "test"): (3, [0, 1, 2], None),
  ("CoLA", "train"): (5, [0, 1, 2, 3, 4], ["1", "1", "1", "0", "1"]),
  ("CoLA", "dev"): (4, [0, 1, 2, 3], ["1", "1", "0", "1"]),
  ("CoLA", "test"): (3, [0, 1, 2], None),
  ("RTE", "train"): (4, [0, 1, 2, 3], ["not_entailment", "entailment", "entailment", "entailment"]),
  ("RTE", "dev"): (3, [0, 1, 2], ["not_entailment", "entailment", "not_entailment"]),
  ("RTE", "test"): (3, [0, 1, 2], None),
  ("MNLI", "train"): (
    6,
    [0, 1, 2, 3, 4, 5],
    ["neutral", "entailment", "entailment", "entailment", "neutral", "contradiction"],
  ),
  ("MNLI", "dev_matched"): (
    4,
    [0, 1, 2, 3],
    ["neutral", "contradiction", "entailment", "contradiction"],
  ),
  ("MNLI", "dev_mismatched"): (3, [0, 1, 2], ["contradiction", "contradiction", "entailment"]),
  ("MNLI", "test_matched"): (3, [0, 1, 2], None),
  ("MNLI", "test_mismatched"): (2, [0, 1], None),
  ("QNLI", "train"): (
    4,
    [0, 1, 2, 3],
    ["not_entailment", "not_entailment", "entailment", "entailment"],
  ),
  ("QNLI", "dev"): (3, [0, 1, 2], ["entailment", "not_entailment", "not_entailment"]),
  ("QNLI", "test"): (3, [0, 1, 2], None),
}

PAIR_TASKS = {"AFQMC", "CMNLI", "OCNLI", "CSL", "MRPC", "QQP", "STS-B", "RTE", "MNLI", "QNLI"}


# ---------------------------------------------------------------- registry


def test_registry_contents():
  assert set(TASKS) == {
    "AFQMC",
    "TNEWS",
    "IFLYTEK",
    "CMNLI",
    "OCNLI",
    "CLUEWSC2020",
    "CSL",
    "SST-2",
    "MRPC",
    "QQP",
    "STS-B",
    "CoLA",
    "RTE",
    "MNLI",
    "QNLI",
  }
  assert {t for t, _ in EXPECTED} == set(TASKS)
  for name, spec in TASKS.items():
    assert spec.name == name
    assert spec.benchmark in ("clue", "glue")
    assert {s for t, s in EXPECTED if t == name} == set(spec.splits) == set(spec.files) - {"labels"}
    assert spec.is_regression == (spec.labels is None)
    if spec.labels is not None:
      assert len(set(spec.labels)) == len(spec.labels)
    assert spec.main_metric in spec.metrics
  assert get_task("STS-B").is_regression and get_task("STS-B").num_labels == 1
  assert get_task("MNLI").eval_splits == ("dev_matched", "dev_mismatched")
  assert get_task("CMNLI").labels == ("contradiction", "entailment", "neutral")


def test_label_counts():
  tnews = get_task("TNEWS").labels
  assert len(tnews) == 15 and "105" not in tnews and "111" not in tnews
  assert tnews[0] == "100" and tnews[-1] == "116"
  assert get_task("IFLYTEK").labels == tuple(str(i) for i in range(119))
  assert get_task("CLUEWSC2020").labels == ("true", "false")


@pytest.mark.parametrize("task", ["TNEWS", "IFLYTEK"])
def test_labels_json_matches_registry(task):
  rows = [
    json.loads(l) for l in (task_dir(task) / "labels.json").read_text("utf-8").splitlines() if l
  ]
  assert tuple(r["label"] for r in rows) == get_task(task).labels


@pytest.mark.parametrize(
  "alias,name",
  [
    ("afqmc", "AFQMC"),
    ("Tnews", "TNEWS"),
    ("sst-2", "SST-2"),
    ("SST2", "SST-2"),
    ("sts_b", "STS-B"),
    ("stsb", "STS-B"),
    ("cola", "CoLA"),
    ("COLA", "CoLA"),
    ("mnli", "MNLI"),
    ("cluewsc2020", "CLUEWSC2020"),
  ],
)
def test_get_task_case_insensitive(alias, name):
  assert get_task(alias) is TASKS[name]
  assert get_task(TASKS[name]) is TASKS[name]


def test_get_task_unknown_lists_known():
  with pytest.raises(KeyError) as ei:
    get_task("squad")
  msg = str(ei.value)
  assert "squad" in msg and "AFQMC" in msg and "QNLI" in msg


def test_default_hparams():
  table = {
    "AFQMC": (2e-5, 3, 128),
    "TNEWS": (2e-5, 3, 128),
    "IFLYTEK": (2e-5, 6, 128),
    "OCNLI": (3e-5, 6, 128),
    "CMNLI": (3e-5, 3, 128),
    "CLUEWSC2020": (1e-5, 50, 128),
    "CSL": (1e-5, 8, 256),
  }
  for name in TASKS:
    hp = default_hparams(name.lower(), "finetune")
    lr, ep, msl = table.get(name, (2e-5, 3, 128))
    assert hp == {
      "learning_rate": lr,
      "num_train_epochs": ep,
      "max_seq_length": msl,
      "warmup_proportion": 0.1,
      "weight_decay": 0.01,
    }
  default_hparams("csl")["max_seq_length"] = 1  # fresh dict each call
  assert default_hparams("csl")["max_seq_length"] == 256


def test_modules_are_jax_free():
  root = Path(__file__).resolve().parents[1] / "kdjax" / "data"
  for fname in ("tasks.py", "task_metrics.py"):
    tree = ast.parse((root / fname).read_text("utf-8"))
    mods = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        mods |= {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module:
        mods.add(node.module.split(".")[0])
    assert not mods & {"jax", "flax", "optax", "torch", "tensorflow"}, (fname, mods)


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("task,split", sorted(EXPECTED))
def test_load_every_split(task, split, cache_dir):
  spec = get_task(task)
  exs = load_split(task, task_dir(task), split, cache_dir=cache_dir)
  n, ids, labels = EXPECTED[(task, split)]
  assert len(exs) == n
  assert all(isinstance(e, Example) for e in exs)
  assert [e.id for e in exs] == ids
  if labels is None:
    assert all(e.label is None for e in exs)
  elif spec.is_regression:
    assert all(isinstance(e.label, float) for e in exs)
    assert [e.label for e in exs] == pytest.approx(labels)
  else:
    assert all(isinstance(e.label, int) for e in exs)
    assert [spec.labels[e.label] for e in exs] == labels
  for e in exs:
    assert isinstance(e.text_a, str) and e.text_a
    if task in PAIR_TASKS:
      assert isinstance(e.text_b, str) and e.text_b
    else:
      assert e.text_b is None


def test_benchmark_root_resolution(cache_dir):
  # data_dir may be the benchmark root; the official folder name is appended
  exs = load_split("rte", FIX / "glue", "dev", cache_dir=cache_dir)
  assert len(exs) == 3
  assert resolve_path("afqmc", FIX / "clue", "test") == FIX / "clue" / "AFQMC" / "test.json"


def test_clue_texts(cache_dir):
  afqmc = load_split("AFQMC", task_dir("AFQMC"), "test", cache_dir=cache_dir)
  assert (afqmc[0].text_a, afqmc[0].text_b) == (
    "借呗取消的情况下还可以开通吗",
    "借呗取消了还能开通吗",
  )
  tnews = load_split("TNEWS", task_dir("TNEWS"), "train", cache_dir=cache_dir)
  assert tnews[0].text_a == "江疏影甜甜圈自拍，迷之角度竟这么好看，美吸引一切事物"
  assert tnews[0].label == get_task("TNEWS").labels.index("102") == 2
  cmnli = load_split("CMNLI", task_dir("CMNLI"), "train", cache_dir=cache_dir)
  assert all(e.text_a != "我们的一个号码会非常详细地执行你的指示。" for e in cmnli)  # the "-" row
  csl = load_split("CSL", task_dir("CSL"), "train", cache_dir=cache_dir)
  assert csl[0].text_a == "水声通信 多址接入 传感器网络"
  assert csl[0].text_b.startswith("针对水下传感器网络")


def test_cluewsc_span_marking(cache_dir):
  train = load_split("CLUEWSC2020", task_dir("CLUEWSC2020"), "train", cache_dir=cache_dir)
  assert (
    train[0].text_a
    == "这时候放在_床_上枕头旁边的手机响了，我感到奇怪，因为欠费已被停机两个月，现在[它]突然响了。"
  )
  assert (
    train[1].text_a
    == "这时候放在床上枕头旁边的_手机_响了，我感到奇怪，因为欠费已被停机两个月，现在[它]突然响了。"
  )
  # pronoun before the candidate
  assert train[2].text_a == "[他]一进门，_老王_就站了起来。"
  assert train[3].text_a == "小明把书借给了_小红_，因为[她]想看。"
  test = load_split("CLUEWSC2020", task_dir("CLUEWSC2020"), "test", cache_dir=cache_dir)
  assert [e.id for e in test] == [0, 1, 2]
  assert test[0].text_a == "_张三_告诉李四[他]明天要出差。"
  assert test[2].text_a == "[她]刚进门，_小丽_就哭了。"
  assert mark_wsc_spans("abcdef", "b", 1, "e", 4) == "a_b_cd[e]f"
  assert mark_wsc_spans("abcdef", "ef", 4, "a", 0) == "[a]bcd_ef_"


def _write_jsonl(path: Path, rows) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
  return path


def test_cluewsc_wrong_index_is_relocated_or_rejected(tmp_path, cache_dir):
  text = "小明把书借给了小红，因为她想看。"
  good = {
    "target": {"span2_index": 11, "span1_index": 3, "span1_text": "小红", "span2_text": "她"},
    "idx": 0,
    "label": "true",
    "text": text,
  }  # span1 index off by 4
  _write_jsonl(tmp_path / "train.json", [good])
  (ex,) = load_split("CLUEWSC2020", tmp_path, "train", cache_dir=cache_dir)
  assert ex.text_a == "小明把书借给了_小红_，因为[她]想看。"
  bad = dict(good, target=dict(good["target"], span1_text="小刚"))
  _write_jsonl(tmp_path / "dev.json", [good, bad])
  with pytest.raises(ValueError, match=r"dev\.json, line 2.*小刚"):
    load_split("CLUEWSC2020", tmp_path, "dev", cache_dir=cache_dir)


def test_glue_quotes_and_raw_text(cache_dir):
  sst = load_split("sst-2", task_dir("SST-2"), "train", cache_dir=cache_dir)
  assert sst[0].text_a == "hide new secretions from the parental units "  # trailing space kept
  assert sst[4].text_a == 'the film \'s "twist" works '
  sst_test = load_split("sst-2", task_dir("SST-2"), "test", cache_dir=cache_dir)
  assert sst_test[3].text_a == 'director rob marshall went out gunning to make a great one . "'
  mrpc = load_split("MRPC", task_dir("MRPC"), "train", cache_dir=cache_dir)  # header has a BOM
  assert mrpc[0].text_a.startswith('Amrozi accused his brother , whom he called " the witness "')
  mrpc_dev = load_split("MRPC", task_dir("MRPC"), "dev", cache_dir=cache_dir)
  assert (
    mrpc_dev[0].text_b
    == '" The foodservice pie business does not fit our long-term growth strategy .'
  )
  qqp = load_split("QQP", task_dir("QQP"), "dev", cache_dir=cache_dir)
  assert (qqp[3].text_a, qqp[3].text_b) == ("NA", "null")  # not turned into NaN
  qqp_train = load_split("QQP", task_dir("QQP"), "train", cache_dir=cache_dir)
  assert qqp_train[4].text_a == 'What is the meaning of "Om Namah Shivaya"?'


def test_cola_headerless(cache_dir):
  cola = load_split("CoLA", task_dir("CoLA"), "train", cache_dir=cache_dir)
  # the first line is data, not a header
  assert cola[0].text_a == "Our friends won't buy this analysis, let alone the next one we propose."
  assert cola[3].text_a == "They drank the pub." and cola[3].label == 0
  dev = load_split("CoLA", task_dir("CoLA"), "dev", cache_dir=cache_dir)
  assert dev[3].text_a == 'He said "hello" and left.'
  test = load_split("CoLA", task_dir("CoLA"), "test", cache_dir=cache_dir)
  assert test[0].text_a == "Bill whistled past the house."


def test_mnli_columns_by_name(cache_dir):
  d = task_dir("MNLI")
  train = load_split("MNLI", d, "train", cache_dir=cache_dir)
  assert (
    train[0].text_a
    == "Conceptually cream skimming has two basic dimensions - product and geography."
  )
  assert train[0].text_b == "Product and geography are what make cream skimming work. "
  assert train[4].text_b == 'The tennis shoes have a "range" of prices.'
  # dev has label1..label5 + gold_label; gold_label is used (row 0: label2 differs)
  dev = load_split("MNLI", d, "dev_matched", cache_dir=cache_dir)
  assert get_task("MNLI").labels[dev[0].label] == "neutral"
  test = load_split("MNLI", d, "test_mismatched", cache_dir=cache_dir)
  assert test[1].text_b == "Some women have an ithaca health center."


def test_as_columns(cache_dir):
  cols = as_columns(load_split("RTE", task_dir("RTE"), "dev", cache_dir=cache_dir))
  assert list(cols) == ["id", "text_a", "text_b", "label", "weight", "domain"]
  assert cols["id"] == [0, 1, 2] and cols["label"] == [1, 0, 1]
  assert cols["weight"] == [1.0, 1.0, 1.0] and cols["domain"] == [0, 0, 0]


# ---------------------------------------------------------------- CLUE official layouts

# The file list of each CLUE v1 zip (storage.googleapis.com/cluebenchmark/tasks/<folder>.zip
# unpacks to <folder>/...), as PaddleNLP's paddlenlp/datasets/clue.py (Clue.BUILDER_CONFIGS)
# lists it; OCNLI's train.3k.json ships next to train.50k.json.
CLUE_ZIPS = {
  "AFQMC": ("afqmc_public", ("train.json", "dev.json", "test.json")),
  "TNEWS": (
    "tnews_public",
    ("train.json", "dev.json", "test.json", "test1.0.json", "labels.json"),
  ),
  "IFLYTEK": ("iflytek_public", ("train.json", "dev.json", "test.json", "labels.json")),
  "CMNLI": ("cmnli_public", ("train.json", "dev.json", "test.json")),
  "OCNLI": ("ocnli_public", ("train.50k.json", "train.3k.json", "dev.json", "test.json")),
  "CLUEWSC2020": ("cluewsc2020_public", ("train.json", "dev.json", "test.json")),
  "CSL": ("csl_public", ("train.json", "dev.json", "test.json")),
}

# Label lists of PaddleNLP's CLUE loader (paddlenlp/datasets/clue.py, commit 24b1553, the
# "labels" of each BUILDER_CONFIGS entry): a converted Paddle classifier head's output k is
# label k, so these must be kdjax's orders too.
PADDLENLP_CLUE_LABELS = {
  "AFQMC": ["0", "1"],
  "TNEWS": "100 101 102 103 104 106 107 108 109 110 112 113 114 115 116".split(),
  "IFLYTEK": [str(i) for i in range(119)],
  "OCNLI": ["entailment", "contradiction", "neutral"],
  "CMNLI": ["contradiction", "entailment", "neutral"],
  "CLUEWSC2020": ["true", "false"],
  "CSL": ["0", "1"],
}


def _fixture_file(task: str, name: str) -> Path:
  # The checked-in OCNLI fixture uses the OCNLI repository's train.json name.
  src = {"train.50k.json": "train.json"}.get(name, name) if task == "OCNLI" else name
  return task_dir(task) / src


def _official_clue_root(root: Path) -> Path:
  """<root>/<task>_public/<official files> for every CLUE task (fixture rows)."""
  for task, (folder, names) in CLUE_ZIPS.items():
    (root / folder).mkdir(parents=True)
    for name in names:
      (root / folder / name).write_bytes(_fixture_file(task, name).read_bytes())
  return root


@pytest.mark.parametrize("task", sorted(PADDLENLP_CLUE_LABELS))
def test_clue_labels_match_paddlenlp(task):
  assert get_task(task).labels == tuple(PADDLENLP_CLUE_LABELS[task])


def test_ocnli_label_ids_follow_paddlenlp():
  spec = get_task("OCNLI")
  assert [spec.label_to_id(l) for l in ("entailment", "contradiction", "neutral")] == [0, 1, 2]
  # CMNLI keeps the CLUE baseline / PaddleNLP order (contradiction first)
  assert get_task("CMNLI").label_to_id("contradiction") == 0


def test_clue_official_file_names():
  for task, (folder, names) in CLUE_ZIPS.items():
    spec = get_task(task)
    assert folder in spec.dir_names and task in spec.dir_names
    assert set(spec.files.values()) == set(names), task
  assert get_task("OCNLI").files["train"] == "train.50k.json"
  assert get_task("OCNLI").files["train_3k"] == "train.3k.json"
  assert get_task("TNEWS").files["test1.0"] == "test1.0.json"


@pytest.mark.parametrize("task", sorted(CLUE_ZIPS))
def test_official_zip_layout_from_clue_root_and_task_folder(task, tmp_path, cache_dir):
  root = _official_clue_root(tmp_path / "clue")
  folder, names = CLUE_ZIPS[task]
  spec = get_task(task)
  for split in spec.splits:
    # data_dir = the CLUE root (folders named as in the zips) or the zip folder itself
    path = resolve_path(task, root, split)
    assert path == root / folder / spec.files[split] and path.name in names
    assert resolve_path(task.lower(), root / folder, split) == path
    n, ids, labels = EXPECTED[(task, split)]
    exs = load_split(task, root, split, cache_dir=cache_dir)
    assert len(exs) == n and [e.id for e in exs] == ids
    if labels is not None:
      assert [spec.labels[e.label] for e in exs] == labels


def test_bare_and_nested_clue_folders(tmp_path, cache_dir):
  # CLUE's download_clue_data.py unpacks <task>_public.zip into <data_dir>/<task>/
  nested = tmp_path / "ocnli" / "ocnli_public"
  nested.mkdir(parents=True)
  (nested / "train.50k.json").write_bytes(_fixture_file("OCNLI", "train.50k.json").read_bytes())
  assert resolve_path("OCNLI", tmp_path, "train") == nested / "train.50k.json"
  bare = tmp_path / "bare" / "OCNLI"
  bare.mkdir(parents=True)
  (bare / "train.50k.json").write_bytes(_fixture_file("OCNLI", "train.50k.json").read_bytes())
  assert resolve_path("ocnli", tmp_path / "bare", "train") == bare / "train.50k.json"
  wsc = tmp_path / "wsc"
  wsc.mkdir()
  (wsc / "dev.json").write_bytes((task_dir("CLUEWSC2020") / "dev.json").read_bytes())
  assert len(load_split("cluewsc2020", tmp_path, "dev", cache_dir=cache_dir)) == 3


def test_ocnli_train_50k_preferred_then_plain_train_json(tmp_path, cache_dir):
  folder = tmp_path / "ocnli_public"
  folder.mkdir()
  src = task_dir("OCNLI") / "train.json"
  (folder / "train.json").write_bytes(src.read_bytes())
  # only train.json (the OCNLI repository's name): read it
  assert resolve_path("OCNLI", tmp_path, "train") == folder / "train.json"
  assert len(load_split("OCNLI", folder, "train", cache_dir=cache_dir)) == 4
  # both: train.50k.json, the CLUE zip's file, wins
  _write_jsonl(
    folder / "train.50k.json", [{"sentence1": "a", "sentence2": "b", "label": "neutral"}]
  )
  assert resolve_path("OCNLI", tmp_path, "train") == folder / "train.50k.json"
  (ex,) = load_split("OCNLI", folder, "train", cache_dir=cache_dir)
  assert get_task("OCNLI").labels[ex.label] == "neutral"


def test_ocnli_errors_name_the_file_read(tmp_path, cache_dir):
  with pytest.raises(FileNotFoundError) as ei:
    load_split("OCNLI", tmp_path, "train")
  msg = str(ei.value)
  assert "train.50k.json or train.json" in msg
  assert str(tmp_path / "ocnli_public" / "train.50k.json") in msg
  assert str(tmp_path / "train.json") in msg
  lines = (task_dir("OCNLI") / "train.json").read_text("utf-8").splitlines()
  lines[1] = lines[1].replace('"label": "neutral"', '"label": "unsure"')
  (tmp_path / "train.json").write_text("\n".join(lines) + "\n", "utf-8")
  with pytest.raises(ValueError, match=r"train\.json, line 2: bad label 'unsure'"):
    load_split("OCNLI", tmp_path, "train", cache_dir=cache_dir)


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError) as ei:
    load_split("AFQMC", tmp_path, "train")
  assert "AFQMC" in str(ei.value) and str(tmp_path / "train.json") in str(ei.value)
  with pytest.raises(FileNotFoundError, match="MNLI"):
    load_split("MNLI", tmp_path, "dev_matched")


def test_unknown_split():
  with pytest.raises(ValueError, match="dev_matched"):
    load_split("MNLI", task_dir("MNLI"), "dev")
  with pytest.raises(ValueError):
    load_split("TNEWS", task_dir("TNEWS"), "labels")


def test_bad_label_json(tmp_path, cache_dir):
  src = (task_dir("AFQMC") / "train.json").read_text("utf-8").splitlines()
  src[2] = src[2].replace('"label": "0"', '"label": "2"')
  src.insert(1, "")  # blank line: skipped by the reader, still counted in line numbers
  (tmp_path / "train.json").write_text("\n".join(src) + "\n", "utf-8")
  with pytest.raises(ValueError) as ei:
    load_split("AFQMC", tmp_path, "train", cache_dir=cache_dir)
  msg = str(ei.value)
  assert str(tmp_path / "train.json") in msg and "line 4" in msg and "'2'" in msg


def test_bad_label_tsv(tmp_path, cache_dir):
  lines = (task_dir("RTE") / "dev.tsv").read_text("utf-8").splitlines()
  lines[2] = lines[2].replace("\tentailment", "\tmaybe")
  (tmp_path / "dev.tsv").write_text("\n".join(lines) + "\n", "utf-8")
  with pytest.raises(ValueError) as ei:
    load_split("RTE", tmp_path, "dev", cache_dir=cache_dir)
  msg = str(ei.value)
  assert str(tmp_path / "dev.tsv") in msg and "line 3" in msg and "'maybe'" in msg


def test_bad_label_cola_headerless(tmp_path, cache_dir):
  lines = (task_dir("CoLA") / "train.tsv").read_text("utf-8").splitlines()
  lines[1] = lines[1].replace("gj04\t1\t", "gj04\t7\t", 1)
  (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", "utf-8")
  with pytest.raises(ValueError, match=r"train\.tsv, line 2: bad label '7'"):
    load_split("CoLA", tmp_path, "train", cache_dir=cache_dir)


def test_bad_stsb_score(tmp_path, cache_dir):
  lines = (task_dir("STS-B") / "dev.tsv").read_text("utf-8").splitlines()
  lines[4] = lines[4].rsplit("\t", 1)[0] + "\tsimilar"
  (tmp_path / "dev.tsv").write_text("\n".join(lines) + "\n", "utf-8")
  with pytest.raises(ValueError, match=r"dev\.tsv, line 5.*'similar'"):
    load_split("STS-B", tmp_path, "dev", cache_dir=cache_dir)


def test_dash_only_dropped_for_nli(tmp_path, cache_dir):
  _write_jsonl(tmp_path / "train.json", [{"sentence1": "a", "sentence2": "b", "label": "-"}])
  with pytest.raises(ValueError, match="'-'"):
    load_split("AFQMC", tmp_path, "train", cache_dir=cache_dir)
  assert load_split("CMNLI", tmp_path, "train", cache_dir=cache_dir) == []


def test_missing_label_column_in_train(tmp_path, cache_dir):
  _write_jsonl(tmp_path / "train.json", [{"id": 0, "sentence1": "a", "sentence2": "b"}])
  with pytest.raises(ValueError, match="label"):
    load_split("AFQMC", tmp_path, "train", cache_dir=cache_dir)


def test_header_only_tsv(tmp_path, cache_dir):
  (tmp_path / "test.tsv").write_text("index\tsentence\n", "utf-8")
  assert load_split("SST-2", tmp_path, "test", cache_dir=cache_dir) == []


# ---------------------------------------------------------------- predictions


def test_write_clue_predictions(tmp_path, cache_dir):
  test = load_split("TNEWS", task_dir("TNEWS"), "test", cache_dir=cache_dir)
  path = write_clue_predictions("tnews", [e.id for e in test], np.array([2, 0, 14]), tmp_path)
  assert path == tmp_path / "tnews_predict.json"
  rows = [json.loads(l) for l in path.read_text("utf-8").splitlines()]
  assert rows == [{"id": 0, "label": "102"}, {"id": 1, "label": "100"}, {"id": 2, "label": "116"}]
  p = write_clue_predictions("CLUEWSC2020", [0, 1], [0, 1], tmp_path)
  assert p.name == "cluewsc2020_predict.json"
  assert p.read_text("utf-8") == '{"id": 0, "label": "true"}\n{"id": 1, "label": "false"}\n'
  p = write_clue_predictions("ocnli", [3], [1], tmp_path, filename="ocnli_50k_predict.json")
  assert p.name == "ocnli_50k_predict.json"
  with pytest.raises(ValueError):
    write_clue_predictions("afqmc", [0, 1], [0], tmp_path)
  with pytest.raises(ValueError):
    write_clue_predictions("afqmc", [0], [2], tmp_path)
  with pytest.raises(ValueError):
    write_clue_predictions("rte", [0], [0], tmp_path)


def test_write_glue_predictions(tmp_path):
  p = write_glue_predictions("rte", [0, 1, 2], [1, 0, 1], tmp_path)
  assert p == tmp_path / "RTE.tsv"
  assert (
    p.read_text("utf-8")
    == "index\tprediction\n0\tnot_entailment\n1\tentailment\n2\tnot_entailment\n"
  )
  p = write_glue_predictions("sts-b", [0, 1], np.array([4.25, 0.1234]), tmp_path)
  assert p.name == "STS-B.tsv" and p.read_text("utf-8") == "index\tprediction\n0\t4.250\n1\t0.123\n"
  p = write_glue_predictions("cola", np.arange(2), np.array([1, 0]), tmp_path)
  assert p.name == "CoLA.tsv" and p.read_text("utf-8").splitlines()[1:] == ["0\t1", "1\t0"]
  with pytest.raises(ValueError, match="test_matched"):
    write_glue_predictions("mnli", [0], [0], tmp_path)
  p = write_glue_predictions("mnli", [0], [2], tmp_path, split="test_mismatched")
  assert p.name == "MNLI-mm.tsv" and p.read_text("utf-8").splitlines()[1] == "0\tneutral"
  assert (
    write_glue_predictions("mnli", [0], [0], tmp_path, split="test_matched").name == "MNLI-m.tsv"
  )
  with pytest.raises(ValueError):
    write_glue_predictions("afqmc", [0], [0], tmp_path)


# ---------------------------------------------------------------- metrics


def test_accuracy_and_f1():
  p = [1, 1, 0, 1, 0, 0]
  y = [1, 0, 0, 1, 1, 0]
  assert tm.accuracy(p, y) == pytest.approx(4 / 6)
  # tp=2 fp=1 fn=1 -> precision 2/3, recall 2/3 -> F1 2/3
  assert tm.f1_binary(p, y) == pytest.approx(2 / 3)
  prec, rec = 2 / 3, 2 / 3
  assert tm.f1_binary(p, y) == pytest.approx(2 * prec * rec / (prec + rec))
  assert tm.f1_binary([0, 0], [0, 0]) == 0.0
  assert tm.f1_binary([1, 0, 0, 0], [0, 1, 1, 0]) == 0.0
  with pytest.raises(ValueError):
    tm.accuracy([1, 0], [1])


def test_matthews():
  p = [1, 1, 0, 1, 0, 0, 1, 1]
  y = [1, 0, 0, 1, 1, 0, 1, 1]
  # tp=4 tn=2 fp=1 fn=1: (8-1)/sqrt(5*5*3*3) = 7/15
  assert tm.matthews_corrcoef(p, y) == pytest.approx(7 / 15)
  tp, tn, fp, fn = 4, 2, 1, 1
  ref = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  assert tm.matthews_corrcoef(p, y) == pytest.approx(ref)
  assert tm.matthews_corrcoef(y, y) == pytest.approx(1.0)
  assert tm.matthews_corrcoef([1 - v for v in y], y) == pytest.approx(-1.0)
  assert tm.matthews_corrcoef([1] * 8, y) == 0.0  # undefined -> 0 (sklearn)
  # binary MCC == Pearson correlation of the 0/1 vectors
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
  assert tm.matthews_corrcoef(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
  # multiclass: hand-computed from the confusion matrix [[2,1,0],[0,1,1],[1,0,2]]
  y3 = [0, 0, 0, 1, 1, 2, 2, 2]
  p3 = [0, 0, 1, 1, 2, 0, 2, 2]
  # c=5, s=8, t=(3,2,3), p=(3,2,3): (40-22)/sqrt((64-22)*(64-22)) = 18/42
  assert tm.matthews_corrcoef(p3, y3) == pytest.approx(18 / 42)


def test_pearson_spearman():
  x = [1.0, 2.0, 3.0, 4.0, 5.0]
  y = [2.0, 1.0, 4.0, 3.0, 5.0]
  assert tm.pearson(x, y) == pytest.approx(0.8)  # cov 8/5 over var 10/5 each
  assert tm.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
  # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6*4/120
  assert tm.spearman(x, y) == pytest.approx(0.8)
  assert tm.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
  assert math.isnan(tm.pearson([1, 1, 1], [1, 2, 3]))
  np.testing.assert_allclose(tm.rankdata([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])
  np.testing.assert_allclose(tm.rankdata([3, 3, 1, 1]), [3.5, 3.5, 1.5, 1.5])
  # ties: ranks a=(1,2.5,2.5,4), b=(1,2,3,4) -> pearson = 4.5/sqrt(4.5*5)
  assert tm.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=50), rng.normal(size=50)
  no_ties = 1 - 6 * np.sum((tm.rankdata(a) - tm.rankdata(b)) ** 2) / (50 * (50**2 - 1))
  assert tm.spearman(a, b) == pytest.approx(no_ties)


def test_metrics_against_scipy_if_available():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(2)
  a = rng.integers(0, 6, 40).astype(float)  # many ties
  b = a + rng.normal(size=40)
  assert tm.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0])
  assert tm.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0])
  np.testing.assert_allclose(tm.rankdata(a), stats.rankdata(a))


def test_compute_metrics():
  m = tm.compute_metrics("mrpc", [1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0])
  assert m == pytest.approx({"f1": 2 / 3, "accuracy": 4 / 6, "main": 2 / 3})
  m = tm.compute_metrics(
    "CoLA", np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), [1, 0, 0, 0]
  )
  assert set(m) == {"mcc", "main"} and m["main"] == m["mcc"]
  assert m["mcc"] == pytest.approx(tm.matthews_corrcoef([1, 0, 1, 0], [1, 0, 0, 0]))
  m = tm.compute_metrics("afqmc", [1, 0, 1], [1, 1, 1])
  assert m == pytest.approx({"accuracy": 2 / 3, "main": 2 / 3})
  m = tm.compute_metrics(
    "sts-b", np.array([[1.0], [2.0], [3.0], [4.0], [5.0]]), [2.0, 1.0, 4.0, 3.0, 5.0]
  )
  assert m == pytest.approx({"pearson": 0.8, "spearman": 0.8, "combined": 0.8, "main": 0.8})
  m = tm.compute_metrics("mnli", np.eye(3)[[0, 1, 2, 2]], [0, 1, 2, 1])
  assert m["main"] == pytest.approx(0.75)
  with pytest.raises(ValueError):
    tm.compute_metrics("rte", [0, 1], [None, None])
