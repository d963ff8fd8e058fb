"""Progress lines: their format, the counter's plain lines when stderr is not a terminal, --quiet."""

import io

import pytest

from mtl_ray import progress


@pytest.fixture(autouse=True)
def _loud():
    progress.set_quiet(False)
    yield
    progress.set_quiet(False)


def test_duration_reads_as_people_write_it():
    assert [progress.duration(s) for s in (0.4, 42, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


def test_epoch_line_names_the_run_and_extrapolates_the_eta():
    metrics = {"epoch": 3, "train_loss": 0.51234, "mean_auroc": 0.8766, "train_images_per_s": 1234.5}
    line = progress.epoch_line("train-x", metrics, epochs=10, elapsed=60.0, done=2)
    assert line == "train-x: epoch 3/10  loss 0.5123  val mean AUROC 0.877  1,234 img/s  elapsed 1m00s  ETA 3m30s"
    assert "AUROC -" in progress.epoch_line("r", {**metrics, "mean_auroc": None}, 10, 1.0, 1)


def test_counter_prints_a_plain_line_at_each_tenth_off_a_terminal():
    out = io.StringIO()
    counter = progress.Counter("synth: scenes", 200, stream=out)
    for _ in counter.each(range(200)):
        pass
    lines = out.getvalue().splitlines()
    assert (
        len(lines) == 10
        and lines[0].startswith("synth: scenes: 20/200 (")
        and lines[-1].startswith("synth: scenes: 200/200 (")
    )


def test_quiet_silences_progress(capsys):
    progress.set_quiet(True)
    progress.say("hidden")
    progress.EpochPrinter("r", 2)({"epoch": 1, "train_loss": 1.0, "mean_auroc": 0.5, "train_images_per_s": 1.0})
    out = io.StringIO()
    progress.Counter("c", 3, stream=out).advance(3)
    assert capsys.readouterr().err == "" and out.getvalue() == ""
    progress.set_quiet(False)
    progress.say("shown")
    assert capsys.readouterr().err == "shown\n"
