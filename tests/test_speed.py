"""Speed: the bench summary (experiments/bench_train.py speed) pairs each repeat with the card run of the
same repeat index, carries their spread and adds the inference modes; the CUDA memory budget predict and training
apply before a model loads."""

from __future__ import annotations

import importlib.util
import sys

from conftest import REPO


def _script(name: str, path: str):
    """Load an experiments/ script (not a package module) by its path."""
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod


def _bench_train():
    return _script("bench_train", "experiments/bench_train.py")


def _run(variant: str, rep: int, tok: float, step_s: float, reserved: float) -> dict:
    return {"stage": "train", "status": "ok", "variant": variant, "repeat": rep, "median_step_s": step_s,
            "real_tok_per_step": tok * step_s, "real_tok_per_s": tok, "mem": {"max_reserved_GiB": reserved},
            "probe_loss": 11.0}


def test_ratios_pair_repeats_and_keep_their_spread() -> None:
    bt = _bench_train()
    recs = [{"stage": "env", "gpu": "GPU"}]
    for rep, (card, ours) in enumerate([(5000, 15000), (4000, 14000), (6000, 15000)]):
        recs += [_run("card", rep, card, 2.0, 8.0), _run("abl0_1_default", rep, ours, 1.0, 8.2)]
    profiled = _run("abl0_1_default", 0, 99000, 1.0, 8.2)  # a prof: run of repeat 0 is not a repeat
    out = bt.speed_summary(recs + [{**profiled, "profile": {"top_device": []}}], commit="abc")
    c = out["configs"]["abl0_1_default"]
    assert c["card"] == "card" and c["repeats"] == 3 and out["commit"] == "abc"
    assert c["ratio_whole_run"] == {"median": 3.0, "min": 2.5, "max": 3.5, "n": 3}
    assert abs(c["reserved_vs_card"] - 8.2 / 8.0) < 1e-9 and c["probe_loss_rel_diff"] == 0.0


def test_a_run_on_the_second_stack_is_kept_apart_and_paired_with_the_card_of_the_same_repeat() -> None:
    bt = _bench_train()
    recs = [{"stage": "env", "gpu": "GPU"}]
    for rep in range(2):
        recs += [_run("card", rep, 5000, 2.0, 8.0), _run("abl0_1_default", rep, 9000, 1.0, 8.2),
                 _run("abl0_1_default+x", rep, 10000, 1.0, 8.1)]
    out = bt.speed_summary(recs)["configs"]
    assert out["abl0_1_default"]["ratio_whole_run"]["median"] == 1.8
    assert out["abl0_1_default+x"]["card"] == "card" and out["abl0_1_default+x"]["ratio_whole_run"]["median"] == 2.0


def test_the_report_compares_each_run_with_its_own_card_configuration_and_repeat(tmp_path) -> None:
    """A merged report of Abl0.1 and Abl1 runs: an Abl1 row's ratio is to card_abl1 of its repeat, not to the
    first card run in the file."""
    import json
    import types

    bt = _bench_train()
    recs = [{"stage": "env", "gpu": "GPU"}]
    for rep, (card, card1) in enumerate([(6000, 4000), (5000, 5000)]):
        recs += [{**_run("card", rep, card, 2.0, 8.0), "side": "baseline"},
                 {**_run("abl0_1_default", rep, 12000, 1.0, 8.2), "side": "nli_cot"},
                 {**_run("card_abl1", rep, card1, 1.0, 27.0), "side": "baseline"},
                 {**_run("abl1_default", rep, 16000, 0.3, 29.0), "side": "nli_cot"}]
    results = tmp_path / "train.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in recs))
    bt.cmd_report(types.SimpleNamespace(results=str(results), out=str(tmp_path / "rep")))
    rows = [ln.split(" | ") for ln in (tmp_path / "rep.md").read_text().splitlines() if ln.startswith("| nli_cot")]
    assert [r[3] for r in rows] == ["2.00", "4.00", "2.40", "3.20"]


def test_slim_wheel_keeps_only_the_named_native_library_and_its_record_lines(tmp_path) -> None:
    import zipfile

    sw = _script("slim_wheel", "experiments/device/slim_wheel.py")
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    names = ["pkg/__init__.py", "pkg/libpkg_cpu.so", "pkg/libpkg_cuda118.so", "pkg/libpkg_cuda130.so"]
    with zipfile.ZipFile(wheel, "w") as z:
        for n in names:
            z.writestr(n, b"x" * 10)
        z.writestr("pkg-1.0.dist-info/RECORD", "".join(f"{n},sha256=a,10\n" for n in names))
    assert sw.main([str(wheel), "--keep", "cuda130", "--out", str(tmp_path / "out")]) == 0
    with zipfile.ZipFile(tmp_path / "out" / wheel.name) as z:
        kept = set(z.namelist())
        record = z.read("pkg-1.0.dist-info/RECORD").decode()
    assert "pkg/libpkg_cuda118.so" not in kept and "pkg/libpkg_cuda118.so" not in record
    assert {"pkg/__init__.py", "pkg/libpkg_cpu.so", "pkg/libpkg_cuda130.so"} <= kept
    assert sw.main([str(wheel), "--keep", "cuda999", "--out", str(tmp_path / "o2")]) == 2  # nothing native left


def test_inference_modes_carry_ratio_and_budget() -> None:
    bt = _bench_train()
    recs = [
        {"stage": "infer", "status": "ok", "mode": "baseline", "examples_per_s": 2.0, "mem": {"max_reserved_GiB": 9}},
        {"stage": "infer", "status": "ok", "mode": "nli_q4", "examples_per_s": 25.0, "batch": 512,
         "memory_budget": {"alloc_conf": "expandable_segments:True", "cap_gib": 40},
         "mem": {"max_alloc_GiB": 32.0, "max_reserved_GiB": 36.0}},
        {"stage": "infer", "status": "oom", "mode": "nli_bf16"},
    ]
    out = bt.infer_summary(recs)
    assert set(out) == {"baseline", "nli_q4@budget"}
    assert out["nli_q4@budget"]["ratio_to_card"] == 12.5 and out["nli_q4@budget"]["max_reserved_GiB"] == 36.0


def test_the_cuda_memory_budget_sets_the_allocator_and_caps_the_process(monkeypatch) -> None:
    """predict's (and training's) budget: the allocator setting unless the environment has one, and a cap as a
    fraction of the card; without CUDA nothing is touched."""
    import types

    import torch

    from nli_cot.models import modeling

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert modeling.configure_cuda_memory("expandable_segments:True", 40) == {"alloc_conf": None, "cap_gib": None}

    calls: dict = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(modeling, "_local_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", lambda s: calls.setdefault("alloc", s),
                        raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.setdefault("cap", (f, d)))
    applied = modeling.configure_cuda_memory("expandable_segments:True", 40)
    assert applied == {"alloc_conf": "expandable_segments:True", "cap_gib": 40}
    assert calls == {"alloc": "expandable_segments:True", "cap": (0.5, 0)}
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:native")
    calls.clear()
    assert modeling.configure_cuda_memory("expandable_segments:True")["alloc_conf"] == "backend:native"
    assert calls == {}


def test_every_product_variant_is_paired_with_the_card_at_its_own_batch() -> None:
    """Each nli_cot variant of the bench has a card configuration to be divided by: Abl0.1's variants by the card at
    Abl0.1's batch (checkpointing on), Abl1's by the card at Abl1's batch, so a new variant can't go unpaired."""
    bt = _bench_train()
    assert set(bt.SPEED_PAIRS) == set(bt.EXPERIMENT_VARIANTS)
    for variant, card in bt.SPEED_PAIRS.items():
        preset = bt.EXPERIMENT_VARIANTS[variant][1]
        assert card == {"abl0_1": "card", "abl1": "card_abl1"}[preset], variant


def test_the_bench_driver_skips_a_stage_whose_last_time_does_not_fit_and_learns_new_times(tmp_path) -> None:
    """run_bench.sh with python3 faked: a stage that took 100 s last time is skipped with 60 s left (a started
    run would be killed at the deadline and leave nothing); a stage never timed runs and its time is kept."""
    import json
    import os
    import subprocess

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\necho \"$@\" >> \"$FAKE_LOG\"\nexit 0\n")
    (fake / "python3").chmod(0o755)
    times = tmp_path / "stage_times.txt"
    times.write_text("abl0_1_default 100\n")
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "OUT": str(out), "STAGE_TIMES": str(times),
           "DEADLINE": "60", "MIN_LEFT": "0", "SITE": str(tmp_path / "site"), "SITE_X": str(tmp_path / "site_x"),
           "WHEELS": str(tmp_path), "EXTRA": str(tmp_path / "none"), "FAKE_LOG": str(tmp_path / "calls.txt")}
    res = subprocess.run(["bash", str(REPO / "experiments/device/run_bench.sh"), "abl0_1_default@0", "base@0",
                          "report"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "SKIP abl0_1_default@0 (took 100s last time" in res.stdout
    skipped = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert skipped == [{"stage": "skipped", "name": "abl0_1_default@0", "left_s": skipped[0]["left_s"], "needs_s": 100}]
    calls = (tmp_path / "calls.txt").read_text()
    assert "--side baseline" in calls and "--variant abl0_1_default" not in calls
    learned = [ln.split() for ln in (out / "stage_times.txt").read_text().splitlines()]
    assert [n for n, _ in learned] == ["abl0_1_default", "base", "report"] and int(learned[1][1]) <= 2
