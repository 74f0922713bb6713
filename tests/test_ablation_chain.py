"""The Abl0.1 -> Abl0.2 -> Abl1 chain: order, refusals before anything starts, skip and resume on re-run.

Most tests use a fake runner (it writes what a finished run leaves behind); one runs the real chain on the tiny
model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_inprocess

from nli_cot.orchestration.ablations import (
    DEFAULT_CHAIN,
    ChainError,
    compose_run_name,
    load_chain,
    main,
    run_chain,
)

TINY = ["model=tiny_mistral", "dataset=sample", "logger=csv", "trainer.max_steps=2", "trainer.save_steps=2",
        "trainer.eval_every_n_steps=1", "trainer.per_device_batch_size=2", "trainer.grad_accum=1",
        "trainer.eval_batch_size=2", "trainer.log_every_n_steps=1", "dataset.max_train_examples=8",
        "dataset.max_eval_examples=2"]


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    return {s: compose_run_name(s, TINY) for s in ("abl0_1", "abl0_2", "abl1")}


def finish_run(run_dir: Path, overrides: list[str], step: int = 2, status: str = "finished",
               resumable: bool = False) -> None:
    """What a run of nli_cot.train leaves: a complete final checkpoint and status.json."""
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json"):
        (folder / name).write_text("{}")
    if resumable:
        (folder / "training_state.ckpt").write_text("")
    (run_dir / "status.json").write_text(json.dumps({"status": status, "overrides": overrides}))


class FakeRunner:
    def __init__(self, out: Path, names: dict[str, str], fail: str | None = None):
        self.out, self.names, self.fail = out, names, fail
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str]) -> int:
        self.calls.append(cmd)
        assert cmd[1:3] == ["-m", "nli_cot.orchestration.run_job"]
        task = spec_of(cmd)["overrides"]  # what training records in status.json
        stage = next(a.split("=", 1)[1] for a in task if a.startswith("+experiment="))
        if stage == self.fail:
            return 1
        finish_run(self.out / self.names[stage], task)
        return 0


def spec_of(cmd: list[str]) -> dict:
    """The job's spec (run_job's argument): stage, overrides, the composed training config."""
    return yaml.safe_load(Path(cmd[-1]).read_text())


def stage_of(cmd: list[str]) -> str:
    return spec_of(cmd)["config"]["experiment"]


def test_chain_runs_in_dependency_order_then_skips(tmp_path: Path, names: dict[str, str]) -> None:
    runner = FakeRunner(tmp_path, names)
    stages = run_chain(load_chain(DEFAULT_CHAIN), tmp_path, TINY, runner=runner)
    assert [stage_of(c) for c in runner.calls] == ["abl0_1", "abl0_2", "abl1"]
    assert [s.action for s in stages] == ["done"] * 3
    abl0_2 = spec_of(runner.calls[1])  # a composed, validated training config: the job's spec
    assert runner.calls[1][-1] == str(tmp_path / names["abl0_2"] / "job.yaml") and abl0_2["stage"] == "train"
    assert f"init_adapter_from={tmp_path / names['abl0_1'] / 'checkpoint-2'}" in abl0_2["overrides"]
    assert abl0_2["config"]["init_adapter_from"] == str(tmp_path / names["abl0_1"] / "checkpoint-2")
    assert abl0_2["config"]["output_dir"] == str(tmp_path) and abl0_2["config"]["run_name"] == names["abl0_2"]
    assert abl0_2["config"]["trainer"]["max_steps"] == 2  # the chain's overrides, composed over the preset
    assert spec_of(runner.calls[2])["config"]["init_adapter_from"] is None
    again = FakeRunner(tmp_path, names)
    stages = run_chain(load_chain(DEFAULT_CHAIN), tmp_path, TINY, runner=again)
    assert again.calls == [] and [s.action for s in stages] == ["skip"] * 3


def test_refuses_when_abl0_1_checkpoint_is_missing(tmp_path: Path, names: dict[str, str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--output-dir", str(tmp_path), "--stages", "abl0_2", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("error: abl0_2 needs abl0_1's final checkpoint") and "holds no checkpoint" in err
    assert list(tmp_path.iterdir()) == []  # nothing started


def test_refuses_a_half_written_final_checkpoint(tmp_path: Path, names: dict[str, str]) -> None:
    abl01 = tmp_path / names["abl0_1"]
    finish_run(abl01, ["+experiment=abl0_1", *TINY], step=4)
    half = abl01 / "checkpoint-6"  # newer than the complete one: it is the final one, and it is torn
    half.mkdir()
    (half / "adapter_config.json").write_text("{}")
    runner = FakeRunner(tmp_path, names)
    with pytest.raises(ChainError, match=r"checkpoint-6 is half-written \(missing adapter_model.safetensors, "
                                         r"trainer_state.json\)"):
        run_chain(load_chain(DEFAULT_CHAIN), tmp_path, TINY, only=["abl0_2", "abl1"], runner=runner)
    assert runner.calls == []  # refused before abl1 started too


def test_refuses_an_unfinished_abl0_1(tmp_path: Path, names: dict[str, str]) -> None:
    finish_run(tmp_path / names["abl0_1"], ["+experiment=abl0_1", *TINY], status="running")
    with pytest.raises(ChainError, match="says 'running': its last checkpoint is not final"):
        run_chain(load_chain(DEFAULT_CHAIN), tmp_path, TINY, only=["abl0_2"], runner=FakeRunner(tmp_path, names))


def test_a_failed_stage_stops_the_chain(tmp_path: Path, names: dict[str, str]) -> None:
    runner = FakeRunner(tmp_path, names, fail="abl0_1")
    with pytest.raises(ChainError, match="abl0_1 did not finish .* later stages not started"):
        run_chain(load_chain(DEFAULT_CHAIN), tmp_path, TINY, runner=runner)
    assert [stage_of(c) for c in runner.calls] == ["abl0_1"]


def test_interrupted_stage_resumes_from_its_own_checkpoint(tmp_path: Path, names: dict[str, str]) -> None:
    finish_run(tmp_path / names["abl0_1"], ["+experiment=abl0_1", *TINY])
    abl02_overrides = ["+experiment=abl0_2", *TINY, "init_adapter_from=/somewhere/checkpoint-2"]
    finish_run(tmp_path / names["abl0_2"], abl02_overrides, status="running", resumable=True)
    runner = FakeRunner(tmp_path, names)
    run_chain(load_chain(DEFAULT_CHAIN), tmp_path, TINY, only=["abl0_2"], runner=runner)
    (cmd,) = runner.calls
    assert "resume=auto" in spec_of(cmd)["overrides"] and "init_adapter_from=null" in spec_of(cmd)["overrides"]


@pytest.mark.parametrize("only", [["abl0_1"], ["abl0_2"]])
def test_refuses_a_run_dir_holding_another_run(tmp_path: Path, names: dict[str, str], only: list[str]) -> None:
    # abl0_1 trained with other settings: neither re-run over it nor warm-start abl0_2 from it.
    finish_run(tmp_path / names["abl0_1"], ["+experiment=abl0_1", *TINY, "lora.r=4"])
    with pytest.raises(ChainError, match="with other overrides .* choose another --output-dir"):
        run_chain(load_chain(DEFAULT_CHAIN), tmp_path, TINY, only=only, runner=FakeRunner(tmp_path, names))


def test_user_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--output-dir", str(tmp_path), "--stages", "abl9", *TINY]) == 2
    assert "unknown stage 'abl9'" in capsys.readouterr().err
    assert main(["--output-dir", str(tmp_path), "lora.r=abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lora.r=abc" in err and "could not be converted to Integer" in err


@pytest.mark.slow
def test_real_chain_warm_starts_abl0_2_from_abl0_1(tmp_path: Path, names: dict[str, str]) -> None:
    args = ["--output-dir", str(tmp_path), "--stages", "abl0_1,abl0_2", *TINY]
    proc = run_inprocess("nli_cot.ablations", args)  # its stages are real run_job processes (training's run(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    abl01, abl02 = tmp_path / names["abl0_1"], tmp_path / names["abl0_2"]
    for run in (abl01, abl02):
        assert json.loads((run / "status.json").read_text())["status"] == "finished"
    recorded = json.loads((abl02 / "status.json").read_text())["overrides"]
    assert f"init_adapter_from={abl01 / 'checkpoint-2'}" in recorded
    assert f"warm start: adapter weights from {abl01 / 'checkpoint-2'}" in (tmp_path / "train.log").read_text()
    assert (abl02 / "job.yaml").is_file()  # the job's spec: the composed config it ran
    again = run_inprocess("nli_cot.ablations", args)
    assert again.returncode == 0 and again.stderr.count("already finished") == 2
