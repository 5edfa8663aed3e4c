"""A refused command leaves nothing behind and touches nothing it did not make (issue 24), through the real CLI.

Every row is one command that must be refused: its exit code, exactly one line on stderr naming the key or file
to fix, no traceback, and — compared file by file, by content, with a snapshot taken just before — not a file or
folder added, changed or removed anywhere under the module's root, which holds the output root, the cache root
(paths.cache_dir defaults to <paths.output_dir>/cache), the data root, the working directory and every run folder
a row names. The prerequisites (a finished run, an unfinished one, θ0 of another width, corrupt and foreign
files, text files) are made once per module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mixcd_cli.errors import MixcdError
from mixcd_cli.text import load_text_source

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
# Not writable even for root (tests may run as root, where chmod 0o555 stops nothing).
READ_ONLY = "/sys"


@dataclass
class World:
    """The module's prerequisites, every one under ``root``."""

    root: Path
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.root / "outputs"

    @property
    def tiny(self) -> list[str]:
        # the `tiny` fixture of conftest.py, made once for the module (a function-scoped fixture cannot be)
        return ["experiment=tiny", f"paths.output_dir={self.out}", f"paths.data_dir={self.root / 'data'}"]

    @property
    def text(self) -> list[str]:
        """The shipped text experiment reading the module's files (good ones unless a row says otherwise)."""
        good = self.paths["good_jsonl"]
        return ["experiment=text_topics", "task@prior=text", "task@finetune=text", f"paths.output_dir={self.out}",
                f"paths.data_dir={self.root / 'data'}", "prior.classes=[0,1]", "finetune.classes=[2,3]",
                f"prior.options.train_path={good}", f"prior.options.test_path={good}",
                f"finetune.options.train_path={good}", f"finetune.options.test_path={good}"]


def _mixcd(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "MIXCD_DATA_DIR"}  # only the row that sets it has it
    env = {**base, "MIXCD_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mixcd_cli.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _tree(root: Path) -> dict[str, str]:
    """Every file (by content) and folder under ``root``: what a refused command must leave as it was."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir() and not path.is_symlink():
            out[rel + "/"] = "folder"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    added = [f"+{k}" for k in sorted(set(after) - set(before))]
    removed = [f"-{k}" for k in sorted(set(before) - set(after))]
    changed = [f"~{k}" for k in sorted(set(before) & set(after)) if before[k] != after[k]]
    return added + removed + changed


def _fill(arg: str, paths: dict[str, str]) -> str:
    """``{name}`` placeholders replaced by the module's paths; every other brace (a stage list) kept."""
    return re.sub(r"\{(\w+)\}", lambda m: paths.get(m.group(1), m.group(0)), arg)


def _topic_rows(n: int, labels: int = 4) -> list[dict[str, object]]:
    words = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    return [{"text": f"{words[i % labels]} filler {i}", "label": i % labels} for i in range(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = World(tmp_path_factory.mktemp("refusals"))
    (w.root / "cwd").mkdir()
    finished, unfinished = w.root / "finished", w.root / "unfinished"
    made = _mixcd(["train", *w.tiny, "threads=1", "trainer.steps=2", f"hydra.run.dir={finished}"], w.root / "cwd")
    assert made.returncode == 0, made.stderr
    # an unfinished run: what a run killed after its last checkpoint leaves (no metrics.json, no model.pt)
    shutil.copytree(finished, unfinished)
    (unfinished / "metrics.json").unlink()
    (unfinished / "model.pt").unlink()
    assert (unfinished / "checkpoints" / "last.pt").is_file() and (unfinished / "config.yaml").is_file()
    # θ0 of another model (width 4): a real torch checkpoint that this experiment's model must refuse
    other = _mixcd(["pretrain", *w.tiny, "threads=1", "model.width=4", f"hydra.run.dir={w.root / 'pretrain-w4'}"],
                   w.root / "cwd")
    assert other.returncode == 0, other.stderr
    w.paths["other_model"] = json.loads((w.root / "pretrain-w4" / "pretrain.json").read_text())["checkpoint"]

    files = w.root / "files"
    files.mkdir()
    (files / "garbage.pt").write_bytes(bytes(range(256)) * 4)  # binary, signature of neither torch format
    (files / "truncated.pt").write_bytes((finished / "model.pt").read_bytes()[:200])
    (files / "notes.txt").write_text("epoch 1 loss 0.52\nepoch 2 loss 0.31\n")  # "pop from empty list" before
    (files / "empty-folder").mkdir()
    for split in ("train/a", "train/b", "val"):  # class folders without a single image
        (files / "image-tree" / split).mkdir(parents=True)
    rows = _topic_rows(40)
    (files / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (files / "empty.csv").write_text("text,label\n")
    (files / "malformed.jsonl").write_text('{"text": "alpha", "label": 0}\n{"text": "beta", label: 1\n')
    (files / "no-field.csv").write_text("sentence,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    names = ["sports", "weather", "cooking"]
    (files / "string-labels.tsv").write_text("text\tlabel\n" + "".join(
        f"{r['text']}\t{names[int(r['label']) % 3]}\n" for r in rows))
    # a byte-order mark, as Excel and Notepad write one: the header must still read 'text'
    (files / "bom.csv").write_text("\ufefftext,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows),
                                   encoding="utf-8")
    w.paths.update({
        "root": str(w.root), "finished": str(finished), "unfinished": str(unfinished),
        "garbage": str(files / "garbage.pt"), "truncated": str(files / "truncated.pt"),
        "notes": str(files / "notes.txt"), "empty_folder": str(files / "empty-folder"),
        "image_tree": str(files / "image-tree"), "good_jsonl": str(files / "good.jsonl"),
        "empty_csv": str(files / "empty.csv"), "malformed_jsonl": str(files / "malformed.jsonl"),
        "no_field_csv": str(files / "no-field.csv"), "string_labels_tsv": str(files / "string-labels.tsv"),
        "bom_csv": str(files / "bom.csv"),
    })
    return w


@dataclass
class Row:
    """One refused command. ``base``: tiny (generated images), text (the text experiment) or none;
    ``stage``: the command (train, pretrain, snapshot, eval, report); ``names``: the key of an existing run
    folder the command names, checked to be byte-identical on its own (the whole tree is checked anyway);
    ``new_run``: give hydra.run.dir=<a folder not there yet>, which must still not be there afterwards."""

    id: str
    args: list[str]
    expect: list[str]
    stage: str = "train"
    base: str = "tiny"
    code: int = 2
    forbid: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    names: str | None = None
    new_run: bool = True
    marks: tuple = ()


def _text_files(prior: str, finetune: str = "{good_jsonl}") -> list[str]:
    return [f"prior.options.train_path={prior}", f"prior.options.test_path={prior}",
            f"finetune.options.train_path={finetune}", f"finetune.options.test_path={finetune}"]


ROWS = [
    # ---- item 1: a refused command writes nothing into the run folder it names
    Row("finished run, same overrides", ["trainer.steps=2", "hydra.run.dir={finished}"],
        ["already holds a finished run"], names="finished", new_run=False),
    Row("finished run, other overrides", ["trainer.steps=3", "hydra.run.dir={finished}"],
        ["already holds a finished run"], names="finished", new_run=False),
    Row("eval into the run it evaluates", ["run_dir={finished}", "hydra.run.dir={finished}"],
        ["never into the run it evaluates"], stage="eval", names="finished", new_run=False),
    Row("unfinished run, other configuration", ["trainer.steps=2", "seed=7", "hydra.run.dir={unfinished}"],
        ["made with a different configuration"], names="unfinished", new_run=False),
    Row("pretrain into a train run", ["hydra.run.dir={finished}"], ["holds a run"], stage="pretrain",
        names="finished", new_run=False),
    Row("snapshot into a train run", ["hydra.run.dir={finished}"], ["holds a run"], stage="snapshot",
        names="finished", new_run=False),
    Row("sweep into an earlier sweep's folder", ["-m", "seed=1,2", "hydra.sweep.dir={root}"],
        ["holds the runs of an earlier sweep"], names="finished", new_run=False),
    # ---- item 2: checks that read a file come before any folder is made
    Row("a sweep value whose data is missing", ["-m", "prior.dataset=synthetic,mnist"],
        ["in the sweep, prior.dataset=mnist", "dataset 'mnist' not found"], new_run=False),
    Row("dataset not found", ["prior.dataset=mnist"], ["dataset 'mnist' not found"]),
    Row("prior classes absent", ["prior.classes=[9]"], ["do not occur"]),
    Row("stage classes absent", ["stages=[{classes: [3]}, {classes: [9]}]"], ["classes [9] do not occur"]),
    Row("stage reuses a stage's labels", ["stages=[{classes: [3]}, {classes: [3, 4]}]"], ["reuses labels [3]"]),
    Row("stage reuses the prior's labels", ["stages=[{classes: [3]}, {classes: [0]}]"],
        ["reuses labels [0] of the prior task"]),
    Row("checkpoint of garbage bytes", ["prior_model.checkpoint={garbage}"], ["corrupt or truncated"],
        forbid=["delete"]),
    Row("truncated checkpoint", ["prior_model.checkpoint={truncated}"], ["corrupt or truncated"], forbid=["delete"]),
    Row("checkpoint of another model", ["prior_model.checkpoint={other_model}"], ["was made for model"]),
    Row("snapshot.path not a snapshot", ["snapshot.path={empty_folder}"], ["snapshot.path", "meta.json"]),
    Row("imagefolder root missing", ["task@prior=imagefolder", "prior.root={root}/no-such-tree"],
        ["ImageFolder split not found"]),
    Row("imagefolder without images", ["task@prior=imagefolder", "prior.root={image_tree}"], ["holds no images"]),
    Row("text file missing", _text_files("{root}/no-such.jsonl"), ["text file not found"], base="text"),
    Row("text file empty", _text_files("{empty_csv}"), ["is empty"], base="text"),
    Row("text file malformed", _text_files("{malformed_jsonl}"), ["line 2 is not a JSON object"], base="text"),
    Row("text file lacks the field", _text_files("{no_field_csv}"), ["has no field 'text'"], base="text"),
    Row("text labels outside the class list",
        [*_text_files("{string_labels_tsv}", "{string_labels_tsv}"), "prior.options.labels=[sports,weather]",
         "finetune.options.labels=[sports,weather]", "prior.classes=[0]", "finetune.classes=[1]"],
        ["'cooking'", "not in the class list"], base="text"),
    Row("text task, image model", ["model=cnn_tiny"], ["text tasks need a text model (model=hf)"], base="text"),
    Row("logger folder read-only", ["logger=[tensorboard]", f"logger.tensorboard.dir={READ_ONLY}/mixcd-tb"],
        [f"no permission to write {READ_ONLY}/mixcd-tb", "logger.tensorboard.dir"], forbid=["paths.output_dir"]),
    Row("logger store read-only", ["logger=[mlflow]", f"logger.mlflow.tracking_uri=sqlite:///{READ_ONLY}/mixcd-ml/m.db"],
        [f"no permission to write {READ_ONLY}/mixcd-ml", "logger.mlflow.tracking_uri"], forbid=["paths.output_dir"]),
    # width 6: no θ0 is cached for it (the module caches widths 8 and 4); no lock file may appear either
    Row("snapshot without θ0", ["model.width=6"], ["no prior model yet"], stage="snapshot"),
    # ---- item 3: places that cannot be written
    Row("data dir read-only (paths.data_dir)",
        ["experiment=fmnist", "paths.output_dir={root}/outputs", f"paths.data_dir={READ_ONLY}/mixcd-data"],
        [f"{READ_ONLY}/mixcd-data", "paths.data_dir"], base="none",
        marks=(pytest.mark.skipif(not FMNIST_DEBIAN.is_file(), reason="needs Debian dataset-fashion-mnist"),)),
    Row("data dir read-only (MIXCD_DATA_DIR)",
        ["experiment=tiny", "paths.output_dir={root}/outputs", "prior.dataset=mnist", "prior.download=true"],
        [f"{READ_ONLY}/mixcd-data", "MIXCD_DATA_DIR"], base="none", env={"MIXCD_DATA_DIR": f"{READ_ONLY}/mixcd-data"},
        forbid=["could not fetch"]),
    Row("report --out read-only", ["{finished}", "--html", "--out", f"{READ_ONLY}/mixcd-report"],
        [f"no permission to write {READ_ONLY}/mixcd-report", "--out"], stage="report", base="none",
        names="finished", new_run=False),
    # ---- item 4: a bad input that would run
    Row("one stage reuses the prior's labels", ["prior.classes=[0,1]", "finetune.classes=[1,2]", "head=shared"],
        ["reuses labels [1] of the prior task"]),
    Row("one-stage list reuses the prior's labels", ["prior.classes=[0,1]", "stages=[{classes: [1, 2]}]",
                                                    "head=shared"], ["reuses labels [1] of the prior task"]),
    # ---- item 5: messages that mislead
    Row("unquoted non-ASCII path", ["paths.output_dir={root}/ü-outputs"], ["quote"]),
    Row("new key with +", ["+foo.bar=x"], ["foo.bar"], forbid=["for this  ("]),
    Row("checkpoint is a folder", ["prior_model.checkpoint={empty_folder}"], ["is a folder"]),
    Row("checkpoint is a text file", ["prior_model.checkpoint={notes}"], ["not a torch checkpoint", "holds text"],
        forbid=["pop from empty list", "delete"]),
    Row("model.weights is a text file", ["model=timm", "model.name=resnet18", "model.weights={notes}"],
        ["model.weights", "not a torch checkpoint"], forbid=["pop from empty list"]),
    Row("imagefolder without root", ["task@prior=imagefolder"], ["prior.root"], forbid=["???"]),
    Row("fine-tune imagefolder without root", ["task@finetune=imagefolder"], ["finetune.root"], forbid=["???"]),
    Row("cache folder read-only", [f"paths.cache_dir={READ_ONLY}/mixcd-cache"],
        [f"no permission to write {READ_ONLY}/mixcd-cache", "paths.cache_dir"], forbid=["paths.output_dir"]),
    Row("run folder read-only", [f"hydra.run.dir={READ_ONLY}/mixcd-run"],
        [f"no permission to write {READ_ONLY}/mixcd-run", "hydra.run.dir"], forbid=["paths.output_dir"],
        new_run=False),
    # the BOM is read past: the field is found, and the next check (the model) is the one that refuses
    Row("CSV with a byte-order mark", [*_text_files("{bom_csv}"), "model=cnn_tiny"],
        ["text tasks need a text model (model=hf)"], forbid=["has no field"], base="text"),
    Row("stages not a list", ["stages=s1"], ["stages", "classes"], forbid=["[0,1,2]", "[0, 1, 2]"]),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS])
def test_a_refused_command_leaves_nothing_behind(row: Row, world: World) -> None:
    args = [_fill(a, world.paths) for a in row.args]
    new_run = world.root / "new-runs" / re.sub(r"[^A-Za-z0-9]+", "-", row.id)  # a name Hydra reads unquoted
    if row.stage == "report":
        command = ["report", *args]
    else:
        base = {"tiny": world.tiny, "text": world.text, "none": []}[row.base]
        command = [row.stage, *base, "threads=1", *args]
        if row.new_run:
            command.append(f"hydra.run.dir={new_run}")
    named = Path(world.paths[row.names]) if row.names else None
    folder_before = _tree(named) if named else {}
    before = _tree(world.root)

    proc = _mixcd(command, world.root / "cwd", row.env)

    said = proc.stdout + proc.stderr
    assert "Traceback" not in said, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert proc.returncode == row.code, (proc.returncode, line)
    assert line.startswith("error: "), line
    for text in row.expect:
        assert text in line, (text, line)
    for text in row.forbid:
        assert text not in line, (text, line)
    assert not new_run.exists(), f"{new_run} was made"
    if named:
        assert _diff(folder_before, _tree(named)) == [], f"{named} was touched"
    assert _diff(before, _tree(world.root)) == [], "a refused command wrote (or removed) these"


# ---- unit level: a byte-order mark is not part of the first field's name

@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_a_byte_order_mark_is_read_past(suffix: str, tmp_path: Path) -> None:
    rows = _topic_rows(6)
    if suffix == ".jsonl":
        body = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        body = f"text{sep}label\n" + "".join(f"{r['text']}{sep}{r['label']}\n" for r in rows)
    path = tmp_path / f"bom{suffix}"
    path.write_text("\ufeff" + body, encoding="utf-8")
    src = load_text_source(str(tmp_path), True, train_path=path.name)
    assert [t[0] for t in src.texts] == [r["text"] for r in rows]
    assert src.targets.tolist() == [r["label"] for r in rows]


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,0\n".encode("latin-1"))
    with pytest.raises(MixcdError, match="is not UTF-8 text"):
        load_text_source(str(tmp_path), True, train_path="latin1.csv")
