"""``isorobust <command> [hydra overrides]``: a thin layer that picks a Hydra app and reports errors.

Every failure the user can fix is one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isorobust.errors import Abort, IsorobustError, find_user_error

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
            (writes <run dir>/certify/certified.csv, which sweep summaries and reports pick up; the same
            images are attacked first, attack=apgd by default, for the upper bound beside the lower one)
            attack, check and certify also take a model trained elsewhere instead of run=:
            checkpoint=<state_dict file> model._target_=<module.factory> dataset=<name>
  report    aggregate the runs below a folder: isorobust report outputs/multirun/<date>/<time>
            or several sweeps into one study: isorobust report SWEEP1 SWEEP2 --out docs/results/mnist.md
            or a sensitivity study: isorobust report --sensitivity REFERENCE Q1 Q2 ... --out FILE.md
  figure    figures across runs: isorobust figure torus RUN_OR_SWEEP... --out FILE.png

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


def command_defaults(command: str) -> dict[str, Any]:
    """The config groups chosen in ``configs/<command>.yaml``'s defaults list (group -> option or None)."""
    import yaml

    chosen: dict[str, Any] = {}
    for entry in yaml.safe_load((CONFIG_DIR / f"{command}.yaml").read_text()).get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                chosen[key.lstrip("+~").split("@")[0]] = value
    return chosen


def null_group_overrides(command: str, args: list[str]) -> list[str]:
    """``GROUP=null`` as Hydra takes it: deleting the command's default for that group (``~GROUP``; a list
    default emptied, ``GROUP=[]``), or nothing where the default is already none (Hydra itself rejects a null
    group override with a traceback)."""
    defaults = command_defaults(command)
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and value.strip() == "null" and key in GROUPS and key in defaults:
            if isinstance(defaults[key], list):
                out.append(f"{key}=[]")  # a list default cannot be deleted, only emptied
            elif defaults[key] is not None:
                out.append(f"~{key}")
            continue
        out.append(arg)
    return out


def check_launcher_overrides(args: list[str]) -> None:
    """Launcher settings Hydra would only reject with a traceback from inside the launcher."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") in ("hydra.launcher.n_jobs", "hydra.launcher.cpus_per_task", "hydra.launcher.tasks_per_node"):
            try:
                number = int(value)
            except ValueError:
                number = None
            name = key.lstrip("+")
            if name.endswith("n_jobs") and (number is None or number == 0):
                fail(f"{arg}: hydra.launcher.n_jobs must be a non-zero integer (N parallel jobs; -1 = one per core, "
                     "-2 = all cores but one)")
            if not name.endswith("n_jobs") and (number is None or number < 1):
                fail(f"{arg}: {name} must be an integer >= 1")


def check_saved_run(command: str, args: list[str]) -> None:
    """``attack``, ``check`` and ``certify`` evaluate a run directory or an external model; a wrong
    ``run=`` must fail before Hydra creates ``<run>/certify`` inside a path that is not a run."""
    if command not in ("attack", "check", "certify"):
        return
    if not any(arg.startswith(("run=", "checkpoint=", "-")) for arg in args):  # -h, --cfg, -m: Hydra's to answer
        fail(f"isorobust {command} needs run=<run dir> (a folder `isorobust train` wrote), or a model trained "
             "elsewhere: checkpoint=<state_dict file> model._target_=<module.factory> dataset=<name>")
    for arg in args:
        if command == "certify" and arg in ("certify=null", "certify=[]"):
            fail(f"{arg}: isorobust certify needs a method (certify=crown, alpha_crown, bab or ibp)")
        if arg.startswith("run=") and "," not in arg:
            run = Path(arg[len("run="):]).expanduser()
            if not run.is_dir():
                fail(f"{run} is not an isorobust run directory (not found)")
            if not (run / ".hydra" / "config.yaml").is_file():
                fail(f"{run} is not an isorobust run directory (no .hydra/config.yaml)")


OPTUNA = "hydra/sweeper=optuna"


def check_optuna_installed(args: list[str]) -> None:
    """``hydra/sweeper=optuna_maximize`` (configs/hydra/sweeper/: the plugin's sweeper, set to maximise the
    objective, a robust accuracy) or the plugin's own ``hydra/sweeper=optuna`` (its default direction,
    minimize, stops the study before training; objective.check_objective) need the plugin: else one line
    with the pip command."""
    chosen = next((arg for arg in args if arg.startswith(OPTUNA)), None)
    if chosen is None:
        return
    try:
        import optuna  # noqa: F401
        from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper  # noqa: F401
    except ImportError:
        from isorobust.tracking import install_command

        fail(f"{chosen} needs the Optuna sweeper, which is not installed: {install_command('optuna')}")


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


COMMANDS = ("train", "attack", "check", "certify", "report", "figure")


def command_job(name: str) -> Callable[[Any, Path], Any]:
    def job(cfg: Any, out_dir: Path) -> Any:
        # imported here: torch costs seconds, --help should not
        if name != "train":
            from isorobust.jobs import saved

            result = getattr(saved, name)(cfg, out_dir)
        else:
            from isorobust.jobs.train import train
            from isorobust.sweeps import objective

            # An optimizing sweeper (hydra/sweeper=optuna_maximize) reads the job's return value: the
            # objective, checked before training. Every other run returns its metrics.
            optimizing = objective.optimizing_sweep()
            if optimizing:
                objective.check_objective(cfg)
            result = train(cfg, out_dir)
            if optimizing:
                result = objective.job_objective(cfg, out_dir)
        wrote(out_dir)
        return result

    return job


def wrote(folder: Path, files: list[Path] | None = None) -> None:
    from isorobust.rundir import results_line

    print(results_line(folder, files), flush=True)


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
    from isorobust.reports.study import write_study
    from isorobust.reports.sweep import write_report

    if options.sensitivity and options.out is None:
        fail("--sensitivity needs --out FILE.md")
    if options.out is None and len(options.dirs) > 1:
        fail("several directories need --out FILE.md (one study report over all of them)")
    try:
        if options.out is None:
            result = write_report(options.dirs[0])
        elif options.sensitivity:
            from isorobust.reports.sensitivity import write_sensitivity

            result = write_sensitivity(options.dirs, options.out)
        else:
            result = write_study(options.dirs, options.out)
    except IsorobustError as exc:
        fail(str(exc))
    print(result.markdown, end="", flush=True)
    wrote(result.files[0].parent, result.files)


def figure(args: list[str]) -> None:
    """``isorobust figure torus RUN_OR_SWEEP... --out FILE.png``: not a Hydra app, it reads run directories."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="isorobust figure",
        description="Figures across runs. torus: put torus runs side by side: each run's local distortion "
                    "K̂·d_z/d_x on the (u, v) square, class boundaries on top, one colour scale (e.g. β = 0 "
                    "beside β > 0).",
    )
    parser.add_argument("kind", choices=["torus"], help="which figure")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a torus run directory, or a sweep directory "
                        "(its runs in the order of β)")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.png")
    parser.add_argument("--layer", type=int, default=None,
                        help="hidden layer (default: the one the isometric term acts on, -1 = the last)")
    parser.add_argument("--limit", type=float, default=4.0, help="colour scale from 1/LIMIT to LIMIT (default 4)")
    parser.error = fail  # type: ignore[method-assign]  # one line, like every other error
    options = parser.parse_args(args)
    from isorobust.jobs.figure import side_by_side

    try:
        out = side_by_side(options.runs, options.out, options.layer, options.limit)
    except IsorobustError as exc:
        fail(str(exc))
    wrote(out.parent, [out])


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
    if command == "figure":
        return figure(rest)
    from isorobust.sweeps.resolvers import register_resolvers  # for --cfg job --resolve

    register_resolvers()
    check_group_overrides(rest)
    check_launcher_overrides(rest)
    check_saved_run(command, rest)
    check_optuna_installed(rest)
    rest = null_group_overrides(command, rest)
    signal.signal(signal.SIGTERM, _terminate)
    sys.argv = [f"isorobust-{command}", *rest]
    try:
        hydra_app(command, command_job(command))()
    except Abort as abort:
        fail(str(abort.error))
    except KeyboardInterrupt:
        fail("interrupted; results of the unfinished job were not written", code=130)


if __name__ == "__main__":
    main()
