import contextlib
import importlib.abc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchscale import Study, StudyConfig, load_study
from batchscale.cli import _format_params, main
from batchscale.store import StoreError, StudyStore
from batchscale.study import Progress
from batchscale.training.trial import TrialResult

TINY = [
    "--workload", "nqm", "--optimizer", "momentum", "--batch-sizes", "4,16,64",
    "--trials", "4", "--target", "1.0", "--step-budget", "120", "--engine", "reference",
    "--device", "cpu",
]  # fmt: skip


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_console_script_end_to_end(tmp_path: Path) -> None:
    store = tmp_path / "study.sqlite"
    env = {**os.environ, "COLUMNS": "160"}
    script = Path(sys.executable).parent / "batchscale"
    done = subprocess.run(
        [str(script), "run", *TINY, "--store", str(store)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert "steps to result" in done.stdout
    assert "12/12" in done.stderr  # the progress bar counted every trial
    shown = subprocess.run(
        [str(script), "show", str(store), "--json"], capture_output=True, text=True, check=True
    )
    summary = json.loads(shown.stdout)
    assert {"workload", "optimizer", "target", "batch_sizes"} <= summary.keys()
    assert summary["workload"] == "nqm" and summary["optimizer"] == "momentum"
    assert summary["target"] == 1.0
    rows = summary["batch_sizes"]
    assert [row["batch_size"] for row in rows] == [4, 16, 64]
    for row in rows:
        assert {"batch_size", "steps_to_result", "best_trial", "trials", "reached", "diverged"} <= (
            row.keys()
        )
        assert row["trials"] == 4
    assert any(row["steps_to_result"] is not None for row in rows)
    # the same command again trains nothing new
    again = subprocess.run(
        [str(script), "run", *TINY, "--store", str(store)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert "12/12" in again.stderr
    assert json.loads(
        subprocess.run([str(script), "show", str(store), "--json"], capture_output=True,
                       text=True, check=True).stdout
    ) == summary  # fmt: skip


def test_show_prints_a_table(tiny_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["show", str(tiny_store)], capsys)
    assert code == 0
    assert "batch size" in out and "steps to result" in out


def test_workloads_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["workloads", "--json"], capsys)
    assert code == 0
    listed = {row["name"]: row for row in json.loads(out)}
    assert {"mnist1d-mlp", "mnist1d-cnn", "nqm"} <= listed.keys()
    assert listed["mnist1d-mlp"]["metric"] == "classification_error"
    assert listed["mnist1d-mlp"]["data"]["test"] == 1000


LEARNING_RATE = '[search_space.learning_rate]\nscale = "log"\nlow = 0.01\nhigh = 1.0\n'
BAD_CONFIGS = {
    "inverted": '[search_space.learning_rate]\nscale = "log"\nlow = 1.0\nhigh = 0.1\n',
    "empty": '[search_space.learning_rate]\nscale = "linear"\nlow = 0.5\nhigh = 0.5\n',
    "nonpositive": '[search_space.learning_rate]\nscale = "log"\nlow = 0.0\nhigh = 1.0\n',
    "unknown_key": "trails = 3\n",
    "unknown_dimension": LEARNING_RATE
    + '[search_space.end_lr_factor]\nscale = "log"\nlow = 0.01\nhigh = 1.0\n',
    "sgd_momentum": 'optimizer = "sgd"\n'
    + LEARNING_RATE
    + '[search_space.momentum]\nscale = "linear"\nlow = 0.5\nhigh = 0.9\n',
    "two_decays": LEARNING_RATE
    + '[search_space.decay_fraction]\nscale = "linear"\nlow = 0.5\nhigh = 1.0\n'
    + '[search_space.learning_rate_decay_steps]\nscale = "linear"\nlow = 10\nhigh = 90\n',
    "negative_rate": '[search_space.learning_rate]\nscale = "linear"\nlow = -1.0\nhigh = -0.5\n',
    "momentum_above_one": LEARNING_RATE
    + '[search_space.momentum]\nscale = "linear"\nlow = 0.5\nhigh = 1.5\n',
    "not_toml": "workload = [unclosed\n",
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workload", "resnet-9000"], "known workloads: "),
        (["--optimizer", "adamw"], "known optimizers: sgd, momentum, nesterov"),
        (["--batch-sizes", "16,0"], "'0' is not a positive integer"),
        (["--batch-sizes", "16,-4"], "'-4' is not a positive integer"),
        (["--batch-sizes", "16,1.5"], "'1.5' is not a positive integer"),
        (["--batch-sizes", "abc"], "'abc' is not a positive integer"),
        (["--workload", "mnist1d-mlp", "--target", "1.5"], "outside the range"),
        (["--workload", "nqm", "--target", "-0.1"], "outside the range"),
        (["--trials", "0"], "trials"),
        (["--no-such-flag"], "No such option"),
        (["--config", "inverted"], "empty or inverted"),
        (["--config", "empty"], "empty or inverted"),
        (["--config", "nonpositive"], "positive bounds"),
        (["--config", "unknown_key"], "unknown setting 'trails'"),
        (["--config", "unknown_dimension"], "unknown dimension 'end_lr_factor'; the trials read"),
        (["--config", "sgd_momentum"], "optimizer 'sgd' has no momentum"),
        (["--config", "two_decays"], "not both"),
        (["--config", "negative_rate"], "learning_rate must be above 0, but its range [-1, -0.5]"),
        (
            ["--config", "momentum_above_one"],
            "momentum must be in [0, 1), but its range [0.5, 1.5]",
        ),
        (["--config", "not_toml"], "not valid TOML"),
        (["--config", "missing"], "does not exist"),
        (["--device", "cuda"], "cuda"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if args[0] == "--config":
        path = tmp_path / f"{args[1]}.toml"
        if args[1] in BAD_CONFIGS:
            path.write_text(BAD_CONFIGS[args[1]])
        args = ["--config", str(path)]
    if args == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        args = [*TINY, "--device", "cuda"]
    before = sorted(tmp_path.iterdir())
    code, _, err = run_cli(["run", *args, "--store", str(tmp_path / "s.sqlite")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert sorted(tmp_path.iterdir()) == before


def test_store_that_is_not_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_text("not a database\n" * 100)
    before = bogus.read_bytes()
    for command in (["run", *TINY, "--store", str(bogus)], ["show", str(bogus)]):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and "not a batchscale study" in err
        assert len(err.strip().splitlines()) == 1
    assert bogus.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.sqlite"]


def test_store_of_a_different_study(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tiny_store.read_bytes()
    args = [a if a != "momentum" else "sgd" for a in TINY]
    code, _, err = run_cli(["run", *args, "--store", str(tiny_store)], capsys)
    assert code == 2 and "holds a different study" in err and "optimizer" in err
    assert tiny_store.read_bytes() == before


def test_show_json_has_fit_and_warnings(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["show", str(tiny_store), "--json"], capsys)
    assert code == 0
    shown = json.loads(out)
    assert "warnings" in shown and isinstance(shown["warnings"], list)
    assert "fit" in shown
    if shown["fit"] is not None:
        assert {"s_min", "b_crit", "e_min", "interval"} <= shown["fit"].keys()
        assert shown["fit"]["e_min"] == pytest.approx(
            shown["fit"]["s_min"] * shown["fit"]["b_crit"]
        )
    assert [goal["goal"] for goal in shown["goals"]]
    code, out, _ = run_cli(["show", str(tiny_store), "--json", "--goals", "1.5,1.2"], capsys)
    assert {1.5, 1.2} <= {goal["goal"] for goal in json.loads(out)["goals"]}


def test_report_and_compare_commands(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run_cli(["report", str(tiny_store), "--out", str(tmp_path / "r")], capsys)
    assert code == 0 and (tmp_path / "r" / "report.html").is_file()
    assert list((tmp_path / "r").glob("*.png")) and list((tmp_path / "r").glob("*.svg"))
    second = tmp_path / "second.sqlite"
    second.write_bytes(tiny_store.read_bytes())
    code, _, _ = run_cli(
        ["compare", str(tiny_store), str(second), "--out", str(tmp_path / "c"),
         "--labels", "first,second"],
        capsys,
    )  # fmt: skip
    assert code == 0 and (tmp_path / "c" / "comparison.html").is_file()
    for args, message in (
        (["--labels", "a,b"], "compare needs two or more study files; for one study use 'report'"),
        ([str(tiny_store)], "a study file is given twice; pass each study once"),
        ([str(second), "--labels", "a,a"], "--labels must be distinct and non-empty"),
        ([str(second), "--labels", "a,"], "--labels must be distinct and non-empty"),
    ):
        code, _, err = run_cli(["compare", str(tiny_store), *args], capsys)
        assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1
    code, _, err = run_cli(["report", str(tiny_store), "--goals", "x,y"], capsys)
    assert code == 2 and "comma-separated numbers" in err


def test_run_writes_the_report_beside_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "s.sqlite"
    code, out, _ = run_cli(["run", *TINY, "--store", str(store)], capsys)
    assert code == 0
    assert (tmp_path / "s-report" / "report.html").is_file()
    assert "report written to" in out


def test_nqm_prediction_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["nqm", "--optimizer", "momentum", "--batch-sizes", "1,64,4096", "--json"]
    code, out, _ = run_cli([*args, "--out", str(tmp_path)], capsys)
    assert code == 0
    rows = json.loads(out)["batch_sizes"]
    assert [row["batch_size"] for row in rows] == [1, 64, 4096]
    assert {"steps_to_result", "learning_rate", "momentum"} <= rows[0].keys()
    steps = [row["steps_to_result"] for row in rows]
    assert steps[0] > steps[1] > steps[2]
    assert (tmp_path / "nqm.png").is_file() and (tmp_path / "nqm.svg").is_file()
    code, _, err = run_cli(["nqm", "--optimizer", "adam"], capsys)
    assert code == 2 and "known: sgd, momentum" in err


def test_noise_scale_command(tiny_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        ["noise-scale", "--workload", "nqm", "--batch-size", "8", "--steps", "30", "--json",
         "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert code == 0
    trace = json.loads(out)
    assert trace["b_simple"] > 0 and trace["points"]
    assert {"step", "b_simple"} <= trace["points"][0].keys()
    shown = json.loads(run_cli(["show", str(tiny_store), "--json"], capsys)[1])
    reached = [r["batch_size"] for r in shown["batch_sizes"] if r["steps_to_result"]]
    code, out, _ = run_cli(
        ["noise-scale", "--study", str(tiny_store), "--batch-size", str(reached[0]), "--json"],
        capsys,
    )
    assert code == 0 and json.loads(out)["batch_size"] == reached[0]
    code, _, err = run_cli(["noise-scale", "--study", str(tiny_store)], capsys)
    assert code == 2 and "--batch-size" in err
    # One example has no gradient noise to estimate: a usage error, not a traceback.
    code, _, err = run_cli(["noise-scale", "--workload", "nqm", "--batch-size", "1"], capsys)
    assert code == 2 and "--batch-size" in err and "greater than or equal to 2" in err
    mnist = ["noise-scale", "--workload", "mnist1d-mlp", "--steps", "20", "--device", "cpu"]
    code, _, err = run_cli([*mnist, "--batch-size", "100000"], capsys)
    assert code == 2 and err.startswith("error: batch size 100000 exceeds the 36000 training")
    # A diverging run has no noise scale worth printing.
    code, out, err = run_cli([*mnist, "--batch-size", "64", "--learning-rate", "1000"], capsys)
    assert code == 2 and "diverged" in err and "lower --learning-rate" in err and not out
    code, _, err = run_cli([*mnist, "--optimizer", "sgd", "--momentum", "0.9"], capsys)
    assert code == 2 and err.startswith("error: plain sgd has no momentum; drop --momentum")
    code, _, err = run_cli(["noise-scale", "--study", str(tiny_store), "--batch-size",
                            str(reached[0]), "--device", "mps"], capsys)  # fmt: skip
    assert code == 2 and "unknown device 'mps': use auto, cpu or cuda" in err


def test_ctrl_c_while_pytorch_loads_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchscale.launch import main as launch

    class CtrlCWhileLoading(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *args: object) -> None:
            if name == "batchscale.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "batchscale.cli")
    monkeypatch.setattr(sys, "meta_path", [CtrlCWhileLoading(), *sys.meta_path])
    assert launch() == 130
    assert capsys.readouterr().err == (
        "error: interrupted before anything ran; nothing was stored\n"
    )
    # Which relies on the package loading PyTorch only with the first name that needs it.
    check = "import sys, batchscale; assert 'torch' not in sys.modules; batchscale.Study"
    subprocess.run([sys.executable, "-c", check], check=True)


def test_ctrl_c_says_so_and_exits_130(tmp_path: Path) -> None:
    store = tmp_path / "study.sqlite"
    script = Path(sys.executable).parent / "batchscale"
    long_study = [
        "--workload", "nqm", "--batch-sizes", "2,4,8,16", "--trials", "64",
        "--step-budget", "3000", "--target", "0.01", "--engine", "reference",
    ]  # fmt: skip
    process = subprocess.Popen(
        [str(script), "run", *long_study, "--store", str(store), "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def stored() -> int:
        with contextlib.suppress(StoreError, sqlite3.Error):
            opened = StudyStore.open(store, read_only=True)
            try:
                return len(opened.finished_trials())
            finally:
                opened.close()
        return 0

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stored():
        time.sleep(0.05)
    before = stored()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "error: interrupted; finished trials are stored, run the same command again to resume"
    )
    assert before >= 1 and stored() >= before  # what was stored stays


def test_a_damaged_store_is_one_line_in_every_reading_command(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "damaged.sqlite"
    data = bytearray(tiny_store.read_bytes())
    assert len(data) > 4096 * 4
    data[4096 * 3 : 4096 * 3 + 64] = b"\xff" * 64  # a page of the trials or measurements
    damaged.write_bytes(bytes(data))
    for command in (
        ["show", str(damaged)],
        ["show", str(damaged), "--json"],
        ["report", str(damaged), "--out", str(tmp_path / "r")],
        ["replicate", str(damaged), "--seeds", "1", "--no-report"],
    ):
        code, _, err = run_cli(command, capsys)
        assert code == 2, command
        assert len(err.strip().splitlines()) == 1 and "restore it from a copy" in err, err


def test_paths_that_are_not_what_they_should_be(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for command in (
        ["run", *TINY, "--config", str(folder), "--store", str(tmp_path / "s.sqlite")],
        ["run", *TINY, "--store", str(a_file / "s.sqlite")],
        ["report", str(tiny_store), "--out", str(a_file)],
    ):
        code, _, err = run_cli(command, capsys)
        assert code == 2, command
        assert len(err.strip().splitlines()) == 1 and err.strip().startswith("error: "), err
    assert not (tmp_path / "s.sqlite").exists()


def test_goals_outside_the_metric_s_range_are_refused_by_show_and_report(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (
        ["show", str(tiny_store), "--goals", "-1"],
        ["show", str(tiny_store), "--goals", "0.5,-1", "--json"],
        ["report", str(tiny_store), "--goals", "-1", "--out", str(tmp_path / "r")],
    ):
        code, out, err = run_cli(command, capsys)
        assert code == 2 and not out, command
        assert (
            err.strip()
            == "error: goal -1.0 is outside the range of loss [0, inf]; choose a goal inside it"
        )
    assert not (tmp_path / "r").exists()
    # A loss of 0 is never strictly beaten: refused as run refuses --target 0.
    code, out, err = run_cli(["show", str(tiny_store), "--goals", "0"], capsys)
    assert code == 2 and not out
    assert err.startswith("error: goal 0 can never be reached: loss cannot be below 0;")


def test_show_prints_the_curve_at_every_goal_asked_for(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["show", str(tiny_store), "--goals", "1.2,0.8", "--json"], capsys)
    assert code == 0
    goals = {goal["goal"]: goal for goal in json.loads(out)["goals"]}
    assert {1.2, 1.0, 0.8} <= goals.keys()
    code, out, _ = run_cli(["show", str(tiny_store), "--goals", "1.2,0.8"], capsys)
    assert code == 0
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│ < " in line}
    for goal, entry in goals.items():
        row = rows[f"< {goal:g}"]
        assert f"{entry['reached']} of 3" in row
        assert ("not measurable" in row) == entry["censored"]
    assert "the study's goal" in rows["< 1"]
    # Trials stopped at the hardest of the study's goals (0.9), not at its goal.
    assert "not measurable: trials stop at < 0.9" in rows["< 0.8"]


def test_show_says_an_interrupted_study_is_incomplete(
    tmp_path: Path, tiny_config: StudyConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    class StopAfterFive(Progress):
        done = 0

        def trial_done(self, result: TrialResult) -> None:
            self.done += 1
            if self.done == 5:
                raise KeyboardInterrupt

    store = tmp_path / "s.sqlite"
    with pytest.raises(KeyboardInterrupt):
        Study(tiny_config, store).run(StopAfterFive())
    code, out, _ = run_cli(["show", str(store)], capsys)
    assert code == 0
    assert (
        "incomplete: 5 of 12 trials stored (4 per batch size planned; 16 has 1; 64 has none); "
        "run the same command again to resume"
    ) in out
    shown = json.loads(run_cli(["show", str(store), "--json"], capsys)[1])
    assert shown["incomplete"] == {"planned": 4, "stored": 5, "total": 12,
                                   "short": {"16": 1, "64": 0}}  # fmt: skip
    code, out, _ = run_cli(["run", *TINY, "--store", str(store), "--no-report"], capsys)
    assert code == 0
    assert "incomplete" not in run_cli(["show", str(store)], capsys)[1]
    assert json.loads(run_cli(["show", str(store), "--json"], capsys)[1])["incomplete"] is None


def test_a_report_folder_that_is_a_file_is_refused_before_training(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    store = tmp_path / "new.sqlite"
    code, _, err = run_cli(
        ["run", *TINY, "--store", str(store), "--report-dir", str(a_file)], capsys
    )
    assert code == 2
    assert err == (
        f"error: --report-dir {a_file} is a file, not a folder; give a folder (it is created "
        "if missing)\n"
    )
    assert not store.exists()  # nothing trained, nothing stored
    code, _, err = run_cli(["report", str(tiny_store), "--out", str(a_file / "r")], capsys)
    assert code == 2 and err.startswith(f"error: --out {a_file / 'r'} cannot be created: {a_file}")
    code, _, err = run_cli(["report", str(tiny_store), "--out", str(a_file)], capsys)
    assert code == 2 and err.startswith(f"error: --out {a_file} is a file, not a folder")
    assert a_file.read_text() == "x"


def test_piped_output_is_not_wrapped_or_cut(
    tiny_store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    shown = json.loads(run_cli(["show", str(tiny_store), "--json"], capsys)[1])
    code, out, _ = run_cli(["show", str(tiny_store)], capsys)
    assert code == 0
    assert "…" not in out
    for row in shown["batch_sizes"]:
        if row["best_params"]:
            assert _format_params(row["best_params"]) in out  # the whole cell on one line


def test_a_folder_where_a_study_file_is_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command, name in (
        (["show", str(tmp_path)], str(tmp_path)),
        (["run", *TINY, "--store", str(tmp_path)], f"--store {tmp_path}"),
        (["replicate", str(tmp_path)], str(tmp_path)),
    ):
        code, _, err = run_cli(command, capsys)
        assert code == 2, command
        assert err == (
            f"error: {name} is a folder, not a study file; pass a study file such as "
            f"{tmp_path / 'study.sqlite'}\n"
        )
    assert list(tmp_path.iterdir()) == []


def test_noise_scale_at_a_batch_size_the_study_lacks(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        ["noise-scale", "--study", str(tiny_store), "--batch-size", "128"], capsys
    )
    assert code == 2 and not out
    assert err == (
        f"error: batch size 128 is not in the study {tiny_store}; its batch sizes are "
        "4, 16, 64: choose one of them\n"
    )


def test_noise_scale_on_a_study_with_no_finished_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchscale import Study, StudyConfig

    from .conftest import TINY_NQM

    store = tmp_path / "empty.sqlite"
    Study(StudyConfig(**TINY_NQM), store).open_store().close()
    code, out, err = run_cli(["noise-scale", "--study", str(store), "--batch-size", "4"], capsys)
    assert code == 2 and not out
    assert err == f"error: the study {store} has no finished trials yet; run it first\n"


def test_fit_intervals_read_as_the_report_writes_them() -> None:
    from batchscale.analysis.scaling import ScalingFit
    from batchscale.formatting import format_interval, format_number

    sizes = (16.0, 64.0, 512.0)
    fit = ScalingFit(
        s_min=120.0, b_crit=4.2, batch_sizes=sizes, steps=(150.0, 130.0, 122.0),
        rms_log_residual=0.1, b_crit_at_bound=False, confidence=0.95,
        interval_method="bootstrap over trials", s_min_interval=(100.0, 140.0),
        b_crit_interval=(0.016, 331_700.0), e_min_interval=None,
    )  # fmt: skip
    # Searched in [0.016, 512,000]: the low end is at its edge, the high end is not.
    line = fit.describe()
    # The report's own helpers (their digits may change; the CLI must follow them).
    interval = format_interval(fit.b_crit_interval, fit.b_crit_bounds)
    assert f"B_crit = {format_number(4.2)} {interval}," in line
    assert "B_crit = 4.2 [≈ 0, 33" in line and "e+" not in line
    assert line.startswith("fit S(B) = S_min (1 + B_crit / B): S_min = 120 [100, 140], ")
    assert line.endswith("E_min = 504 (no interval) (95% intervals, bootstrap over trials)")


def test_show_s_fit_line_agrees_with_the_report(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchscale.analysis import analyze_store
    from batchscale.formatting import format_number

    fit = analyze_store(tiny_store).fit
    assert fit is not None
    out = run_cli(["show", str(tiny_store)], capsys)[1]
    assert f"fit S(B) = S_min (1 + B_crit / B): S_min = {format_number(fit.s_min)}" in out
    # The whole line, brackets and all: rich would read "[unbounded, 48.9]" as a style tag.
    assert fit.describe() in out.splitlines()
    assert "(95% none)" not in out


def test_an_unbounded_interval_is_printed_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchscale.analysis import analyze_store

    store = tmp_path / "full.sqlite"
    settings = [*TINY, "--mode", "full"]
    settings[settings.index("--trials") + 1] = "8"
    code, out, _ = run_cli(["run", *settings, "--store", str(store), "--no-report"], capsys)
    assert code == 0
    fit = analyze_store(store).fit
    assert fit is not None
    line = fit.describe()
    # Rich would read "[≈ 0, ...]" as a style tag and print nothing of it.
    assert "B_crit = 3.85 [≈ 0, " in line and "E_min = 12.6 [≈ 0, " in line
    assert line in out.splitlines()
    assert line in run_cli(["show", str(store)], capsys)[1].splitlines()


def test_fewer_trials_than_stored_is_said_once(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*TINY[: TINY.index("--trials")], "--trials", "2", *TINY[TINY.index("--target") :]]
    code, out, err = run_cli(["run", *args, "--store", str(tiny_store), "--no-report"], capsys)
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: {tiny_store} already holds up to 4 trials per batch size, more than the 2 "
        "asked for; every stored trial is used"
    ]
    assert "error" not in err


def test_resuming_without_batch_sizes_keeps_the_store_s(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    i = TINY.index("--batch-sizes")
    args = [*TINY[:i], *TINY[i + 2 :]]
    code, out, _ = run_cli(["run", *args, "--store", str(tiny_store), "--no-report"], capsys)
    assert code == 0
    assert f"note: resuming {tiny_store} at its batch sizes 4, 16, 64" in out
    shown = json.loads(run_cli(["show", str(tiny_store), "--json"], capsys)[1])
    assert [row["batch_size"] for row in shown["batch_sizes"]] == [4, 16, 64]
    # At the batch sizes that would run anyway, resuming says nothing.
    default = [*args, "--step-budget", "5", "--trials", "1"]
    store = tiny_store.with_name("default-sizes.sqlite")
    assert run_cli(["run", *default, "--store", str(store), "--no-report"], capsys)[0] == 0
    code, out, _ = run_cli(["run", *default, "--store", str(store), "--no-report"], capsys)
    assert code == 0 and "note:" not in out
    # A store of another study: its one-line error alone, no note about resuming it.
    other = [a if a != "momentum" else "sgd" for a in args]
    code, out, err = run_cli(["run", *other, "--store", str(tiny_store)], capsys)
    assert code == 2 and "holds a different study" in err and "note" not in out


def test_a_bare_resume_carries_on_the_stored_study_with_its_settings(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def trials_per_batch_size() -> dict[int, int]:
        shown = json.loads(run_cli(["show", str(tiny_store), "--json"], capsys)[1])
        return {row["batch_size"]: row["trials"] for row in shown["batch_sizes"]}

    assert trials_per_batch_size() == {4: 4, 16: 4, 64: 4}
    code, out, err = run_cli(["run", "--store", str(tiny_store), "--no-report"], capsys)
    assert code == 0 and "error" not in err
    [note] = [line for line in out.splitlines() if "with its settings" in line]
    for setting in ("workload=nqm", "optimizer=momentum", "target=1", "step_budget=120",
                    "engine=reference", "trials=4"):  # fmt: skip
        assert setting in note, note
    assert "batch sizes 4, 16, 64" in out
    # Nothing trained: the stored study was already complete at its own settings.
    assert trials_per_batch_size() == {4: 4, 16: 4, 64: 4}
    # A flag given wins over what is stored.
    code, out, err = run_cli(
        ["run", "--store", str(tiny_store), "--no-report", "--trials", "5"], capsys
    )
    assert code == 0 and "error" not in err and "trials=" not in out
    assert trials_per_batch_size() == {4: 5, 16: 5, 64: 5}


def test_nqm_target_above_the_initial_loss_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["nqm", "--target", "100", "--out", str(tmp_path / "n")], capsys)
    assert code == 2 and not out
    assert err == (
        "error: --target 100 is not below the initial expected loss 2.594 of the "
        "100-dimension NQM, so it is reached before training; choose a target below it\n"
    )
    assert not (tmp_path / "n").exists()


def test_replicating_a_custom_workload_points_to_python(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connection = sqlite3.connect(tiny_store)
    with connection:
        (config,) = connection.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        custom = json.dumps({**json.loads(config), "workload": "my-mlp"})
        connection.execute("UPDATE meta SET value = ? WHERE key = 'config'", (custom,))
        connection.execute("UPDATE meta SET value = '\"my-mlp\"' WHERE key = 'workload'")
    connection.close()
    before = tiny_store.read_bytes()
    code, _, err = run_cli(["replicate", str(tiny_store), "--seeds", "2"], capsys)
    assert code == 2
    assert err == (
        f"error: unknown workload 'my-mlp' in {tiny_store}: a custom workload cannot be rebuilt "
        "from the command line; run it from Python with the same CustomWorkload: "
        f"Study.from_store('{tiny_store}', workload=my_workload).replicate(2)\n"
    )
    assert tiny_store.read_bytes() == before


def test_a_new_study_that_fails_before_any_trial_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "new.sqlite"
    base = ["run", "--workload", "nqm", "--trials", "2", "--batch-sizes", "16", "--no-report"]
    code, _, err = run_cli(
        [*base, "--store", str(store), "--executor", "ray", "--ray-address", "garbage"], capsys
    )
    # One line: no progress bar shows before the cluster is joined.
    assert code == 2 and err.startswith("error: cannot join the Ray cluster at garbage: ")
    assert err.count("\n") == 1 and not list(tmp_path.iterdir())
    # The corrected command then starts the study afresh, not "a different study".
    assert run_cli([*base, "--store", str(store), "--step-budget", "20"], capsys)[0] == 0


def test_running_out_of_memory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["nqm", "--dims", "1000000000000", "--json"], capsys)
    assert code == 2 and not out
    assert err.startswith("error: out of memory (") and err.count("\n") == 1
    assert "smaller batch sizes, --width or --dims" in err


def test_damaged_metadata_is_named_as_damage_by_every_reader(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for damage in ("DELETE FROM meta WHERE key = 'metric_columns'",
                   "UPDATE meta SET value = '{not json' WHERE key = 'trials'"):  # fmt: skip
        store = tmp_path / "damaged.sqlite"
        store.write_bytes(tiny_store.read_bytes())
        with sqlite3.connect(store) as connection:
            connection.execute(damage)
        connection.close()
        for command in (["show", str(store)], ["report", str(store), "--out", str(tmp_path / "r")]):
            code, out, err = run_cli(command, capsys)
            assert code == 2 and not out, command
            assert err == (
                f"error: {store} is a damaged study (its metadata cannot be read: "
                + err.split("cannot be read: ", 1)[1]
            )
            assert err.endswith("restore it from a copy or pass another file\n")
        assert not (tmp_path / "r").exists()


def test_a_report_that_fails_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "empty.sqlite"
    config = StudyConfig(workload="nqm", batch_sizes=(16,), trials=1, step_budget=5)
    Study(config, store).run()
    with sqlite3.connect(store) as connection:
        connection.execute("DELETE FROM measurements")
    connection.close()
    code, _, err = run_cli(["report", str(store), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.startswith("error: ")
    assert not (tmp_path / "r").exists()


def test_a_store_or_its_folder_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import batchscale.cli as cli

    locked = tmp_path / "locked"
    locked.mkdir()
    read_only = {locked, locked / "old.sqlite"}
    (locked / "old.sqlite").write_bytes(b"")
    # As root, permission bits deny nothing; the check asks os.access, so ask it here.
    monkeypatch.setattr(
        cli.os, "access", lambda path, mode: mode != os.W_OK or Path(path) not in read_only
    )
    args = ["run", "--workload", "nqm", "--no-report"]
    code, _, err = run_cli([*args, "--store", str(locked / "new.sqlite")], capsys)
    assert code == 2 and err == (
        f"error: --store {locked / 'new.sqlite'} cannot be written: its folder {locked} is "
        "read-only; make it writable or pass another --store\n"
    )
    read_only.discard(locked)
    code, _, err = run_cli([*args, "--store", str(locked / "old.sqlite")], capsys)
    assert code == 2 and err == (
        f"error: --store {locked / 'old.sqlite'} is read-only; make it writable or pass "
        "another --store\n"
    )


def test_usage_errors_point_at_the_right_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["--bogus"], capsys)
    assert code == 2 and err.endswith("(see 'batchscale --help')\n")
    code, _, err = run_cli(["show", "--bogus"], capsys)
    assert code == 2 and err.endswith("(see 'batchscale show --help')\n")


def test_paths_of_the_wrong_kind_are_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["show", os.devnull], capsys)
    assert code == 2 and err == (
        f"error: {os.devnull} is not a regular file; pass a study file written by "
        "'batchscale run'\n"
    )
    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("x")
    store = tmp_path / "s.sqlite"
    code, _, err = run_cli(["run", "--data-dir", str(not_a_folder), "--store", str(store)], capsys)
    assert code == 2 and err == (
        f"error: invalid setting 'data_dir': {not_a_folder} is a file, not a folder; pass the "
        "folder that holds the data sets\n"
    )
    assert not store.exists()


def test_a_study_whose_every_trial_diverged_is_an_error_and_keeps_its_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "hot.toml"
    config.write_text(
        'workload = "mnist1d-mlp"\noptimizer = "sgd"\nbatch_sizes = [64, 128]\ntrials = 2\n'
        "step_budget = 50\n[search_space.learning_rate]\n"
        'scale = "log"\nlow = 1000.0\nhigh = 10000.0\n'
    )
    store = tmp_path / "hot.sqlite"
    code, out, err = run_cli(["run", "--config", str(config), "--store", str(store)], capsys)
    # After the progress bar, one line.
    assert code == 2 and err.splitlines()[-1] == (
        "error: every trial diverged (4 of 4): the learning rates searched are too large; lower "
        "learning_rate's range under [search_space] in a --config file"
    )
    assert "warning: every trial diverged at batch sizes 64, 128" in out
    assert "no trial reached the goal" not in out
    assert len(load_study(str(store)).trials()) == 4
    assert not (tmp_path / "hot-report").exists()
