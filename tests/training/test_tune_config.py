"""The tune search space, trial sizing and tracking helpers, checked without Ray running."""

import pytest
from ray import tune as ray_tune
from ray.tune.experiment import Trial

from mtl_ray.cluster.resources import ResourcePlan
from mtl_ray.config import SchedulerConfig, TuneConfig, load
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.errors import UserError
from mtl_ray.registry.register import check_name
from mtl_ray.registry.tracking import (
    connect,
    epoch_metrics,
    experiment_id,
    flat_params,
    log_numbers,
    log_params,
    tracking_uri,
)
from mtl_ray.training.pbt import TrainPBT
from mtl_ray.training.search import build_scheduler, check_pbt, check_search, mutations, param_space
from mtl_ray.training.trial import overcommitted
from mtl_ray.training.tune import concurrent_trials

TASKS4 = ["a", "b", "c", "d"]


def _config(**kw) -> TuneConfig:
    return TuneConfig(**kw)


def test_search_space_lists_are_grid_axes_and_distributions_are_sampled():
    cfg = _config(
        search={
            "backbone": ["xs", "s"],
            "weighting": ["equal", {"name": "gradnorm", "alpha": 1.5}],
            "lr": {"loguniform": [1e-4, 1e-2]},
        }
    )
    space = param_space(check_search(cfg, TASKS4, "t.yaml"))
    assert space["backbone"] == {"grid_search": ["xs", "s"]}
    assert space["weighting"] == {"grid_search": [{"name": "equal"}, {"name": "gradnorm", "alpha": 1.5}]}
    assert isinstance(space["lr"], ray_tune.search.sample.Float)
    assert space["lr"].lower == 1e-4 and space["lr"].upper == 1e-2


def test_optuna_turns_grid_axes_into_choices():
    cfg = _config(search={"backbone": ["xs", "s"]}, search_alg="optuna")
    space = param_space(check_search(cfg, TASKS4, "t.yaml"))
    assert isinstance(space["backbone"], ray_tune.search.sample.Categorical)
    assert space["backbone"].categories == ["xs", "s"]


def test_static_weight_vectors_are_searchable_and_checked_against_the_task_count():
    ok = _config(search={"weighting": [{"name": "static", "weights": [1, 1, 1, 4]}]})
    check_search(ok, TASKS4, "t.yaml")
    bad = _config(search={"weighting": [{"name": "static", "weights": [1, 2]}]})
    with pytest.raises(UserError, match="t.yaml: search.weighting: weighting .static.: expected 4 weights"):
        check_search(bad, TASKS4, "t.yaml")


@pytest.mark.parametrize(
    "search, message",
    [
        ({}, "t.yaml: search: empty search space"),
        ({"dropout": [0.1]}, "unknown key 'dropout'; searchable keys are backbone"),
        ({"epochs": [1, 2]}, "search.epochs: not searchable"),
        ({"backbone": ["xs", "huge"]}, "unknown backbone 'huge'"),
        ({"weighting": ["equal", "magic"]}, "search.weighting: unknown weighting 'magic': available are equal"),
        ({"weighting": [{"name": "dwa", "alpha": 2}]}, "search.weighting"),
        ({"lr": []}, "search.lr: empty list"),
        ({"lr": 0.01}, "search.lr: expected a list of values"),
        ({"lr": {"loguniform": [0, 1]}}, "loguniform: low must be positive"),
        ({"lr": {"uniform": [1, 0.1]}}, "uniform: expected \\[low, high\\]"),
        ({"lr": [-1.0]}, "search.lr: key 'lr'"),
    ],
)
def test_bad_search_space_names_the_key(search, message):
    with pytest.raises(UserError, match=message):
        check_search(_config(search=search), TASKS4, "t.yaml")


def test_pbt_mutates_lists_as_lists_and_distributions_as_domains():
    static = [{"name": "static", "weights": w} for w in ([1, 1, 1, 1], [1, 1, 1, 4])]
    cfg = _config(
        search={"weighting": static, "lr": {"loguniform": [1e-4, 1e-2]}},
        scheduler={"name": "pbt", "perturbation_interval": 1},
    )
    forms = check_search(cfg, TASKS4, "t.yaml")
    check_pbt(forms, "t.yaml")
    space = mutations(forms)
    assert space["weighting"] == static
    assert isinstance(space["lr"], ray_tune.search.sample.Float) and space["lr"].lower == 1e-4
    assert cfg.scheduler.quantile_fraction == 0.25 and cfg.scheduler.resample_probability == 0.25


@pytest.mark.parametrize(
    "search, message",
    [
        ({"backbone": ["xs", "s"]}, "t.yaml: search.backbone with scheduler pbt: .* cannot differ between trials"),
        ({"weighting": ["equal", "dwa"]}, "one method's parameters can be searched .* \\(dwa, equal\\)"),
    ],
)
def test_pbt_refuses_what_a_checkpoint_cannot_carry_over(search, message):
    forms = check_search(_config(search=search, scheduler={"name": "pbt"}), TASKS4, "t.yaml")
    with pytest.raises(UserError, match=message):
        check_pbt(forms, "t.yaml")


def test_metric_no_trial_reports_is_refused():
    with pytest.raises(UserError, match="metric 'accuracy': no trial reports it; trials report mean_auroc, train_loss"):
        check_search(_config(search={"backbone": ["xs"]}, metric="accuracy"), TASKS4, "t.yaml")


def test_unknown_tune_config_key_names_it(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("search: {backbone: [xs]}\nscheduler: {name: asha, grace: 2}\n")
    with pytest.raises(UserError, match="unknown key 'scheduler.grace'"):
        load(TuneConfig, str(f))


def test_concurrent_trials_leave_each_trial_its_data_cpus():
    two_cores = ResourcePlan(workers=2, cpus_per_worker=0.495, use_gpu=False, torch_threads=1, data_cpus=1.0)
    assert concurrent_trials(two_cores, [{"CPU": 2.0}]) == 1
    big = ResourcePlan(workers=2, cpus_per_worker=2.0, use_gpu=False, torch_threads=2, data_cpus=2.0)
    assert concurrent_trials(big, [{"CPU": 32.0}]) == 5
    gpu = ResourcePlan(workers=1, cpus_per_worker=4.0, use_gpu=True, torch_threads=4, data_cpus=4.0)
    assert concurrent_trials(gpu, [{"CPU": 64.0, "GPU": 2.0}]) == 2


def test_more_concurrent_trials_than_fit_are_named_with_what_each_trial_holds():
    two_cores = ResourcePlan(workers=2, cpus_per_worker=0.495, use_gpu=False, torch_threads=1, data_cpus=1.0)
    assert overcommitted(None, 1, two_cores) is None and overcommitted(1, 1, two_cores) is None
    line = overcommitted(2, 1, two_cores)
    assert line.startswith("max_concurrent_trials 2: this cluster holds 1 trial(s) side by side, each with 2 worker(s)")
    assert "1 CPU(s) for Ray Data" in line and "\n" not in line


def test_follow_cluster_raises_the_limit_as_gpu_nodes_join_and_asks_the_autoscaler_for_the_rest(capsys):
    """A GPU search of 4 trials on a cluster with one GPU node: one trial at a time, a standing
    autoscaler request for all 4 trials' bundles, the limit raised as nodes join, the request
    shrunk as trials end and taken back at the end."""
    from types import SimpleNamespace

    from mtl_ray.training.trial import trial_bundles, trial_limiter
    from mtl_ray.training.trial_callbacks import FollowCluster

    plan = ResourcePlan(workers=1, cpus_per_worker=2.0, use_gpu=True, torch_threads=2, data_cpus=2.0)
    gpu_node = {"CPU": 16.0, "GPU": 1.0}
    nodes, requests = [{"CPU": 8.0}, gpu_node], []
    limiter = trial_limiter(None, concurrent_trials(plan, nodes))
    follow = FollowCluster(
        limiter,
        lambda alive: concurrent_trials(plan, alive),
        wanted=4,
        ask=trial_bundles(plan),
        every_s=0,
        nodes=lambda: list(nodes),
        request=requests.append,
    )
    trials = [SimpleNamespace(status="RUNNING")] + [SimpleNamespace(status="PENDING")] * 3
    follow.on_step_begin(0, trials)
    assert limiter.max_concurrent == 1
    assert requests == [[{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0}] * 4]
    assert "1 of 4 trial(s) fit the cluster now; asked Ray's autoscaler" in capsys.readouterr().err
    nodes.append(gpu_node)
    follow.on_step_begin(1, trials)
    assert limiter.max_concurrent == 2 and len(requests) == 1  # still 4 trials left: the request stands
    assert "2 trial(s) at a time from now (was 1): the cluster has 3 node(s)" in capsys.readouterr().err
    trials[0] = SimpleNamespace(status="TERMINATED")
    follow.on_step_begin(2, trials)
    assert requests[-1] == trial_bundles(plan) * 3
    follow.on_experiment_end(trials)
    assert requests[-1] == []


def test_tracking_uri_precedence_and_absolute_sqlite(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri() == "http://127.0.0.1:5999"
    assert tracking_uri("sqlite:///x/y.db") == f"sqlite:///{tmp_path}/x/y.db"
    assert tracking_uri("sqlite:////abs/y.db") == "sqlite:////abs/y.db"


def test_params_and_epoch_metrics_are_flat():
    assert flat_params({"backbone": "s", "weighting": {"name": "gradnorm", "alpha": 1.5}, "workers": None}) == {
        "backbone": "s",
        "weighting.name": "gradnorm",
        "weighting.alpha": "1.5",
    }
    report = {
        "epoch": 2,
        "train_loss": 0.5,
        "mean_auroc": 0.8,
        "train_images_per_s": 100.0,
        "val": {"car": {"auroc": 0.9, "accuracy": 0.8, "f1": None, "n_labeled": 10}},
        "task_weights": {"car": 1.0},
    }
    assert epoch_metrics(report) == {
        "train_loss": 0.5,
        "mean_auroc": 0.8,
        "train_images_per_s": 100.0,
        "val.car.auroc": 0.9,
        "val.car.accuracy": 0.8,
        "val.car.n_labeled": 10.0,
        "weight.car": 1.0,
    }


def test_an_epoch_of_250_tasks_and_a_long_param_reach_a_tracking_server_whole(mlflow_server):
    """Over the 1,000 metrics per request a tracking server takes: every per-task metric arrives, at
    the epoch's step, and a param over its length limit is cut visibly instead of refused."""
    tasks = [f"task_{i:03d}" for i in range(250)]
    report = {
        "epoch": 3,
        "train_loss": 0.5,
        "val": {t: {"auroc": 0.5 + i / 1000, "accuracy": 0.5, "f1": 0.1, "n_labeled": 7} for i, t in enumerate(tasks)},
        "task_weights": dict.fromkeys(tasks, 1.0),
    }
    client = connect(mlflow_server.uri)
    run_id = client.create_run(experiment_id(client, "wide")).info.run_id
    log_numbers(client, run_id, epoch_metrics(report), step=3)
    log_params(client, run_id, {"tasks": ",".join(tasks) * 4, "backbone": "m"})
    data = client.get_run(run_id).data
    assert len(data.metrics) == 1 + 250 * 5
    assert data.metrics["val.task_249.auroc"] == pytest.approx(0.749)
    assert [m.step for m in client.get_metric_history(run_id, "val.task_249.auroc")] == [3]
    assert len(data.params["tasks"]) == 6000 and data.params["tasks"].endswith("…")
    assert data.params["backbone"] == "m"


@pytest.mark.parametrize("name", ["", "a/b", "team:model", "mtl@champion"])
def test_registry_names_mlflow_refuses_are_user_errors(name):
    with pytest.raises(UserError, match="registry name"):
        check_name(name)


def test_train_config_in_tune_config_is_checked(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text("train: {batch_size: 0}\nsearch: {backbone: [xs]}\n")
    with pytest.raises(UserError) as caught:
        load(TuneConfig, str(path))
    assert str(caught.value) == f"{path}: key 'train.batch_size': Input should be greater than or equal to 1 (got 0)"


def test_optuna_search_alg_is_built_when_asked():
    from ray.tune.search.optuna import OptunaSearch

    from mtl_ray.training.search import search_algorithm

    assert isinstance(search_algorithm("optuna"), OptunaSearch)
    assert search_algorithm("grid") is None


def test_training_data_comes_from_the_flag_else_the_config():
    assert TuneConfig(data="s3://b/shards").data_path(None, "job.yaml") == "s3://b/shards"
    assert TuneConfig(data="s3://b/shards").data_path("local/", "job.yaml") == "local/"
    with pytest.raises(UserError, match=r"job.yaml: no training data: pass --data PATH"):
        TuneConfig().data_path(None, "job.yaml")


def test_tune_and_quickstart_bad_input_through_the_cli_is_one_line(cli, tmp_path):
    """Each stops before Ray starts, with exit 2 and one line naming the file, key or path."""
    synthesize(str(tmp_path / "data"), 40, seed=1)
    files = {
        "unknown.yaml": "bogus: 1\n",
        "backbone.yaml": "search:\n  backbone: [s, q]\n",
        "samples.yaml": "num_samples: 0\n",
        "nodata.yaml": "num_samples: 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "a-file").write_text("")
    data = ["--data", tmp_path / "data"]
    cases = {
        ("tune", "--config", tmp_path / "missing.yaml", *data): "missing.yaml: cannot read",
        ("tune", "--config", tmp_path / "unknown.yaml", *data): "unknown.yaml: unknown key 'bogus'",
        ("tune", "--config", tmp_path / "backbone.yaml", *data): "search.backbone: unknown backbone 'q'",
        ("tune", "--config", tmp_path / "samples.yaml", *data): "key 'num_samples'",
        ("tune", "--config", tmp_path / "nodata.yaml"): "no training data",
        ("tune", "--config", tmp_path / "nodata.yaml", "--data", tmp_path / "nowhere"): "nowhere: no such file",
        ("quickstart", "--out", tmp_path / "a-file"): "a-file/data: cannot create the directory",
    }
    for args, expected in cases.items():
        res = cli(*args)
        assert res.code == 2, (args, res.err)
        assert expected in res.err, (args, res.err)
        assert len(res.err.strip().splitlines()) == 1, res.err


def test_trial_start_lines_show_small_learning_rates():
    from mtl_ray.training.trial_callbacks import short

    assert [short(1e-6), short(0.003), short({"name": "static", "weights": [1, 4]})] == [
        "1e-06",
        "0.003",
        "static,weights=[1, 4]",
    ]


class _Controller:
    """What PBT asks of Tune's controller: the trials, and pausing one to restart it from a checkpoint."""

    search_alg = None

    def __init__(self, trials):
        self.trials, self.paused = trials, []

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return self.trials

    def pause_trial(self, trial, should_checkpoint=True):
        self.paused.append(trial)
        trial.set_status(Trial.PAUSED)

    def _schedule_trial_save(self, trial, result=None):
        raise AssertionError("a Train-run trial has no checkpoint for Tune to save")


def test_pbt_hands_a_bottom_trial_a_snapshot_of_the_checkpoint_a_top_trial_reported(tmp_path):
    """Trials report only their Train checkpoint's path to Tune: TrainPBT copies that checkpoint (the
    Train run may delete it before it is restored) and hands the copy over, so the worst trial restarts
    from the best one's, with the best one's (perturbed) config. A trial keeps its 2 newest copies and
    any that another trial holds (Tune restores a paused trial from the checkpoint it was handed)."""
    lrs = [0.001, 0.002, 0.004, 0.008]
    trials = [Trial("fn", config={"lr": lr}, stub=True, trial_id=f"t{i}") for i, lr in enumerate(lrs)]
    snapshots = tmp_path / "tune-pbt-snapshots"
    pbt = build_scheduler(
        SchedulerConfig(name="pbt", perturbation_interval=2, resample_probability=0.0),
        4,
        {"lr": ("grid", lrs)},
        str(snapshots),
    )
    assert isinstance(pbt, TrainPBT)
    pbt.set_search_properties("mean_auroc", "max")
    pbt._log_config = False  # its policy files go to the experiment's directory, which stub trials lack
    controller = _Controller(trials)
    for trial in trials:
        trial.set_status(Trial.RUNNING)
        pbt.on_trial_add(controller, trial)
    for epoch in range(1, 9):
        for i, trial in enumerate(trials):
            if trial.status == Trial.RUNNING:
                path = tmp_path / "runs" / trial.trial_id / f"checkpoint_{epoch}"
                path.mkdir(parents=True)
                (path / "model.pt").write_text(f"{trial.trial_id} epoch {epoch}")
                result = {"epoch": epoch, "mean_auroc": 0.5 + 0.1 * i, "training_iteration": epoch}
                pbt.on_trial_result(controller, trial, result | {"checkpoint_path": str(path)})
    assert controller.paused == [trials[0]]  # the worst, at epoch 4, after the best offered its epoch-2 checkpoint
    handed = trials[0].run_metadata.checkpoint_manager._latest_checkpoint_result
    assert handed.checkpoint.path == str(snapshots / "t3-epoch2") and handed.metrics["epoch"] == 2
    assert trials[0].config["lr"] in (0.004, 0.008)  # the best's lr moved to a neighbouring value of its list
    kept = sorted(p.name for p in snapshots.iterdir())
    held = {pbt.held[t] for t in pbt.held}
    assert str(snapshots / "t3-epoch2") in held  # t0 restores from it after any pause: kept
    assert [k for k in kept if k.startswith("t3-")] == ["t3-epoch2", "t3-epoch6", "t3-epoch8"]  # epoch 4 pruned
    for t in trials:  # each trial's two newest offers, and what other trials hold
        own = [k for k in kept if k.startswith(f"{t.trial_id}-")]
        assert len([k for k in own if str(snapshots / k) not in held]) <= 2, kept
    assert (snapshots / "t3-epoch8" / "model.pt").read_text() == "t3 epoch 8"
