"""One command from a pretrained teacher to a deployable student.

  python -m kdjax.pipeline --config=configs/pipeline.py:demo --workdir=runs/p
  python -m kdjax.pipeline --config=configs/pipeline.py:rotten_tomatoes --workdir=runs/rt
  python -m kdjax.pipeline --config=configs/pipeline.py:demo --workdir=runs/p \\
      --config.stages.order=teacher_finetune,vanilla_kd,prune,export \\
      --config.stages.teacher_finetune.model=runs/ft_demo          # an existing teacher
  python -m kdjax.pipeline --config=configs/pipeline.py:demo --workdir=runs/p --dry_run

The config (configs/pipeline.py) names the teacher, the student architecture, the unlabelled
corpus, the task and the stages to run, in this order (``stages.order``, a comma list):

  01 general_distill    kdjax.train, configs/minilmv2.py or configs/ppminilm.py: the student's
                        starting weights (``workdir/01_general_distill/export``)
  02 teacher_finetune   kdjax.train, configs/finetune.py from ``teacher``: the task teacher
  03 student_finetune   kdjax.train, configs/finetune.py from the student: the labels-only arm
  04 tinybert           kdjax.train, configs/tinybert.py, two runs: 04_tinybert_intermediate
  05                    and 05_tinybert_prediction (from 04's export)
  06 vanilla_kd         kdjax.evaluate (the teacher's training-split logits), then kdjax.train,
                        configs/vanilla_kd.py
  07 metakd             kdjax.metakd_prep (embeddings, prototype weights, dev file), then
                        kdjax.train: configs/metakd_teacher.py from ``teacher`` on every domain
                        of ``stages.metakd.data_dir``, configs/metakd_student.py stage first
                        and second for ``stages.metakd.genre`` (all in 07_metakd/)
  08 prune              kdjax.train, configs/prune.py: width pruning of the last student
  09 quantize           kdjax.compress.quantize, configs/quantize.py: INT8 of the pruned model
  10 export             kdjax.export SRC OUT --format=F for each of ``stages.export.formats``

The student every task stage starts from is general_distill's export, else ``student.path``,
else a random model with the architecture of ``student.*`` over the teacher's config (built
once in ``workdir/00_student_init``). Any stage can be left out of ``stages.order`` or given
an existing model (``stages.<name>.model=PATH``: not run, its model used downstream).
Each run's config is ``stages.<name>.config`` (``configs/x.py[:arg]``) plus the overrides the
pipeline derives (teacher, student, task, data: see ``--dry_run``) plus
``stages.<name>.overrides`` (``"key=value key2=value2"``, passed as ``--config.key=value``).

Each stage runs the documented CLI in a subprocess in ``workdir/<nn>_<stage>/`` (log:
``pipeline.log`` there). A finished stage writes ``stage.json`` (the fingerprint of its inputs:
its command lines, its config files' contents and the fingerprints of the models it reads, with
paths relative to the workdir and to kdjax's configs; and its outputs) and is skipped next time;
a killed pipeline resumes inside the stage it was in (the trainer resumes from its
checkpoints); a stage whose inputs changed is moved aside to ``<nn>_<stage>.replaced-<time>``
and rerun, with the reason printed (and so are the stages downstream of it).

After each stage and at the end: ``report.md``, ``report.json``, ``report.svg`` (and
``report.png`` where matplotlib is installed): per stage the dev metric, parameters, weight
file size and an indicative jitted-JAX speed-up over the teacher, and accuracy against speed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Canonical order and directory numbers; the user-facing names (``stages.order``) expand to
# these (``tinybert`` is two trainer runs).
CANONICAL = (
  "general_distill",
  "teacher_finetune",
  "student_finetune",
  "tinybert_intermediate",
  "tinybert_prediction",
  "vanilla_kd",
  "metakd",
  "prune",
  "quantize",
  "export",
)
NUMBER = {n: i + 1 for i, n in enumerate(CANONICAL)}
STAGE_NAMES = (
  "general_distill",
  "teacher_finetune",
  "student_finetune",
  "tinybert",
  "vanilla_kd",
  "metakd",
  "prune",
  "quantize",
  "export",
)
EXPANDS = {"tinybert": ("tinybert_intermediate", "tinybert_prediction")}
# task-level students (the default source of prune / quantize / export: the latest present)
STUDENT_STAGES = ("student_finetune", "tinybert_prediction", "vanilla_kd", "metakd")
TRAINER_STAGES = (
  "general_distill",
  "teacher_finetune",
  "student_finetune",
  "tinybert_intermediate",
  "tinybert_prediction",
  "vanilla_kd",
  "prune",
)
EXPORT_FORMATS = ("onnx", "savedmodel", "jax", "hf", "tensorrt")
STUDENT_SHAPE_KEYS = (
  "num_hidden_layers",
  "hidden_size",
  "num_attention_heads",
  "attention_head_size",
  "intermediate_size",
  "hidden_act",
)


class PipelineError(ValueError):
  """A bad pipeline config or a failed stage: one line."""


@dataclasses.dataclass
class Stage:
  name: str  # canonical name
  key: str  # its config block: stages.<key>
  dir: str
  output: str  # the model (or artefact directory) it produces
  commands: list = dataclasses.field(default_factory=list)  # argv lists (after python)
  deps: list = dataclasses.field(default_factory=list)  # upstream stage names
  paths: dict = dataclasses.field(default_factory=dict)  # external input paths to fingerprint
  given: str = ""  # an existing model: not run
  action: Callable | None = None  # in-process work instead of commands (00_student_init)
  outputs: dict = dataclasses.field(default_factory=dict)  # name -> path, checked at the end
  role: str = "student"  # teacher | student | encoder | intermediate | int8 | artefact
  settings: dict = dataclasses.field(default_factory=dict)  # in-process inputs (fingerprinted)

  @property
  def label(self) -> str:
    return os.path.basename(self.dir)


# ------------------------------------------------------------------------------- resolution
def _abs(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path)) if path else ""


def _config_path(spec: str, key: str) -> str:
  """``configs/x.py[:arg]`` with the file made absolute (relative: cwd, else the repo root)."""
  if not spec:
    raise PipelineError(f"config key {key!r} is not set (e.g. configs/finetune.py)")
  file, sep, arg = spec.partition(":")
  for base in (os.getcwd(), ROOT):
    cand = os.path.join(base, file)
    if os.path.isfile(cand):
      return os.path.abspath(cand) + sep + arg
  raise PipelineError(f"config key {key!r}: {file} is not a file")


def parse_overrides(text: str, key: str) -> dict:
  """``"a=1 b.c=x"`` -> {"a": "1", "b.c": "x"} (shell quoting allowed)."""
  out = {}
  try:
    tokens = shlex.split(text or "")
  except ValueError as e:
    raise PipelineError(f"config key {key!r}: {e}") from None
  for tok in tokens:
    k, sep, v = tok.partition("=")
    k = k.strip().removeprefix("--config.")
    if not sep or not k:
      raise PipelineError(f"config key {key!r}: {tok!r} is not key=value")
    out[k] = v
  return out


def _order(c) -> list[str]:
  text = str(c.stages.order or "")
  names = [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]
  for n in names:
    if n not in STAGE_NAMES:
      raise PipelineError(
        f"config key 'stages.order': unknown stage {n!r} (known: {', '.join(STAGE_NAMES)})"
      )
  if len(set(names)) != len(names):
    raise PipelineError(f"config key 'stages.order': a stage is named twice ({text})")
  idx = [STAGE_NAMES.index(n) for n in names]
  if idx != sorted(idx):
    raise PipelineError(
      f"config key 'stages.order': stages run in the order {', '.join(STAGE_NAMES)}; "
      f"got {', '.join(names)}"
    )
  return names


def _given(c, key: str) -> str:
  block = c.stages.get(key)
  return _abs(block.get("model", "")) if block is not None else ""


def _trainer(config: str, workdir: str, overrides: dict) -> list[str]:
  return [
    "-m",
    "kdjax.train",
    f"--config={config}",
    f"--workdir={workdir}",
    *(f"--config.{k}={v}" for k, v in overrides.items()),
  ]


def resolve(c, workdir: str) -> list[Stage]:
  """The stages to run (or take as given), in order, with their command lines; every check
  that does not need a stage's output runs here, before anything is run."""
  workdir = _abs(workdir)
  names = _order(c)
  for key in STAGE_NAMES:
    if key in c.stages and c.stages[key].get("model") and not os.path.exists(_given(c, key)):
      raise PipelineError(f"config key 'stages.{key}.model': {_given(c, key)} does not exist")
  active = [n for n in STAGE_NAMES if n in names or _given(c, n)]
  task, data_dir = str(c.task or ""), _abs(str(c.data_dir or ""))
  teacher = _abs(str(c.teacher or ""))
  task_kv = {"task": task, **({"data_dir": data_dir} if data_dir else {})}
  stages: list[Stage] = []
  out: dict[str, Stage] = {}

  def sdir(name):
    return os.path.join(workdir, f"{NUMBER[name]:02d}_{name}")

  def add(st: Stage):
    stages.append(st)
    out[st.name] = st
    return st

  def block(key):
    if key not in c.stages:
      raise PipelineError(f"config key 'stages.{key}' is missing from the config")
    return c.stages[key]

  def user(key, extra=""):
    return parse_overrides(
      block(key).get(extra or "overrides", ""), f"stages.{key}.{extra or 'overrides'}"
    )

  def need_task(key):
    if not task:
      raise PipelineError(f"config key 'task' is not set (stage {key} needs the task)")

  def need_teacher(key):
    if not teacher:
      raise PipelineError(f"config key 'teacher' is not set (stage {key} starts from it)")
    if not os.path.isdir(teacher):
      raise PipelineError(f"config key 'teacher': {teacher} is not a directory")

  def given_stage(name, key, role, path):
    return add(Stage(name, key, sdir(name), path, given=path, role=role, paths={"model": path}))

  shapes = {k: c.student[k] for k in STUDENT_SHAPE_KEYS if c.student.get(k) is not None}
  student_path = _abs(str(c.student.get("path") or ""))
  if student_path and shapes:
    raise PipelineError(
      "config key 'student.path' fixes the student's architecture (its weights are loaded): "
      f"do not set {', '.join(f'student.{k}' for k in shapes)} with it"
    )
  if student_path and not os.path.isdir(student_path):
    raise PipelineError(f"config key 'student.path': {student_path} is not a directory")

  # 01 general distillation
  if _given(c, "general_distill"):
    given_stage("general_distill", "general_distill", "encoder", _given(c, "general_distill"))
  elif "general_distill" in active:
    need_teacher("general_distill")
    input_dir = _abs(str(c.corpus.get("input_dir") or ""))
    builder = str(c.corpus.get("builder") or "")
    if not input_dir and not builder:
      raise PipelineError(
        "config key 'corpus.input_dir' is not set (stage general_distill needs unlabelled "
        "text; or set corpus.builder=rotten_tomatoes)"
      )
    if builder and builder not in CORPUS_BUILDERS:
      raise PipelineError(
        f"config key 'corpus.builder': unknown {builder!r} (known: {', '.join(CORPUS_BUILDERS)})"
      )
    if input_dir and not os.path.isdir(input_dir):
      raise PipelineError(f"config key 'corpus.input_dir': {input_dir} is not a directory")
    corpus = input_dir or os.path.join(workdir, "corpus", builder)
    d = sdir("general_distill")
    kv = {"teacher.path": teacher, "input_dir": corpus, "progress_bar": "False"}
    if student_path:
      kv["student.path"] = student_path
    else:
      kv.update({f"student.{k}": str(v) for k, v in shapes.items()})
      if c.student.get("config_path"):
        kv["student.config_path"] = _abs(c.student.config_path)
    kv.update(user("general_distill"))
    cfg = _config_path(block("general_distill").config, "stages.general_distill.config")
    st = add(
      Stage(
        "general_distill",
        "general_distill",
        d,
        os.path.join(d, "export"),
        commands=[_trainer(cfg, d, kv)],
        paths={"teacher": teacher, **({"corpus": input_dir} if input_dir else {})},
        outputs={"export": os.path.join(d, "export")},
        role="encoder",
        settings={"corpus_builder": builder} if builder else {},
      )
    )
    if builder:
      st.action = lambda st=st, corpus=corpus, builder=builder: CORPUS_BUILDERS[builder](corpus)

  def finetune_stage(name, model_path, **stage_kw):
    """A configs/finetune.py run of ``model_path`` on the task (teacher or student)."""
    need_task(name)
    d = sdir(name)
    kv = {**task_kv, "model.path": model_path, "progress_bar": "False", **user(name)}
    cfg = _config_path(block(name).config, f"stages.{name}.config")
    return Stage(name, name, d, d, commands=[_trainer(cfg, d, kv)], **stage_kw)

  # 02 teacher fine-tuning
  if _given(c, "teacher_finetune"):
    given_stage("teacher_finetune", "teacher_finetune", "teacher", _given(c, "teacher_finetune"))
  elif "teacher_finetune" in active:
    need_task("teacher_finetune")  # checked first, as before: the task, then the teacher
    need_teacher("teacher_finetune")
    d = sdir("teacher_finetune")
    add(
      finetune_stage(
        "teacher_finetune",
        teacher,
        paths={"teacher": teacher, **({"data_dir": data_dir} if data_dir else {})},
        outputs={"export": os.path.join(d, "export")},
        role="teacher",
      )
    )
  ft_teacher = out.get("teacher_finetune")

  task_students = [
    n for n in ("student_finetune", "tinybert", "vanilla_kd", "metakd") if n in active
  ]
  init: Stage | None = out.get("general_distill")
  init_path = init.output if init else student_path
  if init is None and not student_path and any(not _given(c, n) for n in task_students):
    # a random student, built once in-process
    base = _abs(str(c.student.get("config_path") or "")) or teacher
    if not base:
      raise PipelineError(
        "config key 'student.path' is not set: the task stages need a student (set "
        "student.path, run general_distill, or set teacher / student.config_path for the "
        "architecture of a random one)"
      )
    d = os.path.join(workdir, "00_student_init")
    student_cfg = {k: v for k, v in c.student.to_dict().items() if k not in ("path",)}
    init = add(
      Stage(
        "student_init",
        "student",
        d,
        d,
        paths={"architecture": base},
        role="intermediate",
        settings={"student": student_cfg},
      )
    )
    init.action = lambda d=d, base=base, sc=student_cfg: build_random_student(d, base, sc)
    init.outputs = {"config": os.path.join(d, "config.json")}
    init_path = d

  def init_deps():
    return [init.name] if init is not None and init.name in out else []

  def need_ft_teacher(key):
    if ft_teacher is None:
      raise PipelineError(
        f"stage {key} needs a fine-tuned teacher: add teacher_finetune to config key "
        "'stages.order' or set config key 'stages.teacher_finetune.model'"
      )

  # 03 student fine-tuning (labels only)
  if _given(c, "student_finetune"):
    given_stage("student_finetune", "student_finetune", "student", _given(c, "student_finetune"))
  elif "student_finetune" in active:
    add(
      finetune_stage(
        "student_finetune",
        init_path,
        deps=init_deps(),
        paths={} if init_deps() else {"student": init_path},
      )
    )

  # 04/05 TinyBERT
  if _given(c, "tinybert"):
    given_stage("tinybert_prediction", "tinybert", "student", _given(c, "tinybert"))
  elif "tinybert" in active:
    need_task("tinybert")
    need_ft_teacher("tinybert")
    cfg = _config_path(block("tinybert").config, "stages.tinybert.config")
    common = user("tinybert")
    d1, d2 = sdir("tinybert_intermediate"), sdir("tinybert_prediction")
    kv1 = {
      **task_kv,
      "stage": "intermediate",
      "teacher.path": ft_teacher.output,
      "student.path": init_path,
      "progress_bar": "False",
      **common,
      **user("tinybert", "intermediate_overrides"),
    }
    add(
      Stage(
        "tinybert_intermediate",
        "tinybert",
        d1,
        os.path.join(d1, "export"),
        commands=[_trainer(cfg, d1, kv1)],
        deps=["teacher_finetune", *init_deps()],
        paths={} if init_deps() else {"student": init_path},
        outputs={"export": os.path.join(d1, "export")},
        role="intermediate",
      )
    )
    kv2 = {
      **task_kv,
      "stage": "prediction",
      "teacher.path": ft_teacher.output,
      "student.path": os.path.join(d1, "export"),
      "progress_bar": "False",
      **common,
      **user("tinybert", "prediction_overrides"),
    }
    add(
      Stage(
        "tinybert_prediction",
        "tinybert",
        d2,
        d2,
        commands=[_trainer(cfg, d2, kv2)],
        deps=["teacher_finetune", "tinybert_intermediate"],
      )
    )

  # 06 vanilla KD
  if _given(c, "vanilla_kd"):
    given_stage("vanilla_kd", "vanilla_kd", "student", _given(c, "vanilla_kd"))
  elif "vanilla_kd" in active:
    need_task("vanilla_kd")
    need_ft_teacher("vanilla_kd")
    d = sdir("vanilla_kd")
    logits = os.path.join(d, "teacher_train_logits.tsv")
    ev = [
      "-m",
      "kdjax.evaluate",
      f"--model={ft_teacher.output}",
      f"--task={task}",
      *([f"--data_dir={data_dir}"] if data_dir else []),
      "--split=train",
      f"--logits_output={logits}",
      f"--output_dir={os.path.join(d, 'teacher_eval')}",
    ]
    kv = {
      **task_kv,
      "logits_saved_path": logits,
      "student.path": init_path,
      "progress_bar": "False",
      **user("vanilla_kd"),
    }
    cfg = _config_path(block("vanilla_kd").config, "stages.vanilla_kd.config")
    add(
      Stage(
        "vanilla_kd",
        "vanilla_kd",
        d,
        d,
        commands=[ev, _trainer(cfg, d, kv)],
        deps=["teacher_finetune", *init_deps()],
        paths={} if init_deps() else {"student": init_path},
      )
    )

  # 07 Meta-KD: prep -> meta-teacher (from ``teacher``, every domain) -> meta-student first
  # and second for the target genre (from the student)
  if _given(c, "metakd"):
    given_stage("metakd", "metakd", "student", _given(c, "metakd"))
  elif "metakd" in active:
    add(
      metakd_stage(block("metakd"), sdir("metakd"), teacher, init_path, init_deps(), need_teacher)
    )

  def source_of(key: str, prefer: tuple[str, ...]) -> Stage:
    """The model a compression stage works on: stages.<key>.source, else the latest of
    ``prefer`` that is present."""
    name = str(block(key).get("source") or "")
    if name:
      name = EXPANDS.get(name, (name,))[-1]
      if name not in out:
        raise PipelineError(
          f"config key 'stages.{key}.source': {name!r} is not a stage of this pipeline "
          f"(present: {', '.join(out)})"
        )
      return out[name]
    for n in reversed(prefer):
      if n in out:
        return out[n]
    raise PipelineError(
      f"stage {key} has no model to work on: run or give a task model (teacher_finetune, "
      f"a task distillation stage), or set config key 'stages.{key}.source'"
    )

  models_chain = ("teacher_finetune", *STUDENT_STAGES)
  # 08 prune
  if _given(c, "prune"):
    given_stage("prune", "prune", "student", _given(c, "prune"))
  elif "prune" in active:
    need_task("prune")
    src = source_of("prune", models_chain)
    d = sdir("prune")
    kv = {**task_kv, "teacher.path": src.output, "progress_bar": "False", **user("prune")}
    cfg = _config_path(block("prune").config, "stages.prune.config")
    add(
      Stage(
        "prune",
        "prune",
        d,
        os.path.join(d, "export"),
        commands=[_trainer(cfg, d, kv)],
        deps=[src.name],
        outputs={"export": os.path.join(d, "export")},
      )
    )

  # 09 quantize
  if _given(c, "quantize"):
    given_stage("quantize", "quantize", "int8", _given(c, "quantize"))
  elif "quantize" in active:
    need_task("quantize")
    src = source_of("quantize", (*models_chain, "prune"))
    d = sdir("quantize")
    kv = {**task_kv, "model": src.output, **user("quantize")}
    cfg = _config_path(block("quantize").config, "stages.quantize.config")
    cmd = ["-m", "kdjax.compress.quantize", f"--config={cfg}", f"--workdir={d}"]
    cmd += [f"--config.{k}={v}" for k, v in kv.items()]
    add(
      Stage(
        "quantize",
        "quantize",
        d,
        os.path.join(d, "int8"),
        commands=[cmd],
        deps=[src.name],
        outputs={"int8": os.path.join(d, "int8"), "results": os.path.join(d, "results.json")},
        role="int8",
      )
    )

  # 10 export
  if "export" in active and not _given(c, "export"):
    src = source_of("export", (*models_chain, "prune", "quantize"))
    fmts = [
      t.strip()
      for t in str(block("export").get("formats") or "").replace(";", ",").split(",")
      if t.strip()
    ]
    if not fmts:
      raise PipelineError("config key 'stages.export.formats' is empty (e.g. onnx)")
    for f in fmts:
      if f not in EXPORT_FORMATS:
        raise PipelineError(
          f"config key 'stages.export.formats': unknown format {f!r} "
          f"(known: {', '.join(EXPORT_FORMATS)})"
        )
    d = sdir("export")
    int8 = src.role == "int8"
    cmds, outs = [], {}
    for f in fmts:
      o = os.path.join(d, f)
      prec = ["--precision=int8"] if int8 and f in ("onnx", "tensorrt") else []
      cmds.append(["-m", "kdjax.export", src.output, o, f"--format={f}", *prec, "--force"])
      outs[f] = os.path.join(o, "export.json")
    add(
      Stage(
        "export",
        "export",
        d,
        os.path.join(d, fmts[0]),
        commands=cmds,
        deps=[src.name],
        outputs=outs,
        role="artefact",
        settings={"source_stage": src.name},
      )
    )
  stages.sort(key=lambda st: NUMBER.get(st.name, 0))  # 00_student_init first
  for st in stages:
    check_config_keys(st)
  return stages


def _with_arg(spec: str, item: str) -> str:
  """``configs/x.py[:arg]`` with ``item`` appended to its ``:arg``."""
  if not item:
    return spec
  return f"{spec},{item}" if ":" in spec else f"{spec}:{item}"


def metakd_stage(b, d: str, teacher: str, init_path: str, deps: list, need_teacher) -> Stage:
  """Stage 07: ``kdjax.metakd_prep`` (embeddings with ``stages.metakd.encoder`` or the teacher,
  prototype weights, the dev file in the standard layout; skipped when ``data_dir`` already
  holds ``train_with_weights.tsv`` and ``dev_standard.tsv``), the meta-teacher from
  ``teacher`` on every domain (``teacher_config``), then the meta-student for ``genre``:
  stage first (``first_overrides``) from the student, stage second (``second_overrides``)
  from first's export. ``overrides`` go to all three runs. Output: stage second's workdir."""
  from kdjax.data import metakd as M

  need_teacher("metakd")
  raw = _abs(str(b.get("data_dir") or ""))
  if not raw:
    raise PipelineError(
      "config key 'stages.metakd.data_dir' is not set (a folder of raw SENTI train.tsv and "
      "dev.tsv, e.g. from python -m kdjax.metakd_prep split_amazon)"
    )
  genre = str(b.get("genre") or "")
  if not genre:
    raise PipelineError("config key 'stages.metakd.genre' is not set (the target domain)")
  domains = [t.strip() for t in str(b.get("domains") or "").replace(";", ",").split(",")]
  domains = [t for t in domains if t]
  if domains and genre not in domains:
    raise PipelineError(
      f"config key 'stages.metakd.genre': {genre!r} is not among stages.metakd.domains "
      f"({', '.join(domains)})"
    )
  prepared = all(os.path.isfile(os.path.join(raw, f)) for f in (M.TRAIN_FILE, M.DEV_FILE))
  if not prepared:
    for f in ("train.tsv", "dev.tsv"):
      if not os.path.isfile(os.path.join(raw, f)):
        raise PipelineError(
          f"config key 'stages.metakd.data_dir': {raw} has neither {f} (raw SENTI layout) "
          f"nor {M.TRAIN_FILE} + {M.DEV_FILE} (prepared)"
        )
  senti = raw if prepared else os.path.join(d, "data")
  common = parse_overrides(b.get("overrides", ""), "stages.metakd.overrides")
  length = common.get("max_seq_length")
  # the trainers' domain order is domains, else the file's names sorted (their default)
  arg = f"domains={';'.join(domains)}" if domains else ""
  cmds = []
  if not prepared:
    if not domains:
      try:
        rows = M.read_raw_senti(os.path.join(raw, "train.tsv"))
      except ValueError as e:
        raise PipelineError(f"config key 'stages.metakd.data_dir': {e}") from None
      domains = sorted({r.domain for r in rows})
      if genre not in domains:
        raise PipelineError(
          f"config key 'stages.metakd.genre': {genre!r} is not a domain of "
          f"{raw}/train.tsv ({', '.join(domains)})"
        )
    enc = _abs(str(b.get("encoder") or "")) or teacher
    prep = ["-m", "kdjax.metakd_prep"]
    cmds += [
      [
        *prep,
        "extract_embeddings",
        f"--model={enc}",
        f"--input={raw}/train.tsv",
        f"--output={senti}/train.embeddings.tsv",
        *([f"--max_seq_length={length}"] if length else []),
      ],
      [
        *prep,
        "compute_weights",
        f"--input={senti}/train.embeddings.tsv",
        f"--output={senti}/{M.TRAIN_FILE}",
        f"--domains={','.join(domains)}",
      ],
      [*prep, "standardize", f"--input={raw}/dev.tsv", f"--output={senti}/{M.DEV_FILE}"],
    ]
  wt, w1, w2 = (os.path.join(d, x) for x in ("meta_teacher", "student_first", "student_second"))
  base = {"data_dir": senti, "progress_bar": "False", **common}
  t_cfg = _with_arg(
    _config_path(str(b.get("teacher_config") or ""), "stages.metakd.teacher_config"), arg
  )
  s_cfg = _with_arg(_config_path(b.config, "stages.metakd.config"), arg)
  cmds.append(
    _trainer(
      t_cfg,
      wt,
      {
        "model.path": teacher,
        **base,
        **parse_overrides(b.get("teacher_overrides", ""), "stages.metakd.teacher_overrides"),
      },
    )
  )
  for stage_name, w, student, key in (
    ("first", w1, init_path, "first_overrides"),
    ("second", w2, os.path.join(w1, "export"), "second_overrides"),
  ):
    kv = {
      "stage": stage_name,
      "genre": genre,
      "teacher.path": os.path.join(wt, "export"),
      "student.path": student,
      **base,
      **parse_overrides(b.get(key, ""), f"stages.metakd.{key}"),
    }
    cmds.append(_trainer(s_cfg, w, kv))
  return Stage(
    "metakd",
    "metakd",
    d,
    w2,
    commands=cmds,
    deps=deps,
    paths={"teacher": teacher, "data_dir": raw, **({} if deps else {"student": init_path})},
    outputs={"export": os.path.join(w2, "export")},
    settings={"dev_key": "eval/score", "metric": f"{genre}/accuracy"},
  )


_CONFIG_MODULES: dict = {}


def _load_config(spec: str):
  import importlib.util

  file, _, arg = spec.partition(":")
  if file not in _CONFIG_MODULES:
    mod_spec = importlib.util.spec_from_file_location(f"_pipeline_cfg_{len(_CONFIG_MODULES)}", file)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    _CONFIG_MODULES[file] = mod
  return _CONFIG_MODULES[file].get_config(arg or None)


def check_config_keys(stage: Stage) -> None:
  """Every --config.<key> of the stage's runs names a key of its config file: one error
  naming ``stages.<stage>.config`` / ``.overrides`` before anything runs."""
  for argv in stage.commands:
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
      continue
    try:
      cfg = _load_config(spec)
    except Exception as e:
      raise PipelineError(
        f"config key 'stages.{stage.key}.config': {spec}: {type(e).__name__}: {e}"
      ) from None
    for a in argv:
      if not a.startswith("--config."):
        continue
      key = a[len("--config.") :].split("=", 1)[0]
      node = cfg
      for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
          raise PipelineError(
            f"config key 'stages.{stage.key}.overrides': {key!r} is not a key of "
            f"{os.path.relpath(spec.partition(':')[0])} (stage {stage.label})"
          )
        node = node[part]


# -------------------------------------------------------------------- in-process stage work
def _rotten_tomatoes_corpus(out_dir: str) -> None:
  from kdjax.data.demo import write_text_corpus

  if not os.path.isfile(os.path.join(out_dir, ".complete")):
    write_text_corpus(out_dir)
    open(os.path.join(out_dir, ".complete"), "w").close()


CORPUS_BUILDERS = {"rotten_tomatoes": _rotten_tomatoes_corpus}


def build_random_student(out_dir: str, base: str, student_cfg: dict) -> None:
  """A randomly initialised encoder with ``base``'s config and the ``student`` shape keys,
  saved as a Hugging Face directory with ``base``'s tokenizer."""
  import ml_collections

  from kdjax import models
  from kdjax.data.tokenizer import Tokenizer
  from kdjax.models import loading

  tok_dir = loading.tokenizer_dir_of(base)
  handle, _ = loading.build_student(
    ml_collections.ConfigDict({**student_cfg, "path": ""}),
    base=loading.read_config(base),
    tokenizer_dir=tok_dir,
  )
  tmp = out_dir + ".tmp"
  models.save_pretrained(handle.model(), tmp, tokenizer=Tokenizer.from_dir(tok_dir))
  for name in os.listdir(tmp):
    os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
  os.rmdir(tmp)


# ------------------------------------------------------------------------------- fingerprints
def write_json(path: str, obj, indent: int = 1) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically (a ``.tmp`` file, fsync, ``os.replace``): a
  pipeline killed mid-write leaves the old file or the new one, never a truncated one that
  would stop every later run."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=indent)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _read_record(path: str) -> dict | None:
  """A stage record (``stage.json`` / ``pipeline_inputs.json``); None where it is not readable
  JSON (an older kdjax killed mid-write): the caller reruns the stage and says why."""
  try:
    with open(path) as f:
      rec = json.load(f)
  except (OSError, ValueError):
    return None
  return rec if isinstance(rec, dict) else None


def _sha(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def path_fingerprint(path: str) -> str:
  """Names, sizes and modification times of the files under ``path`` (no content read)."""
  items = []
  if os.path.isfile(path):
    st = os.stat(path)
    return _sha([os.path.basename(path), st.st_size, st.st_mtime_ns])
  for root, dirs, files in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for f in sorted(files):
      p = os.path.join(root, f)
      try:
        st = os.stat(p)
      except OSError:
        continue
      items.append([os.path.relpath(p, path), st.st_size, st.st_mtime_ns])
  return _sha(items)


def stage_hash(stage: Stage) -> str | None:
  """What downstream stages fingerprint: the hash of the stage.json (None: not finished)."""
  p = os.path.join(stage.dir, "stage.json")
  if stage.given:
    return "given:" + path_fingerprint(stage.given)
  if not os.path.isfile(p):
    return None
  with open(p, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def _kdjax_configs() -> str:
  return os.path.join(ROOT, "configs") + os.sep


def stage_inputs(stage: Stage, done: dict[str, Stage], workdir: str, portable: bool = True) -> dict:
  """What a stage's fingerprint covers. Paths under the workdir read ``$WORKDIR`` and, with
  ``portable``, kdjax's bundled configs ``$KDJAX/configs``, so a workdir moved to another
  machine or opened from another checkout of the same kdjax skips its finished stages; the
  contents of every ``--config=`` file are hashed too (``config_files``), so an edited config
  reruns its stages wherever it lives. ``portable=False`` gives the inputs of records written
  before stop 25 (absolute config paths, no contents; ``legacy_inputs`` derives them from these
  without reading anything again), which ``run_stage`` still accepts."""
  subs = [(_abs(workdir), "$WORKDIR")]
  if portable:
    subs.append((_kdjax_configs(), "$KDJAX/configs/"))

  def rel(x):
    if isinstance(x, str):
      for path, alias in subs:
        x = x.replace(path, alias)
      return x
    if isinstance(x, list | tuple):
      return [rel(v) for v in x]
    if isinstance(x, dict):
      return {k: rel(v) for k, v in x.items()}
    return x

  return {
    "commands": rel(stage.commands),
    "settings": rel(stage.settings),
    "upstream": {n: stage_hash(done[n]) for n in stage.deps},
    "paths": {k: [rel(p), path_fingerprint(p)] for k, p in stage.paths.items()},
    **({"config_files": _config_files(stage.commands, rel)} if portable else {}),
  }


def legacy_inputs(inputs: dict) -> dict:
  """``stage_inputs(..., portable=False)`` from the portable ``inputs``: the configs' alias
  back to its absolute path, no ``config_files``."""
  old = {k: v for k, v in inputs.items() if k != "config_files"}
  alias, path = json.dumps("$KDJAX/configs/")[1:-1], json.dumps(_kdjax_configs())[1:-1]
  return json.loads(json.dumps(old).replace(alias, path))


def _config_files(commands, rel) -> dict:
  """``{path as fingerprinted: sha256 of its bytes}`` for each ``--config=FILE[:arg]``."""
  out = {}
  for argv in commands:
    for a in argv:
      if a.startswith("--config="):
        file = a[len("--config=") :].partition(":")[0]
        try:
          with open(file, "rb") as f:
            out[rel(file)] = hashlib.sha256(f.read()).hexdigest()[:16]
        except OSError:
          out[rel(file)] = None  # kdjax.train names the missing file when the stage runs
  return out


def _diff(old: dict, new: dict) -> str:
  """Which inputs changed, in words."""
  why = []
  for n in sorted(set(old.get("upstream", {})) | set(new.get("upstream", {}))):
    if old.get("upstream", {}).get(n) != new.get("upstream", {}).get(n):
      why.append(f"upstream stage {n} changed")
  for k in sorted(set(old.get("paths", {})) | set(new.get("paths", {}))):
    if old.get("paths", {}).get(k) != new.get("paths", {}).get(k):
      why.append(f"input {k} changed")
  if old.get("settings") != new.get("settings"):
    why.append("settings changed")
  oc_files, nc_files = old.get("config_files"), new.get("config_files")
  if oc_files is not None and nc_files is not None:  # (records before stop 25 have none)
    why += [
      f"config {f} changed" for f in sorted(nc_files) if oc_files.get(f, nc_files[f]) != nc_files[f]
    ]
  oc, nc = old.get("commands", []), new.get("commands", [])
  if oc != nc:
    flat = lambda cmds: {a for cmd in cmds for a in cmd}
    gone, added = sorted(flat(oc) - flat(nc)), sorted(flat(nc) - flat(oc))
    parts = [f"-{a}" for a in gone[:4]] + [f"+{a}" for a in added[:4]]
    why.append("command changed (" + ", ".join(parts or ["order"]) + ")")
  return "; ".join(why) or "inputs changed"


# ------------------------------------------------------------------------------------ running
_CHILD: list = []


def subprocess_runner(argv: list[str], log_path: str) -> int:
  """Runs ``python argv`` with the log appended to ``log_path``; returns the exit status."""
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  env.setdefault("HF_HUB_OFFLINE", "1")
  env.setdefault("HF_DATASETS_OFFLINE", "1")
  with open(log_path, "a") as log:
    log.write(f"$ {shlex.join([sys.executable, *argv])}\n")
    log.flush()
    p = subprocess.Popen(
      [sys.executable, *argv],
      stdout=log,
      stderr=subprocess.STDOUT,
      env=env,
    )  # no preexec_fn: posix_spawn, safe after JAX started its threads in this process
    _CHILD.append(p)
    try:
      return p.wait()
    except BaseException:  # Ctrl-C / SIGTERM of the pipeline: the stage's run stops too
      p.terminate()
      try:
        p.wait(timeout=60)
      except subprocess.TimeoutExpired:
        p.kill()
      raise
    finally:
      _CHILD.remove(p)


def _log_tail(path: str, n: int = 3) -> str:
  try:
    with open(path, errors="replace") as f:
      lines = [ln.strip() for ln in f if ln.strip()]
  except OSError:
    return ""
  errs = [ln for ln in lines if ln.startswith("error") or "Error" in ln]
  return (errs or lines)[-1][:300] if lines else ""


def _say(msg: str) -> None:
  print(f"[pipeline] {msg}", flush=True)


def run_stage(stage: Stage, done: dict, workdir: str, runner) -> str:
  """Runs (or skips / resumes / reruns) one stage; returns what happened."""
  if stage.given:
    _say(f"{stage.label}: given model {stage.given}")
    return "given"
  inputs = stage_inputs(stage, done, workdir)
  fp = _sha(inputs)
  same = {fp, _sha(legacy_inputs(inputs))}  # or an older record's
  sj_path = os.path.join(stage.dir, "stage.json")
  started_path = os.path.join(stage.dir, "pipeline_inputs.json")
  reason = None
  if os.path.isfile(sj_path):
    sj = _read_record(sj_path)
    if sj is None:
      reason = f"its record {sj_path} is not readable JSON"
    elif sj.get("fingerprint") in same and all(os.path.exists(p) for p in stage.outputs.values()):
      _say(f"{stage.label}: finished, inputs unchanged: skipped")
      return "skipped"
    else:
      reason = (
        _diff(sj.get("inputs", {}), inputs)
        if sj.get("fingerprint") not in same
        else "outputs missing"
      )
  elif os.path.isfile(started_path):
    started = _read_record(started_path)
    if started is None:
      reason = f"its record {started_path} is not readable JSON"
    elif started.get("fingerprint") not in same:
      reason = _diff(started.get("inputs", {}), inputs)
  elif os.path.isdir(stage.dir) and os.listdir(stage.dir):
    reason = "the directory holds a run the pipeline did not record"
  if reason:
    aside = base = f"{stage.dir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while os.path.exists(aside):
      n += 1
      aside = f"{base}-{n}"
    os.replace(stage.dir, aside)
    _say(f"{stage.label}: rerunning: {reason} (the old run moved to {os.path.basename(aside)})")
  elif os.path.isfile(started_path):
    _say(f"{stage.label}: resuming the unfinished run")
  else:
    _say(f"{stage.label}: running")
  os.makedirs(stage.dir, exist_ok=True)
  write_json(started_path, {"fingerprint": fp, "inputs": inputs})
  log = os.path.join(stage.dir, "pipeline.log")
  t0 = time.time()
  if stage.action is not None:
    stage.action()
  for i, argv in enumerate(stage.commands):
    marker = os.path.join(stage.dir, f".pipeline_step{i}.done")
    if os.path.exists(marker):
      continue
    rc = runner(argv, log)
    if rc:
      tail = _log_tail(log)
      raise PipelineError(
        f"stage {stage.label} failed (exit {rc}): {shlex.join(argv[:2])}: "
        f"{tail + '; ' if tail else ''}see {log}"
      )
    open(marker, "w").close()
  missing = [k for k, p in stage.outputs.items() if not os.path.exists(p)]
  if missing:
    raise PipelineError(f"stage {stage.label} finished without its {', '.join(missing)}: see {log}")
  record = {
    "stage": stage.name,
    "fingerprint": fp,
    "inputs": inputs,
    "outputs": {"model": stage.output, **stage.outputs},
    "wall_s": round(time.time() - t0, 2),
    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }
  write_json(sj_path, record)
  _say(f"{stage.label}: done in {record['wall_s']:.0f} s")
  return "ran"


def run_pipeline(config, workdir: str, runner=None, report: bool = True, report_fn=None) -> dict:
  """Resolves, then runs every stage in order (module docstring); returns {stage: status}."""
  runner = runner or subprocess_runner
  stages = resolve(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "pipeline_config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2) + "\n")
  done: dict[str, Stage] = {}
  status: dict[str, str] = {}
  if report and report_fn is None:
    from kdjax import pipeline_report

    report_fn = pipeline_report.write_report
  for st in stages:
    status[st.label] = run_stage(st, done, workdir, runner)
    done[st.name] = st
    if report_fn is not None and st.role != "intermediate":
      report_fn(config, workdir, list(done.values()), status)
  return status


def describe(stages: list[Stage]) -> str:
  lines = []
  for st in stages:
    if st.given:
      lines.append(f"{st.label}: given {st.given}")
      continue
    lines.append(f"{st.label}:  -> {st.output}")
    for cmd in st.commands:
      lines.append("  python " + shlex.join(cmd))
  return "\n".join(lines)


# -------------------------------------------------------------------------------------- CLI
def main(argv):
  from absl import flags

  if len(argv) > 1:
    raise PipelineError(f"unexpected arguments: {' '.join(argv[1:])}")
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if flags.FLAGS.dry_run:
    print(describe(resolve(config, workdir)))
    return

  def on_term(signum, frame):
    for p in list(_CHILD):
      p.terminate()
    raise SystemExit(128 + signum)

  signal.signal(signal.SIGTERM, on_term)
  status = run_pipeline(config, workdir)
  _say("finished: " + ", ".join(f"{k} {v}" for k, v in status.items()))
  _say(f"report: {os.path.join(workdir, 'report.md')}")


if __name__ == "__main__":
  from absl import flags

  from kdjax import train as train_lib

  flags.DEFINE_bool("dry_run", False, "Print the stages and their command lines; run nothing.")
  train_lib.cli(main, __doc__)
