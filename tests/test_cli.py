import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchscale.cli import main

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
    code, _, _ = run_cli(
        ["compare", str(tiny_store), str(tiny_store), "--out", str(tmp_path / "c"),
         "--labels", "first,second"],
        capsys,
    )  # fmt: skip
    assert code == 0 and (tmp_path / "c" / "comparison.html").is_file()
    code, _, err = run_cli(["compare", str(tiny_store), "--labels", "a,b"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
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
    code, _, err = run_cli(["noise-scale", "--study", str(tiny_store), "--batch-size",
                            str(reached[0]), "--device", "mps"], capsys)  # fmt: skip
    assert code == 2 and "unknown device 'mps': use auto, cpu or cuda" in err


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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not store.exists():
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "error: interrupted; finished trials are stored, run the same command again to resume"
    )
    assert store.is_file()  # what was stored stays


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
