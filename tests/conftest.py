import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = os.environ.get("ISOROBUST_DATA")
HAS_MNIST = bool(DATA_ROOT) and (Path(DATA_ROOT) / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()

# CI=true (what CI services set; .ci/run tests it the same way): a missing MNIST is a failure there.
IN_CI = os.environ.get("CI", "").lower() == "true"
MISSING_MNIST = "real MNIST not found: set ISOROBUST_DATA to a folder with MNIST/raw (.ci/run does)"

# Tests that need real MNIST: skipped without it, except under CI, where they fail (see the hook below).
requires_mnist = pytest.mark.requires_mnist
# Tests that need optional packages (the extras, which `make test` installs): requires_extras("mlflow").
# Skipped where one is missing, except under CI, where they fail, like requires_mnist.
requires_extras = pytest.mark.requires_extras
EXTRAS_INSTALL = "`make setup` installs the extras mlflow, tensorboard and optuna (see Makefile)"


def missing_modules(*modules: str) -> list[str]:
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def _missing_extras(item) -> list[str]:
    marker = item.get_closest_marker("requires_extras")
    return missing_modules(*marker.args) if marker is not None else []


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_mnist: needs real MNIST (ISOROBUST_DATA); skipped without it, "
                                       "failed without it under CI=true")
    config.addinivalue_line("markers", "requires_extras(*modules): needs optional packages; skipped without "
                                       "them, failed without them under CI=true")


def pytest_collection_modifyitems(config, items):
    if IN_CI:
        return
    for item in items:
        if not HAS_MNIST and item.get_closest_marker("requires_mnist") is not None:
            item.add_marker(pytest.mark.skip(reason=MISSING_MNIST))
        elif missing := _missing_extras(item):
            item.add_marker(pytest.mark.skip(reason=f"{', '.join(missing)} not installed: {EXTRAS_INSTALL}"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Under CI: fail before any fixture is set up (a module fixture may train on MNIST).
    if IN_CI and not HAS_MNIST and item.get_closest_marker("requires_mnist") is not None:
        pytest.fail(f"CI=true but {MISSING_MNIST}", pytrace=False)
    if IN_CI and (missing := _missing_extras(item)):
        pytest.fail(f"CI=true but {', '.join(missing)} not installed: {EXTRAS_INSTALL}", pytrace=False)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``isorobust`` as a user would, in ``cwd``."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "isorobust", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def finished_run(tmp_path_factory, name: str, *args: str, sweep: bool = False,
                 cli=None) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """``isorobust train [-m] ARGS`` into ``<fresh folder>/run`` (``/sweep`` with ``sweep=True``), run from
    that folder; fails the test with stderr's tail unless it exits 0. (work, run or sweep dir, process)."""
    work = tmp_path_factory.mktemp(name)
    out = work / ("sweep" if sweep else "run")
    where = f"hydra.sweep.dir={out}" if sweep else f"hydra.run.dir={out}"
    proc = (cli or run_cli)("train", *(["-m"] if sweep else []), *args, where, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, out, proc


def brightest_row_data(n: int = 300):
    """Images of 1×4×5 pixels whose class is the brightest row: 4 classes (targeted DLR needs >= 4)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 5, generator=g)
    return x, x.sum(dim=3).squeeze(1).argmax(dim=1)


def fit_tiny_mlp(seed: int, x, y):
    """A small tanh MLP fitted full-batch to (x, y): near 100% clean accuracy on brightest_row_data."""
    import torch
    import torch.nn.functional as F

    from isorobust.models import MLP

    torch.manual_seed(seed)
    model = MLP(in_features=x[0].numel(), width=32, depth=2, num_classes=int(y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(600):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def run_cli_without(modules: list[str], *args: str, cwd: Path, env: dict | None = None,
                    timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``isorobust`` with ``modules`` unimportable (as if their package were not installed)."""
    code = ("import sys\n"
            f"for name in {modules!r}:\n"
            "    sys.modules[name] = None  # import raises ImportError, as for a package that is absent\n"
            "from isorobust.cli import main\n"
            f"main({list(args)!r})\n")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny():
    """The attack tests' target: a tanh MLP fitted to 400 brightest-row images, its parameters frozen (attacks
    need input gradients only); with those images and labels."""
    x, y = brightest_row_data(400)
    model = fit_tiny_mlp(0, x, y).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x, y
