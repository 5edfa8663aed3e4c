"""A committed report's runs.csv as an input of `mixcd report` (docs/design.md §6): its rows stand for the run
folders they came from, beside new run folders, so a new sweep can be read against a committed reference
without rerunning it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_report import fake_compute, fake_run

from mixcd_cli.errors import MixcdError
from mixcd_cli.hydra_app import compose, experiment_settings
from mixcd_cli.report import run_report
from mixcd_cli.report.read import collect

POOL = 300


def _with(folder: Path, extra: str) -> None:
    """Add settings to a fake run's config.yaml (keys outside the sampler)."""
    cfg = folder / "config.yaml"
    cfg.write_text(cfg.read_text() + extra)


def _reference(root: Path, seeds: range = range(1, 6)) -> None:
    """none, random at 100/200/400 rows and default mix-cd at 100, model.norm=group: the committed sweep."""
    for s in seeds:
        noise = 0.01 * ((s * 7) % 5 - 2)
        runs = [(f"n{s}", "none", 0.0, 0.10 + noise, 0, None)]
        runs += [(f"r{rows}-{s}", "random", rows / 400, acc + noise, rows, None)
                 for rows, acc in ((100, 0.60), (200, 0.75), (400, 0.80))]
        runs += [(f"m{s}", "mixcd", 0.25, 0.70 + noise / 2, 100, fake_compute(100, snapshot=POOL))]
        for name, sampler, ratio, acc, rows, compute in runs:
            fake_run(root / name, sampler, ratio, s, acc, rehearsal=rows, compute=compute)
            _with(root / name, "model:\n  norm: group\n")


def _new_sweep(root: Path, seeds: range = range(1, 6)) -> None:
    """mix-cd with ε = 0 (a variant of the same settings) and mix-cd with model.norm=batch (other settings)."""
    for s in seeds:
        fake_run(root / f"e{s}", "mixcd", 0.25, s, 0.74, rehearsal=100, compute=fake_compute(100, snapshot=POOL))
        _with(root / f"e{s}", "  epsilon: 0.0\nmodel:\n  norm: group\n")
        fake_run(root / f"b{s}", "mixcd", 0.25, s, 0.40, rehearsal=100, compute=fake_compute(100, snapshot=POOL))
        _with(root / f"b{s}", "model:\n  norm: batch\n")


def _drop_column(path: Path, column: str) -> None:
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert column in rows[0]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, [k for k in rows[0] if k != column])
        w.writeheader()
        w.writerows({k: v for k, v in r.items() if k != column} for r in rows)


def _folds(summary: dict) -> dict[tuple[str, str], tuple]:
    return {(e["sampler"], e["config"]):
            (e["fold"], e["budget"], e["gap_to_random"], e["fold_interval"]["lo"], e["fold_interval"]["hi"])
            for e in summary["random_equivalent"]}


def test_a_runs_csv_beside_new_folders_reads_as_its_run_folders_would(tmp_path: Path) -> None:
    """The new variant's fold is read against the committed random curve exactly as against the folders the
    runs.csv came from; the runs of other settings (norm=batch) stay apart. The runs.csv records no setting
    (all its runs share them): without the report.json's settings its rows would match no new run, and the
    variant would have no random curve at all."""
    _reference(tmp_path / "ref")
    run_report([tmp_path / "ref"], tmp_path / "committed", plots=False)
    header = (tmp_path / "committed" / "runs.csv").read_text().splitlines()[0]
    assert "setting:" not in header  # the case that needs completing
    _new_sweep(tmp_path / "new")

    # a report.json written before the probes existed lacks them, as the committed ones do, and one written before
    # snapshot.source named a variant keeps it among the settings (results/text_topics); a runs.csv written before
    # a sampler option was declared lacks its column
    report_json = tmp_path / "committed" / "report.json"
    summary = json.loads(report_json.read_text())
    for g in summary["groups"]:
        g["settings"] = {k: v for k, v in g["settings"].items() if ".probe" not in k}
        g["settings"]["snapshot.source"] = '"pass"'
    report_json.write_text(json.dumps(summary))
    _drop_column(tmp_path / "committed" / "runs.csv", "option:sampler.estimate")

    from_folders = run_report([tmp_path / "new", tmp_path / "ref"], tmp_path / "a", plots=False)
    from_csv = run_report([tmp_path / "new", tmp_path / "committed" / "runs.csv"], tmp_path / "b", plots=False)
    assert _folds(from_csv) == _folds(from_folders)
    folds = {e["sampler"]: e["fold"] for e in from_csv["random_equivalent"] if e["fold"] is not None}
    assert set(folds) == {"mixcd", "mixcd (epsilon=0.0)"}  # norm=batch has no random curve of its own
    batch = [g for g in from_csv["groups"] if g["settings"].get("model.norm") == '"batch"']
    assert len(batch) == 1 and batch[0]["seeds"] == [1, 2, 3, 4, 5]
    # the runs.csv of the combined report names where each row came from
    rows = (tmp_path / "b" / "runs.csv").read_text()
    assert f"{tmp_path / 'committed' / 'runs.csv'}:r100-1" in rows and "e1" in rows


def test_a_runs_csv_alone_gives_its_report_back(tmp_path: Path) -> None:
    """Read alone, a runs.csv gives the same figures and writes the same rows (integers stay integers)."""
    _reference(tmp_path / "ref")
    first = run_report([tmp_path / "ref"], tmp_path / "committed", plots=False)
    again = run_report([tmp_path / "committed" / "runs.csv"], tmp_path / "again", plots=False)
    assert _folds(again) == _folds(first)
    assert again["against_default"] == first["against_default"]

    def rows(folder: Path) -> list[list[str]]:  # less the run column, which now names the runs.csv
        return sorted(line.split(",")[:4] + line.split(",")[5:]
                      for line in (folder / "runs.csv").read_text().splitlines())
    assert rows(tmp_path / "again") == rows(tmp_path / "committed")


def test_a_folder_run_replaces_the_runs_csv_row_of_its_seed(tmp_path: Path) -> None:
    """A run made again (a folder) counts instead of the committed row of the same group and seed, also where
    the runs.csv was written before a sampler option was declared (its rows ran as the option's default)."""
    _reference(tmp_path / "ref")
    run_report([tmp_path / "ref"], tmp_path / "committed", plots=False)
    _drop_column(tmp_path / "committed" / "runs.csv", "option:sampler.estimate")
    fake_run(tmp_path / "new" / "m1", "mixcd", 0.25, 1, 0.99, rehearsal=100, compute=fake_compute(100, snapshot=POOL))
    _with(tmp_path / "new" / "m1", "model:\n  norm: group\n")
    summary = run_report([tmp_path / "committed" / "runs.csv", tmp_path / "new"], tmp_path / "b", plots=False)
    (mixcd,) = [g for g in summary["groups"] if g["sampler"] == "mixcd"]
    assert mixcd["seeds"] == [1, 2, 3, 4, 5] and mixcd["duplicates"] == 1
    others = sum(0.70 + 0.005 * ((s * 7) % 5 - 2) for s in range(2, 6))
    assert mixcd["pre_acc"]["mean"] == pytest.approx((0.99 + others) / 5)


def test_without_a_report_json_the_settings_come_from_the_experiment_as_composed(tmp_path: Path) -> None:
    """A runs.csv with no report.json beside it takes the experiment's configuration in this checkout: a run
    folder written from `experiment=fmnist` as composed now joins its rows' group."""
    def folder_of(name: str, sampler: str, ratio: float, seed: int, acc: float, rows: int) -> None:
        fake_run(tmp_path / "ref" / name, sampler, ratio, seed, acc, rehearsal=rows)
        cfg = compose("train", ["experiment=fmnist", f"sampler={sampler}", f"seed={seed}",
                                f"trainer.mix_ratio={ratio}"])
        (tmp_path / "ref" / name / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    folder_of("r1", "random", 0.25, 1, 0.6, 100)
    folder_of("r2", "random", 0.5, 1, 0.8, 200)
    run_report([tmp_path / "ref"], tmp_path / "committed", plots=False)
    (tmp_path / "committed" / "report.json").unlink()
    text = (tmp_path / "committed" / "runs.csv").read_text().replace(",exp,", ",fmnist,").replace("\nexp,", "\nfmnist,")
    (tmp_path / "committed" / "runs.csv").write_text(text)
    (tmp_path / "ref" / "r2" / "metrics.json").write_text(
        (tmp_path / "ref" / "r2" / "metrics.json").read_text().replace('"exp"', '"fmnist"'))
    (tmp_path / "ref" / "r1" / "metrics.json").unlink()  # only r2 stays a folder
    runs, _ = collect([tmp_path / "committed" / "runs.csv", tmp_path / "ref"], compose=experiment_settings)
    by_ratio = {r.mix_ratio: r for r in runs if r.sampler == "random" and r.path.name != "r2"}
    folder = next(r for r in runs if r.path.name == "r2")
    assert by_ratio[0.25].settings == folder.settings


def test_settings_of_an_experiment_that_cannot_be_composed_are_refused(tmp_path: Path) -> None:
    _reference(tmp_path / "ref", seeds=range(1, 2))
    run_report([tmp_path / "ref"], tmp_path / "committed", plots=False)
    (tmp_path / "committed" / "report.json").unlink()
    _new_sweep(tmp_path / "new", seeds=range(1, 2))
    with pytest.raises(MixcdError, match="cannot compose experiment=exp"):
        collect([tmp_path / "new", tmp_path / "committed" / "runs.csv"], compose=experiment_settings)
    with pytest.raises(MixcdError, match="no complete report.json beside it"):  # the library, with no composer
        collect([tmp_path / "new", tmp_path / "committed" / "runs.csv"])


@pytest.mark.parametrize(("first", "options", "says"), [
    ("csv", [], "--out is needed when the first PATH is a file"),
    ("txt", ["--out", "OUT"], "is a file, not a folder of runs nor a runs.csv"),
    ("csv", ["--out", "OUT", "--stage", "eval"], "a runs.csv is read as train runs; --stage eval reads run folders"),
])
def test_a_runs_csv_misused_is_one_line_and_writes_nothing(first: str, options: list[str], says: str,
                                                           tmp_path: Path) -> None:
    _reference(tmp_path / "ref", seeds=range(1, 2))
    run_report([tmp_path / "ref"], tmp_path / "committed", plots=False)
    path = tmp_path / "committed" / "runs.csv"
    if first == "txt":
        path = tmp_path / "notes.txt"
        path.write_text("hello\n")
    before = {p: p.read_bytes() for p in (tmp_path / "committed").iterdir()}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mixcd_cli.cli", "report", str(path),
                           *[str(out) if o == "OUT" else o for o in options]], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()
    assert {p: p.read_bytes() for p in (tmp_path / "committed").iterdir()} == before


def test_a_run_made_before_probes_existed_groups_with_todays(tmp_path: Path) -> None:
    """The committed reference runs predate prior.probe and finetune.probe (a run without a probe ran as
    probe: null does): a run folder of the same configuration made today joins their group."""
    cfg = OmegaConf.to_container(compose("train", ["experiment=fmnist", "sampler=random", "trainer.mix_ratio=0.25"]),
                                 resolve=True)
    for seed, folder in ((1, "today"), (2, "before")):
        fake_run(tmp_path / folder, "random", 0.25, seed, 0.6, rehearsal=100)
        if folder == "before":
            for task in ("prior", "finetune"):
                del cfg[task]["probe"], cfg[task]["probe_seed"]
        (tmp_path / folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({**cfg, "seed": seed})))
    runs, _ = collect([tmp_path])
    assert len(runs) == 2 and runs[0].settings == runs[1].settings


def test_runs_of_one_seed_from_different_theta0_are_named(tmp_path: Path) -> None:
    """A committed reference pretrained elsewhere (θ0 at 90%) beside new runs whose θ0 reached 91%: the report
    says so, on stderr, in report.md and report.json; the same θ0 everywhere says nothing."""
    _reference(tmp_path / "ref")
    run_report([tmp_path / "ref"], tmp_path / "committed", plots=False)
    _new_sweep(tmp_path / "new")
    same = run_report([tmp_path / "new", tmp_path / "committed" / "runs.csv"], tmp_path / "same", plots=False)
    assert same["theta0_mixed"] == []
    assert "share a θ0" not in (tmp_path / "same" / "report.md").read_text()
    for m in (tmp_path / "new").glob("*/metrics.json"):
        m.write_text(m.read_text().replace('"pre_acc0": 0.9', '"pre_acc0": 0.91'))
    mixed = run_report([tmp_path / "new", tmp_path / "committed" / "runs.csv"], tmp_path / "mixed", plots=False)
    (entry,) = mixed["theta0_mixed"]  # norm=batch has no committed runs: its θ0 is not mixed
    assert entry["seeds"] == [1, 2, 3, 4, 5]
    assert entry["theta0_acc"] == {str(s): {"0.9": 5, "0.91": 1} for s in range(1, 6)}
    md = (tmp_path / "mixed" / "report.md").read_text()
    assert "seed 1: 90.00% in 5 run(s), 91.00% in 1 run(s); seed 2:" in md
    # a runs.csv written before pre_acc0 was a column: θ0's accuracy is pre_acc + forgetting
    _drop_column(tmp_path / "committed" / "runs.csv", "pre_acc0")
    again = run_report([tmp_path / "new", tmp_path / "committed" / "runs.csv"], tmp_path / "again", plots=False)
    assert again["theta0_mixed"] == mixed["theta0_mixed"]


def test_a_report_of_rows_whose_settings_were_not_known_is_not_trusted_to_complete_others(tmp_path: Path) -> None:
    """A runs.csv read alone with no report.json beside it keeps only the settings it records; the report made
    from it says so (settings_complete false), and its own report.json is then no source of settings: set beside
    run folders, the rows need the experiment composed (here impossible: refused)."""
    _reference(tmp_path / "ref", seeds=range(1, 2))
    run_report([tmp_path / "ref"], tmp_path / "committed", plots=False)
    (tmp_path / "committed" / "report.json").unlink()
    alone = run_report([tmp_path / "committed" / "runs.csv"], tmp_path / "second", plots=False)
    assert alone["settings_complete"] is False and alone["stage"] == "train"
    assert all(g["settings"] == {} for g in alone["groups"])
    _new_sweep(tmp_path / "new", seeds=range(1, 2))
    with pytest.raises(MixcdError, match="cannot compose experiment=exp"):
        collect([tmp_path / "new", tmp_path / "second" / "runs.csv"], compose=experiment_settings)


@pytest.mark.parametrize(("damage", "says"), [
    ("nan", "not a row of a mixcd runs.csv ('nan' is not a finite number)"),
    ("bytes", "cannot read"),
    ("eval", "a runs.csv is read as train runs, and this one holds eval runs"),
])
def test_a_bad_runs_csv_is_one_line(damage: str, says: str, tmp_path: Path) -> None:
    _reference(tmp_path / "ref", seeds=range(1, 2))
    run_report([tmp_path / "ref"], tmp_path / "committed", plots=False)
    path = tmp_path / "committed" / "runs.csv"
    if damage == "nan":
        lines = path.read_text().splitlines()
        head = lines[0].split(",")
        row = lines[1].split(",")
        row[head.index("pre_acc")] = "nan"
        path.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    elif damage == "bytes":
        path.write_bytes(path.read_bytes() + b"\xff\xfe\n")
    else:
        report = json.loads((path.parent / "report.json").read_text())
        (path.parent / "report.json").write_text(json.dumps({**report, "stage": "eval"}))
    proc = subprocess.run([sys.executable, "-m", "mixcd_cli.cli", "report", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in proc.stderr
