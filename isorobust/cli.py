"""``isorobust <command> [hydra overrides]``: a thin layer that picks a Hydra app and reports errors.

Every failure the user can fix is one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isorobust.errors import IsorobustError

PACKAGE_DIR = Path(__file__).resolve().parent
# An editable install / source checkout reads ./configs; a wheel carries them inside the package.
_SOURCE_CONFIGS = PACKAGE_DIR.parent / "configs"
CONFIG_DIR = _SOURCE_CONFIGS if _SOURCE_CONFIGS.is_dir() else PACKAGE_DIR / "configs"
GROUPS = ("dataset", "model", "trainer", "reg", "attack", "hierarchy", "experiment", "baseline", "logger", "certify")

USAGE = """usage: isorobust <command> [overrides...]

commands:
  train     train -> evaluate -> attack one configuration (Hydra app; -m for sweeps)
  attack    re-attack a saved run: isorobust attack run=<run dir> [attack=pgd] [eval.epsilons=[...]]
  check     gradient-masking sanity checks of a saved run: isorobust check run=<run dir>
  certify   certified bounds of a saved run: isorobust certify run=<run dir> [certify=ibp|alpha_crown|bab]
            (writes <run dir>/certify/certified.csv, which sweep summaries and reports pick up)
  report    aggregate the runs below a folder: isorobust report outputs/multirun/<date>/<time>
            or several sweeps into one study: isorobust report SWEEP1 SWEEP2 --out docs/results/mnist.md
            or a sensitivity study: isorobust report --sensitivity REFERENCE Q1 Q2 ... --out FILE.md

train and attack take Hydra overrides and --help, --cfg job, -m (multirun), hydra.run.dir=...
"""


def fail(message: str, code: int = 2) -> None:
    print(f"isorobust: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def check_group_overrides(args: list[str]) -> None:
    """Unknown config-group options, caught before Hydra prints a page about its search path."""
    for arg in args:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~")
        if group not in GROUPS or "(" in value or "$" in value or arg.startswith("~"):
            continue
        names = [n.strip() for n in value.strip("[]").split(",") if n.strip() and n.strip() != "null"]
        known = group_options(group)
        for name in names:
            if name not in known:
                fail(f"unknown {group} {name!r} (choose from: {', '.join(known)})")


def check_saved_run(command: str, args: list[str]) -> None:
    """``isorobust certify`` writes beside the run (``<run>/certify``): a wrong ``run=`` must fail before
    Hydra creates that folder inside a path that is not a run."""
    if command != "certify":
        return
    if not any(arg.startswith(("run=", "-")) for arg in args):  # -h, --cfg, -m ... are Hydra's to answer
        fail("isorobust certify needs run=<run dir> (a folder `isorobust train` wrote)")
    for arg in args:
        if arg in ("certify=null", "certify=[]"):
            fail(f"{arg}: isorobust certify needs a method (certify=crown, alpha_crown, bab or ibp)")
        if arg.startswith("run=") and "," not in arg:
            run = Path(arg[len("run="):]).expanduser()
            if not (run / ".hydra" / "config.yaml").is_file():
                fail(f"{run} is not an isorobust run directory (no .hydra/config.yaml)")


OPTUNA = "hydra/sweeper=optuna"


def optuna_arguments(args: list[str]) -> list[str]:
    """``hydra/sweeper=optuna``: the plugin must be installed (else one line with the pip command), and the
    study maximises, since the objective is a robust accuracy: ``hydra.sweeper.direction=maximize`` is
    added unless the command line sets a direction (the plugin's own default is minimize)."""
    if OPTUNA not in args:
        return args
    try:
        import optuna  # noqa: F401
        from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper  # noqa: F401
    except ImportError:
        from isorobust.tracking import install_command

        fail(f"{OPTUNA} needs the Optuna sweeper, which is not installed: {install_command('optuna')}")
    if any(a.startswith("hydra.sweeper.direction=") for a in args):
        return args
    return [*args, "hydra.sweeper.direction=maximize"]


def find_user_error(exc: BaseException | None) -> IsorobustError | None:
    """The IsorobustError behind ``exc`` (hydra.utils.instantiate wraps what a target raises)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, IsorobustError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def hydra_app(config_name: str, job: Callable[[Any, Path], Any]) -> Callable[[], Any]:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def app(cfg: Any) -> Any:
        try:
            return job(cfg, Path(HydraConfig.get().runtime.output_dir))
        except Exception as exc:
            user_error = find_user_error(exc)
            if user_error is None:
                raise
            fail(str(user_error))

    return app


COMMANDS = ("train", "attack", "check", "certify", "report")


def pipeline_job(name: str) -> Callable[[Any, Path], Any]:
    def job(cfg: Any, out_dir: Path) -> Any:
        from isorobust import pipeline  # imported here: torch costs seconds, --help should not

        if name != "train":
            return getattr(pipeline, name)(cfg, out_dir)
        from isorobust.sweeps import objective

        # An optimizing sweeper (hydra/sweeper=optuna) reads the job's return value: the objective,
        # checked before training. Every other run returns its metrics, as before.
        if not objective.optimizing_sweep():
            return pipeline.train(cfg, out_dir)
        objective.check_objective(cfg)
        pipeline.train(cfg, out_dir)
        return objective.job_objective(cfg, out_dir)

    return job


def report(args: list[str]) -> None:
    """``isorobust report DIR``: not a Hydra app, it reads run directories that Hydra apps wrote."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="isorobust report",
        description="Aggregate every run directory below DIR (recursively) over seeds and write "
                    "DIR/summary.csv, summary.md, robustness.png and robustness.pdf. Incomplete runs "
                    "(no metrics.json or robustness.csv) are listed and ignored. With --out, one study "
                    "report over several sweep directories (the first is the main sweep; its β=0 runs "
                    "are the reference) goes to FILE.md, its figures and CSV beside it.",
    )
    parser.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                        help="a sweep directory, or any folder holding run directories")
    parser.add_argument("--out", type=Path, metavar="FILE.md", help="write a study report over all DIRs here")
    parser.add_argument("--sensitivity", action="store_true",
                        help="with --out: a sensitivity report; the first DIR is the reference sweep (β=0), "
                             "every other DIR one question, compared with β=0 at matched settings")
    parser.error = fail  # type: ignore[method-assign]  # one line, like every other error
    options = parser.parse_args(args)
    from isorobust.sweeps.report import write_report
    from isorobust.sweeps.study import write_study

    if options.sensitivity and options.out is None:
        fail("--sensitivity needs --out FILE.md")
    if options.out is None and len(options.dirs) > 1:
        fail("several directories need --out FILE.md (one study report over all of them)")
    try:
        if options.out is None:
            result = write_report(options.dirs[0])
        elif options.sensitivity:
            from isorobust.sweeps.sensitivity import write_sensitivity

            result = write_sensitivity(options.dirs, options.out)
        else:
            result = write_study(options.dirs, options.out)
    except IsorobustError as exc:
        fail(str(exc))
    print(result.markdown, end="", flush=True)
    print("wrote " + ", ".join(str(p) for p in result.files), flush=True)


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so temporary files are removed and nothing half-written stays.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(f"unknown command {command!r} (choose from: {', '.join(COMMANDS)})")
    if command == "report":
        return report(rest)
    from isorobust.resolvers import register_resolvers  # for --cfg job --resolve

    register_resolvers()
    check_group_overrides(rest)
    check_saved_run(command, rest)
    rest = optuna_arguments(rest)
    signal.signal(signal.SIGTERM, _terminate)
    sys.argv = [f"isorobust-{command}", *rest]
    try:
        hydra_app(command, pipeline_job(command))()
    except KeyboardInterrupt:
        fail("interrupted; results of the unfinished job were not written", code=130)


if __name__ == "__main__":
    main()
