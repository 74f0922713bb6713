"""Shared test set-up: offline everywhere, paths to the repo, its configs and the shared data; `python -m` runs in a
fresh interpreter (`run_module`, for what tests the process boundary) or in this one (`run_inprocess`, the same
`__main__` block without the 10-18 s of imports); one tiny trained run shared by the whole session (`trained_run`)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import shutil
import signal
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest

# Under pytest-xdist (`make test` runs `-n auto`) each worker gets an equal share of the cores for torch's intra-op
# threads, set before torch is imported; the processes a test starts inherit it. Two workers each on 2 threads
# would oversubscribe 2 cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if os.environ.get("PYTEST_XDIST_WORKER") and _WORKERS > 1:
    _THREADS = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _THREADS)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared NLI data not found at {SHARED_DATA} (it sits beside the checkout)")
    return SHARED_DATA


def compose(overrides: list[str] | None = None, config_name: str = "config"):
    """The composed (unresolved) config, exactly as `python -m nli_cot.<app>` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import nli_cot.core.config  # noqa: F401  (registers the schemas)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


@pytest.fixture(scope="session")
def tiny_model_cfg():
    return compose(["model=tiny_mistral"]).model


@pytest.fixture(scope="session")
def mistral_tokenizer(tiny_model_cfg):
    from nli_cot.models.modeling import load_tokenizer

    return load_tokenizer(tiny_model_cfg)


def run_module(module: str, args: list[str], cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` the way a user would, capturing its output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_inprocess(module: str, args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` inside this interpreter: the module's own `__main__` block (its preflight, the
    Hydra app, its `sys.exit`) runs via runpy with `sys.argv` set, in ``cwd``; its exit status, stdout and stderr
    come back as `run_module`'s do. An uncaught exception is exit status 1 with its traceback on stderr, as Python
    reports it. For end-to-end runs whose process boundary is not what the test proves (that stays `run_module`)."""
    import torch
    from hydra.core.config_store import ConfigStore

    def tree(node):  # the ConfigStore's nested dicts, copied; its leaves (ConfigNodes) kept as they are
        return {k: tree(v) if isinstance(v, dict) else v for k, v in node.items()}

    def put_back(saved_node, node):  # what was registered before wins; what the run added (Hydra's plugins) stays
        for k, v in saved_node.items():
            if isinstance(v, dict) and isinstance(node.get(k), dict):
                put_back(v, node[k])
            else:
                node[k] = v

    # runpy runs the module as `__main__`: the schemas it registers are classes of that namespace, which is gone
    # once the run ends (a fresh interpreter's registrations die with it); the store gets its own back afterwards.
    from nli_cot.core.config import SCHEMAS

    store = ConfigStore.instance()
    saved_store = tree(store.repo)
    saved_schemas = dict(SCHEMAS)  # register_schema's own record: `__main__` classes must not outlive the run
    saved = {"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[:], "threads": torch.get_num_threads(),
             "sigterm": signal.getsignal(signal.SIGTERM)}
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    try:
        for handler in saved_handlers:  # a fresh interpreter's logging: no handler yet (basicConfig must work)
            root.removeHandler(handler)
        os.chdir(cwd)
        sys.argv = [module, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # runpy warns when the module it runs as `__main__` is already imported, as it is here once a test
            # imported it (never in a fresh interpreter): not the run's own output.
            warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package",
                                    category=RuntimeWarning)
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as exit_:
                if exit_.code is None or isinstance(exit_.code, int):
                    code = exit_.code or 0
                else:  # sys.exit("message"): printed on stderr, status 1
                    print(exit_.code, file=sys.stderr)
                    code = 1
            except Exception:  # what an interpreter prints before it exits with 1
                traceback.print_exc()
                code = 1
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        put_back(saved_store, store.repo)
        SCHEMAS.clear()  # exactly as before: a schema first registered by the run (as `__main__`) must not stay,
        SCHEMAS.update(saved_schemas)  # or importing its module later is "registered twice"
        for handler in root.handlers[:]:  # the run's handlers (its train.log) must not outlive it
            root.removeHandler(handler)
            if handler not in saved_handlers:
                handler.close()
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_level)
        os.chdir(saved["cwd"])
        sys.argv = saved["argv"]
        os.environ.clear()
        os.environ.update(saved["env"])
        torch.set_num_threads(saved["threads"])
        signal.signal(signal.SIGTERM, saved["sigterm"])  # e.g. nli_cot.demo's __main__ installs its own
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code, out.getvalue(), err.getvalue())


# The run `trained_run` trains once per session (the tiny random Mistral, the real recipe through `python -m
# nli_cot.train`'s own `__main__`): 6 steps of abl1's default path, CSV logs, a checkpoint every 2 steps, the newest
# two and the best kept. Tests that need "some trained adapter" read it and never write into it (copy it first).
TRAINED_RUN = "Mistral_Thinking_Abl1"
TRAIN_ARGS = [
    "+experiment=abl1", "model=tiny_mistral", "dataset=sample", "logger=csv",
    "trainer.per_device_batch_size=4", "trainer.eval_batch_size=16", "trainer.log_every_n_steps=1",
    "trainer.save_steps=2", "trainer.eval_every_n_steps=2", "optimizer.lr=5e-3", "trainer.early_stopping_patience=null",
]
TRAINED_STEPS = ["trainer.max_steps=6", "trainer.save_total_limit=2"]


def build_once(tmp_path_factory, name: str, build) -> Path:
    """A folder ``build(folder)`` fills once per test session, also across pytest-xdist workers: the first worker to
    ask builds it under a file lock in the session's shared temporary root, the others wait for it and reuse it.
    Its users read it and never write into it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # every worker's basetemp sits in this one session folder
    out, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The hydra.run.dir of one finished tiny training run (its run folder is ``<dir>/Mistral_Thinking_Abl1``)."""

    def train(out: Path) -> None:
        proc = run_inprocess("nli_cot.train", [*TRAIN_ARGS, *TRAINED_STEPS, f"hydra.run.dir={out}"])
        assert proc.returncode == 0, proc.stderr[-3000:]

    return build_once(tmp_path_factory, "trained_run", train)


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a shared run dir, for tests that write into it."""
    shutil.copytree(run, dest)
    return dest


# Under pytest-xdist (`--dist load --maxschedchunk 1`: each worker holds its running test and one more, and takes
# the next test of this order when it finishes one) the longest tests start first, so the two acceptance runs
# overlap with the rest rather than end the session: the short demo on the first worker, the study on the second
# (each worker's first two tests are the first four of the order, so a quick test sits after each acceptance run),
# then the other slow ones, the first user of each shared fixture (`build_once`) before any second user, so two
# workers seldom wait for the same build. Without xdist the collection order stays as it is.
LONGEST_FIRST = [
    "tests/test_demo.py::test_short_demo_learns",
    "tests/test_study.py::test_study_runs_every_condition_resumes_and_reports",
]
SHARED_FIXTURES = ("trained_run", "exported", "runs")


def pytest_collection_modifyitems(config, items) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    first = [next((i for i in items if i.nodeid.startswith(p)), None) for p in LONGEST_FIRST]
    first = [i for i in first if i is not None]
    slow, quick, users = [], [], {}
    for item in items:
        if item in first:
            continue
        if not item.get_closest_marker("slow") and not item.get_closest_marker("acceptance"):
            quick.append(item)
            continue
        fixtures = [f for f in SHARED_FIXTURES if f in getattr(item, "fixturenames", ())]
        nth = max((users.get(f, 0) for f in fixtures), default=0)
        for f in fixtures:
            users[f] = users.get(f, 0) + 1
        slow.append((nth, len(slow), item))
    ordered = []
    for item in first:  # each acceptance run, then a quick test (the one its worker holds meanwhile)
        ordered.append(item)
        if quick:
            ordered.append(quick.pop(0))
    items[:] = ordered + [i for _, _, i in sorted(slow, key=lambda t: t[:2])] + quick
