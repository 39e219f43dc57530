"""The task a task-level recipe trains on: a registry task (``kdjax.data.tasks``: CLUE, GLUE)
or the bundled Rotten Tomatoes demo, behind one interface (labels, splits, metrics).

  task = get_classification_task("tnews")          # or "sst-2", "rotten_tomatoes"
  train = task.load(data_dir, "train")             # list[kdjax.data.tasks.Example]
  task.metrics(logits, labels)                     # {"accuracy": ..., "main": ...}
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdjax.data import task_metrics
from kdjax.data.tasks import Example, TaskSpec, get_task, load_split

__all__ = ["CLUE_TASKS", "DEMO_TASK", "Task", "get_classification_task"]

DEMO_TASK = "rotten_tomatoes"
CLUE_TASKS = ("AFQMC", "TNEWS", "IFLYTEK", "CMNLI", "OCNLI", "CLUEWSC2020", "CSL")


@dataclass(frozen=True)
class Task:
  """A classification / regression task: a registry ``TaskSpec`` or the demo data."""

  name: str
  spec: TaskSpec | None

  @property
  def is_regression(self) -> bool:
    return bool(self.spec and self.spec.is_regression)

  @property
  def num_labels(self) -> int:
    return self.spec.num_labels if self.spec else 2

  @property
  def labels(self):
    return self.spec.labels if self.spec else ("rotten", "fresh")

  @property
  def eval_splits(self) -> tuple[str, ...]:
    """Dev splits; the first one's main metric selects checkpoints (MNLI: dev_matched)."""
    return self.spec.eval_splits if self.spec else ("dev",)

  @property
  def test_splits(self) -> tuple[str, ...]:
    return tuple(self.spec.submission_files) if self.spec else ()

  @property
  def main_metric(self) -> str:
    return self.spec.main_metric if self.spec else "accuracy"

  def label_string(self, label) -> str:
    """The label as written in data files ('' for a missing label)."""
    if label is None or (isinstance(label, float) and np.isnan(label)):
      return ""
    if self.is_regression:
      return repr(float(label))
    return self.labels[int(label)]

  def load(self, data_dir: str | None, split: str) -> list[Example]:
    if self.spec is None:
      train, dev = _rotten_tomatoes()
      rows = {"train": train, "dev": dev}.get(split)
      if rows is None:
        raise ValueError(f"{DEMO_TASK} has splits train and dev, not {split!r}")
      return [Example(i, text, None, label) for i, (text, label) in enumerate(rows)]
    if not data_dir:
      raise ValueError(
        f"config key 'data_dir' is not set: it must name the {self.spec.name} "
        "folder (or the CLUE / GLUE root holding it)"
      )
    return load_split(self.spec, data_dir, split)

  def load_file(self, path: str, key: str = "train_file") -> list[Example]:
    """Training examples from one file in the task's own format (e.g. ``kdjax.augment``'s
    output); the demo reads an SST-2-style ``sentence<TAB>label`` TSV."""
    p = Path(path)
    if not p.is_file():
      raise FileNotFoundError(f"config key {key!r}: {p} is not a file")
    spec = self.spec if self.spec is not None else get_task("SST-2")
    return spec.reader(spec, p, "train", None)

  def metrics(self, predictions, labels) -> dict[str, float]:
    """The task's metrics plus "main" (predictions: logits [N, C] or scores)."""
    if self.spec is not None:
      return task_metrics.compute_metrics(self.spec, predictions, labels)
    acc = task_metrics.accuracy(np.argmax(predictions, -1), labels)
    return {"accuracy": acc, "main": acc}

  def predictions(self, logits: np.ndarray) -> np.ndarray:
    """Label indices (classification) or scores (regression) from logits [N, C]."""
    return logits[:, 0] if self.is_regression else np.argmax(logits, -1)


def get_classification_task(name: str) -> Task:
  if not name:
    raise ValueError(
      f"config key 'task' is not set: name a CLUE / GLUE task (e.g. tnews, sst-2) or {DEMO_TASK!r}"
    )
  if name.lower().replace("-", "_") == DEMO_TASK:
    return Task(DEMO_TASK, None)
  spec = get_task(name)
  return Task(spec.name, spec)


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes():
  from kdjax.data.demo import rotten_tomatoes_classification

  return rotten_tomatoes_classification()
