"""The one resume and restart rule of every output directory (workbench/rundir.py): RunDirectory's branches on tmp
directories, then each command that writes one (organism build, diff, elicit, caft testbed) through the CLI on the
tiny model: a finished output is reported as done and left untouched, an unfinished one is resumed without redoing
its finished stages, a different config is a one-line error naming --restart, and --restart rebuilds.

A kill is simulated by renaming a finished NAME/ to .NAME.partial/ and marking its last stage not done (what a kill
during that stage leaves). The per-command tests share one tiny organism; the organism test, which rebuilds it, runs
last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import build_tiny_organism

from mow.cli.main import main
from mow.elicitation import methods as registry
from mow.workbench.errors import UserError
from mow.workbench.rundir import Manifest, RunDirectory, partial_path

# The tiny settings of tests/test_diff_cli.py, tests/test_elicitation.py and tests/test_testbed.py.
DIFF_SMALL = ["--set", "prompts.max_items_per_set=5", "--set", "prompts.response_tokens=6", "--set",
              "cache.token_budget=1500", "--set", "crosscoder.latents=64", "--set", "crosscoder.k=4", "--set",
              "crosscoder.batch_size=128", "--set", "crosscoder.epochs=2", "--set", "lens.positions=3", "--set",
              "directions.crosscoder_latents=2"]
ELICIT_FAST = ["--methods", "direct,logit_lens", "--set", "attempts=2", "--set", "max_new_tokens=4", "--set",
               "white_box.prompts=2", "--set", "white_box.response_tokens=3", "--set", "white_box.lens_texts=4",
               "--set", "white_box.lens_positions=2", "--set", "guesses=20"]
TESTBED_QUICK = ["--set", "model=tiny:smollm2-135m", "--set", "seeds=[0]", "--set", "n_train=8", "--set", "n_test=4",
                 "--set", "n_contrast=8", "--set", "layers=[1, 2]", "--set", "training.epochs=1", "--set",
                 "conditions=[plain]"]

Snapshot = dict[str, tuple[int, int, bytes]]


def snapshot(directory: Path) -> Snapshot:
    """Every file under `directory`: (mtime_ns, inode, content). Atomic writes replace the inode, so a rewrite with
    identical content still shows."""
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def stamp(path: Path) -> tuple[int, int]:
    return path.stat().st_mtime_ns, path.stat().st_ino


def manifest_of(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "manifest.json").read_text())


def commands_of(directory: Path) -> list:
    """The command lines a Manifest recorded, one per run that opened it: sealed/ for organisms, else public."""
    sealed = directory / "sealed" / "manifest.json"
    if sealed.is_file():
        return json.loads(sealed.read_text())["commands"]
    return manifest_of(directory)["provenance"]["commands"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- RunDirectory

CONFIG = "run.yaml"


def rundir(root: Path, text: str = "a: 1\n") -> RunDirectory:
    return RunDirectory(root / "out", CONFIG, text, "test run")


def finished_run(root: Path, text: str, result: str) -> Path:
    run = rundir(root, text)
    assert not run.finished(False)
    (run.start(False) / "result.txt").write_text(result)
    return run.finish()


def killed_run(root: Path, text: str, stage: str) -> Path:
    """A run killed after writing `stage`: its partial directory, never finished."""
    run = rundir(root, text)
    assert not run.finished(False)
    work = run.start(False)
    (work / "stage.txt").write_text(stage)
    return work


def test_new_run_is_written_in_the_partial_directory_and_renamed_when_finished(tmp_path: Path, capsys):
    run = rundir(tmp_path)
    assert not run.finished(False)
    assert not any(tmp_path.iterdir())  # finished() writes nothing
    work = run.start(False)
    assert work == tmp_path / ".out.partial" == partial_path(run.final)
    assert (work / CONFIG).read_text() == "a: 1\n" and not run.final.exists()
    (work / "result.txt").write_text("done")
    assert run.finish() == tmp_path / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (run.final / "result.txt").read_text() == "done" and (run.final / CONFIG).read_text() == "a: 1\n"
    err = capsys.readouterr().err
    assert "resuming" not in err and "already built" not in err


def test_finished_run_of_the_same_config_is_reported_done_and_nothing_is_written(tmp_path: Path, capsys):
    final = finished_run(tmp_path, "a: 1\n", "old")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert rundir(tmp_path, "a: 1\n").finished(False)
    assert "already built" in capsys.readouterr().err
    assert snapshot(tmp_path) == before and not partial_path(final).exists()


def test_finished_run_of_another_config_is_a_one_line_error_naming_restart(tmp_path: Path, capsys):
    final = finished_run(tmp_path, "a: 1\n", "old")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="--restart") as error:
        rundir(tmp_path, "a: 2\n").finished(False)
    assert str(final) in str(error.value) and "\n" not in str(error.value) and error.value.exit_code == 2
    assert snapshot(tmp_path) == before and not partial_path(final).exists()
    assert "already built" not in capsys.readouterr().err


def test_unfinished_run_of_the_same_config_is_resumed_with_its_files(tmp_path: Path, capsys):
    work = killed_run(tmp_path, "a: 1\n", "data")
    run = rundir(tmp_path, "a: 1\n")
    capsys.readouterr()
    assert not run.finished(False)
    assert run.start(False) == work
    assert "resuming the unfinished test run" in capsys.readouterr().err
    assert (work / "stage.txt").read_text() == "data"  # the finished stage is kept
    assert (run.finish() / "stage.txt").read_text() == "data" and not work.exists()


def test_unfinished_run_of_another_config_is_a_one_line_error_naming_restart(tmp_path: Path):
    work = killed_run(tmp_path, "a: 1\n", "data")
    before = snapshot(work)
    with pytest.raises(UserError, match="--restart") as error:
        rundir(tmp_path, "a: 2\n").finished(False)
    assert str(work) in str(error.value) and "\n" not in str(error.value)
    assert snapshot(work) == before and not (tmp_path / "out").exists()


def test_partial_directory_killed_before_its_config_was_written_is_started_over(tmp_path: Path, capsys):
    work = partial_path(tmp_path / "out")
    work.mkdir()
    (work / "junk.txt").write_text("half")
    run = rundir(tmp_path)
    assert not run.finished(False)  # nothing to compare: neither resumed nor refused
    assert run.start(False) == work and not (work / "junk.txt").exists()
    assert "resuming" not in capsys.readouterr().err


@pytest.mark.parametrize("text", ["a: 1\n", "a: 2\n"], ids=["same-config", "other-config"])
def test_restart_discards_an_unfinished_run(tmp_path: Path, capsys, text: str):
    work = killed_run(tmp_path, "a: 1\n", "data")
    run = rundir(tmp_path, text)
    capsys.readouterr()
    assert not run.finished(True)
    assert run.start(True) == work
    assert sorted(p.name for p in work.iterdir()) == [CONFIG] and (work / CONFIG).read_text() == text
    assert "resuming" not in capsys.readouterr().err


@pytest.mark.parametrize("text", ["a: 1\n", "a: 2\n"], ids=["same-config", "other-config"])
def test_restart_replaces_a_finished_run_only_when_it_finishes(tmp_path: Path, capsys, text: str):
    final = finished_run(tmp_path, "a: 1\n", "old")
    before = snapshot(final)
    run = rundir(tmp_path, text)
    capsys.readouterr()
    assert not run.finished(True)
    assert "already built" not in capsys.readouterr().err
    (run.start(True) / "result.txt").write_text("new")
    assert snapshot(final) == before  # until finish(), the old output is what is there
    assert run.finish() == final
    assert (final / "result.txt").read_text() == "new" and (final / CONFIG).read_text() == text
    assert not partial_path(final).exists()


def test_killed_restart_leaves_the_old_output_and_the_next_restart_discards_its_partial(tmp_path: Path, capsys):
    final = finished_run(tmp_path, "a: 1\n", "old")
    before = snapshot(final)
    killed = rundir(tmp_path)
    assert not killed.finished(True)
    (killed.start(True) / "result.txt").write_text("half")  # ... and killed here
    assert snapshot(final) == before
    capsys.readouterr()
    assert rundir(tmp_path).finished(False)  # without --restart: the old output is done
    assert "already built" in capsys.readouterr().err and snapshot(final) == before
    again = rundir(tmp_path)
    assert not again.finished(True)
    work = again.start(True)
    assert sorted(p.name for p in work.iterdir()) == [CONFIG]  # the killed restart's files are gone
    (work / "result.txt").write_text("new")
    assert (again.finish() / "result.txt").read_text() == "new" and not work.exists()


def test_manifest_marks_a_stage_done_only_when_its_block_finishes(tmp_path: Path):
    manifest = Manifest(tmp_path, seed=7)
    with manifest.stage("data") as record:
        record["examples"] = 3
    with pytest.raises(RuntimeError):
        with manifest.stage("train"):
            raise RuntimeError("killed")
    reopened = Manifest(tmp_path, seed=7)  # what a re-run reads
    assert reopened.done("data") and not reopened.done("train") and "train" not in reopened.data["stages"]
    stage = reopened.data["stages"]["data"]
    assert stage["examples"] == 3 and stage["done"] is True and isinstance(stage["seconds"], float)
    assert len(json.loads((tmp_path / "sealed" / "manifest.json").read_text())["commands"]) == 2
    assert "provenance" not in manifest_of(tmp_path)
    public = Manifest(tmp_path / "public", seed=7, sealed=False)
    assert manifest_of(tmp_path / "public")["provenance"]["commands"] and public.sealed_path is None


# ------------------------------------------------------------------------------------------ the commands, via the CLI


def check_reported_done(argv: list[str], final: Path, capsys) -> None:
    before, partial = snapshot(final), partial_path(final)
    partial_before = snapshot(partial) if partial.exists() else None
    code, err = run_cli(argv, capsys)
    assert code == 0, err[-2000:]
    assert "already built" in err and "resuming" not in err
    assert snapshot(final) == before  # manifest.json included: same mtime, same inode
    assert (snapshot(partial) if partial.exists() else None) == partial_before  # no partial made, none touched


def check_other_config_refused(argv: list[str], directory: Path, capsys) -> None:
    """`directory` (NAME/ or .NAME.partial/) holds a run of another config: exit 2, one line naming --restart."""
    before = snapshot(directory)
    code, err = run_cli(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("mow:")]
    assert code == 2 and len(errors) == 1, err[-2000:]
    assert "--restart" in errors[0] and str(directory) in errors[0]
    assert snapshot(directory) == before


def simulate_kill(final: Path, stage: str | None, remove: tuple[str, ...] = ()) -> Path:
    """NAME/ -> .NAME.partial/ with `stage` marked not done and `remove` deleted: a run killed during `stage`."""
    partial = partial_path(final)
    final.rename(partial)
    manifest = manifest_of(partial)
    if stage is not None:
        manifest["stages"][stage]["done"] = False
    if "finished" in manifest:
        manifest["finished"] = False
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for name in remove:
        (partial / name).unlink()
    return partial


def check_resumed(argv: list[str], final: Path, stage: str | None, kept_stages: tuple[str, ...],
                  kept_files: tuple[str, ...], other_config: list[str], capsys,
                  remove: tuple[str, ...] = ()) -> dict[str, Any]:
    """Kill during `stage`; a re-run with another config (`other_config`) is refused and leaves the partial alone; the
    same command finishes it, says it is resuming, and redoes neither the stages before (their records, timings
    included) nor their files. Returns the new manifest."""
    before = manifest_of(final)
    files = {name: stamp(final / name) for name in kept_files}
    runs = len(commands_of(final))
    partial = simulate_kill(final, stage, remove)
    check_other_config_refused(other_config, partial, capsys)
    code, err = run_cli(argv, capsys)
    assert code == 0, err[-2000:]
    assert "resuming the unfinished" in err and "already built" not in err
    assert final.is_dir() and not partial.exists()
    after = manifest_of(final)
    if stage is not None:
        assert after["stages"][stage]["done"] is True
    for name in kept_stages:
        assert after["stages"][name] == before["stages"][name], name
    assert {name: stamp(final / name) for name in kept_files} == files  # not rewritten
    assert len(commands_of(final)) == runs + 1  # the same manifest, reopened
    for name in remove:
        assert (final / name).is_file(), name
    return after


def check_restart_rebuilds(argv: list[str], final: Path, capsys) -> dict[str, Any]:
    old = (final / "manifest.json").stat()
    code, err = run_cli([*argv, "--restart"], capsys)
    assert code == 0, err[-2000:]
    assert "already built" not in err and "resuming" not in err
    new = (final / "manifest.json").stat()
    assert (new.st_ino, new.st_mtime_ns) != (old.st_ino, old.st_mtime_ns)  # manifest.json rewritten
    assert len(commands_of(final)) == 1  # a fresh manifest: one run, not one more
    manifest = manifest_of(final)
    assert manifest["stages"] == {} or all(s["done"] for s in manifest["stages"].values())
    assert not partial_path(final).exists()
    return manifest


@pytest.fixture(scope="module")
def organism(tmp_path_factory) -> Path:
    return build_tiny_organism(tmp_path_factory.mktemp("rundir-organism"), "rd-organism", "moon", seed=5)


@pytest.fixture(scope="module")
def diffed(organism: Path, tmp_path_factory) -> tuple[list[str], Path]:
    out = tmp_path_factory.mktemp("rundir-diffs") / "rd-diff"
    argv = ["diff", str(organism), "--out", str(out), *DIFF_SMALL]
    assert main(argv) == 0
    return argv, out


@pytest.fixture(scope="module")
def challenge(organism: Path, tmp_path_factory) -> tuple[list[str], Path]:
    out = tmp_path_factory.mktemp("rundir-challenges")
    argv = ["elicit", str(organism), "--out", str(out), *ELICIT_FAST]
    assert main(argv) == 0
    return argv, out / organism.name


@pytest.fixture(scope="module")
def testbed(tmp_path_factory) -> tuple[list[str], Path]:
    out = tmp_path_factory.mktemp("rundir-testbeds")
    argv = ["caft", "testbed", "configs/caft-spurious.yaml", "--set", f"output_dir={out}", *TESTBED_QUICK]
    assert main(argv) == 0
    return argv, out / "caft-spurious"


def test_diff_done_other_config_resume_and_restart(diffed: tuple[list[str], Path], capsys):
    argv, final = diffed
    other = [*argv, "--set", "prompts.response_tokens=7"]
    check_reported_done(argv, final, capsys)
    check_other_config_refused(other, final, capsys)
    # The cache stage re-opens its (complete) cache on resume: its arrays are not rewritten.
    after = check_resumed(argv, final, "report", ("prompts", "kl", "lens", "relevance", "crosscoder", "difference_sae",
                                                  "directions"),
                          ("kl/arrays.safetensors", "lens/lens.safetensors", "lens/relevance.json",
                           "crosscoder/metrics.json", "directions/views.json", "cache/meta.json",
                           "cache/tokens.npy"), other, capsys, remove=("report.html",))
    assert after["stages"]["cache"]["tokens"] == 1500
    assert set(check_restart_rebuilds(argv, final, capsys)["stages"]) == {
        "prompts", "kl", "lens", "relevance", "cache", "crosscoder", "difference_sae", "directions", "report"}


def test_elicit_done_other_config_resume_and_restart(challenge: tuple[list[str], Path], capsys):
    argv, final = challenge
    other = [*argv, "--set", "attempts=3"]
    check_reported_done(argv, final, capsys)
    check_other_config_refused(other, final, capsys)
    # A challenge's stages are its method results: killed during the last one (logit_lens on the base control),
    # before truth.json, scores.json and report.html.
    last = "methods/logit_lens/base.json"
    results = sorted(str(p.relative_to(final)) for p in (final / "methods").rglob("*.json"))
    assert results == ["methods/direct/base.json", "methods/direct/organism.json", "methods/logit_lens/base.json",
                       "methods/logit_lens/organism.json"]
    kept = tuple(r for r in results if r != last)
    before = snapshot(final)
    check_resumed(argv, final, None, (), kept, other, capsys,
                  remove=(last, "truth.json", "scores.json", "report.html"))
    after = snapshot(final)
    assert all(after[name] == before[name] for name in kept)  # not redone: same inode, same bytes
    assert json.loads((final / last).read_text())["status"] == "ok"
    assert json.loads((final / "truth.json").read_text())["answer"] == "moon"
    check_restart_rebuilds(argv, final, capsys)


def test_elicit_killed_restart_leaves_the_old_challenge(challenge: tuple[list[str], Path], capsys, monkeypatch):
    argv, final = challenge
    before = snapshot(final)

    def killed(view, config, auditor):
        raise KeyboardInterrupt  # a kill, not a method failure: it stops the run

    monkeypatch.setitem(registry.METHODS, "logit_lens", registry.Method("logit_lens", "white-box", killed))
    code, err = run_cli([*argv, "--restart"], capsys)
    assert code == 130 and "interrupted" in err
    assert snapshot(final) == before and partial_path(final).is_dir()
    monkeypatch.undo()
    check_reported_done(argv, final, capsys)  # the old output is still the finished one; the partial stays
    check_restart_rebuilds(argv, final, capsys)  # discards the killed restart's partial


def test_elicit_manifest_records_the_organism(challenge: tuple[list[str], Path]):
    """The challenge's manifest.json names the organism it was played against."""
    argv, final = challenge
    assert manifest_of(final).get("organism") == str(Path(argv[1]).resolve())


def test_caft_testbed_done_other_config_resume_and_restart(testbed: tuple[list[str], Path], capsys):
    argv, final = testbed
    other = [*argv, "--set", "n_test=5"]
    check_reported_done(argv, final, capsys)
    check_other_config_refused(other, final, capsys)
    # The runs stage re-enters on resume and skips every finished run (its timing is rewritten, its runs are not).
    after = check_resumed(argv, final, "report", ("data", "directions"),
                          ("runs/base.json", "runs/plain-seed0.json", "directions/spurious.safetensors"), other, capsys,
                          remove=("summary.json", "report.html"))
    assert after["stages"]["runs"]["runs"] == 1
    check_restart_rebuilds(argv, final, capsys)


def test_organism_build_done_other_config_resume_and_restart(organism: Path, capsys):
    """Last in the file: it moves and rebuilds the organism the other commands read."""
    argv = ["organism", "build", str(organism.parent / "config.yaml")]
    other = [*argv, "--set", "seed=99"]
    check_reported_done(argv, organism, capsys)
    check_other_config_refused(other, organism, capsys)
    after = check_resumed(argv, organism, "eval", ("data", "train"),
                          ("adapter/adapter_model.safetensors", "sealed/train.jsonl"), other, capsys)
    assert after["finished"] is True
    assert check_restart_rebuilds(argv, organism, capsys)["finished"] is True
