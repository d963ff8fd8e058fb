"""`mtl-ray compare | transfer | advise`: does multi-task learning, or transfer, pay off on this data?"""

from __future__ import annotations

import argparse

from mtl_ray.cli.flags import add_command, from_api, positive_int, task_list
from mtl_ray.cli.train import train_config, training_flags
from mtl_ray.config import AFFINITY_STEPS, STL_PATIENCE
from mtl_ray.result import Result


def compare(args: argparse.Namespace) -> Result:
    from mtl_ray.studies.compare import compare

    return compare(
        args.data,
        val=args.val,
        config=train_config(args).model_copy(update={"init": None}),  # transfer trains with and without it
        control=args.control,
        plots=args.plots,
        storage_path=args.storage,
        focus=args.focus,
        seeds=args.seeds,
        stl_epochs=args.stl_epochs,
        stl_patience=args.stl_patience,
        stl_tasks=args.stl_tasks,
        groups=args.groups,
        max_groups=args.max_groups,
        affinity_steps=args.affinity_steps,
        track=not args.no_track,
    )


def transfer(args: argparse.Namespace) -> Result:
    from mtl_ray.studies.transfer import transfer

    return transfer(
        args.data,
        args.init,
        labels=args.labels,
        seeds=args.seeds,
        config=train_config(args),
        val=args.val,
        plots=args.plots,
        storage_path=args.storage,
    )


def advise(args: argparse.Namespace) -> Result:
    from mtl_ray.studies.advise import advise

    return advise(
        args.data,
        rows=args.rows,
        steps=args.steps,
        track=not args.no_track,
        groups=args.groups,
        max_groups=args.max_groups,
        affinity_steps=args.affinity_steps,
    )


def max_groups_flag(p: argparse.ArgumentParser, when: str) -> None:
    p.add_argument(
        "--max-groups", type=positive_int, metavar="K", help=f"{when}: at most K networks (default: one per task)"
    )


def affinity_steps_flag(p: argparse.ArgumentParser, when: str) -> None:
    p.add_argument(
        "--affinity-steps",
        type=positive_int,
        default=AFFINITY_STEPS,
        metavar="N",
        help=f"{when}: steps of the joint run that measures inter-task affinity (default {AFFINITY_STEPS})",
    )


def no_track_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-track",
        action="store_true",
        help="do not log this result as an MLflow run (default: log it to MLFLOW_TRACKING_URI or sqlite:///mlruns.db)",
    )


def _label_budgets(text: str) -> list[int | str]:
    from mtl_ray.studies.transfer import parse_labels

    return from_api(parse_labels)(text)


def compare_flags(p: argparse.ArgumentParser) -> None:
    """`mtl-ray compare`'s flags: the training flags, the control, seeds, the single-task side, groups."""
    training_flags(p)
    p.add_argument(
        "--control", choices=["shuffle"], help="also retrain the multi-task model with the other tasks' labels shuffled"
    )
    p.add_argument(
        "--focus", metavar="TASK", help="the task the shuffle control keeps (default: the one with the fewest labels)"
    )
    p.add_argument("--plots", metavar="DIR", help="write metrics.png, curves.png and task_weights.png here")
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        help="run each side N times (training seeds seed..seed+N-1) and report mean ± std",
    )
    p.add_argument(
        "--stl-epochs",
        type=positive_int,
        metavar="N",
        help="most epochs a single-task network trains (default: the multi-task run's epochs)",
    )
    p.add_argument(
        "--stl-patience",
        type=positive_int,
        default=STL_PATIENCE,
        metavar="N",
        help=f"a single-task network stops after N epochs without a better validation AUROC and reports its best "
        f"epoch (default {STL_PATIENCE})",
    )
    p.add_argument(
        "--stl-tasks",
        type=task_list,
        metavar="a,b,c",
        help="single-task networks for these tasks only, Δm over them (default: every task; with 100 tasks, a sample)",
    )
    p.add_argument(
        "--groups",
        metavar="a,b|c",
        help="also train this partition of the tasks, one network per group, or 'auto' for the one "
        "`mtl-ray advise --groups` recommends",
    )
    max_groups_flag(p, "with --groups auto")
    affinity_steps_flag(p, "with --groups auto")
    no_track_flag(p)


def add(commands: argparse._SubParsersAction) -> None:
    compare_flags(
        add_command(
            commands,
            "compare",
            "multi-task model vs one single-task network per task, same backbone and epochs",
            compare,
        )
    )
    p = add_command(
        commands,
        "transfer",
        "the transfer-learning curve: each label budget trained from scratch and from a trained model (--init)",
        transfer,
    )
    training_flags(p, init_required=True)
    p.add_argument(
        "--labels",
        type=_label_budgets,
        default="25,50,100,all",
        metavar="25,50,all",
        help="label budgets: that many labeled training rows, picked by a hash of the row id (default 25,50,100,all)",
    )
    p.add_argument("--seeds", type=positive_int, default=1, help="runs per budget and side; mean ± std reported")
    p.add_argument("--plots", metavar="DIR", help="write transfer.png (AUROC against labels, both ways) here")

    p = add_command(
        commands,
        "advise",
        "measure the three conditions for multi-task learning: shared features, data amounts, capacity",
        advise,
    )
    p.add_argument("--data", required=True, metavar="PATH", help="shards (train rows are probed, val rows evaluated)")
    p.add_argument("--rows", type=positive_int, default=1024, help="rows sampled for the probes (default 1024)")
    p.add_argument("--steps", type=positive_int, default=60, help="training steps per probe (default 60)")
    p.add_argument(
        "--groups",
        action="store_true",
        help="also recommend which tasks share a network, from inter-task affinity in one short joint run (TAG)",
    )
    max_groups_flag(p, "with --groups")
    affinity_steps_flag(p, "with --groups")
    no_track_flag(p)
