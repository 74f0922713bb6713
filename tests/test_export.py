"""nli_cot.export on a real tiny-model run (the session's shared `trained_run`, tests/conftest.py): the card's
subfolder loading gives the original logits, the model card's front matter parses with huggingface_hub and its
numbers are the metrics files', user mistakes are one line and exit 2 (one of them through a real process), a push
without network or token leaves the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TRAINED_RUN, build_once, compose, run_inprocess, run_module

RUN = TRAINED_RUN


def _checkpoints(run: Path) -> list[str]:
    """The run's checkpoint folders by step (the shared run keeps the newest two and the best)."""
    return sorted((p.name for p in run.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))


def _predictions(path: Path, seed: int, n: int = 40) -> None:
    """Prediction records as nli_cot.predict writes them (the parts evaluate reads), of known quality."""
    import random

    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            gold = rng.randint(0, 1)
            pred = gold if rng.random() < 0.7 else 1 - gold
            raw = json.dumps({"thought_process": f"Step 1: pair {i}.", "predicted_label": pred})
            f.write(json.dumps({"id": f"esnli-test-{i}", "label": gold, "raw_text": raw}) + "\n")


def _evaluate(tmp: Path, name: str, seed: int) -> Path:
    from nli_cot.evaluation.evaluate import run as evaluate

    pred = tmp / f"{name}.jsonl"
    _predictions(pred, seed)
    out = tmp / "eval" / name
    evaluate(compose([f"predictions={pred}", f"out_dir={out}", f"name={name}", "plots=false"], "evaluate"))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_run: Path) -> dict[str, Path]:
    """Two evaluations, their comparison and the export of every checkpoint, built once per session (pytest-xdist
    workers share it); read-only here."""

    def build(tmp: Path) -> None:
        evals = [_evaluate(tmp, "esnli_test", 0), _evaluate(tmp, "rte_dev", 1)]
        from nli_cot.evaluation.compare import compare

        compare([str(e) for e in evals], tmp / "compare", exact_below=25, dpi=60, plots=False)
        proc = run_inprocess("nli_cot.export", [str(trained_run / RUN), f"out={tmp / 'hub'}", "checkpoints=all",
                                             f"evals=[{evals[0]},{evals[1]}]", f"compare={tmp / 'compare'}",
                                             "repo_id=someone/tiny-nli", "push=someone/tiny-nli"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        (tmp / "export.stdout").write_text(proc.stdout)

    tmp = build_once(tmp_path_factory, "export", build)
    return {"tmp": tmp, "run": trained_run / RUN, "out": tmp / "hub", "stdout": (tmp / "export.stdout").read_text(),
            "evals": [tmp / "eval" / "esnli_test", tmp / "eval" / "rte_dev"]}


@pytest.mark.slow
def test_layout_and_offline_push(exported) -> None:
    out = exported["out"]
    folders = sorted(p.name for p in (out / RUN).iterdir())
    assert folders == sorted(_checkpoints(exported["run"])) and len(folders) >= 2  # checkpoints=all: every one
    for name in folders:
        files = {p.name for p in (out / RUN / name).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
                "trainer_state.json"} <= files
        assert "training_state.ckpt" not in files and "README.md" not in files
    assert (out / "README.md").is_file() and (out / "training_curves.png").stat().st_size > 1000
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    lines = [ln for ln in exported["stdout"].splitlines() if ln.startswith("push ")]
    assert len(lines) == 1 and "push skipped: HF_HUB_OFFLINE" in lines[0] and str(out) in lines[0]


@pytest.mark.slow
def test_card_snippet_gives_the_checkpoints_logits(exported, tiny_model_cfg, mistral_tokenizer) -> None:
    from peft import PeftModel

    from nli_cot.models.modeling import load_base_model

    ids = torch.tensor([[1, 3, 1000, 2000, 4, 5000, 17]])
    with torch.no_grad():
        plain = load_base_model(tiny_model_cfg, mistral_tokenizer)(ids).logits
    for name in _checkpoints(exported["run"]):
        sub = f"{RUN}/{name}"
        exported_model = PeftModel.from_pretrained(load_base_model(tiny_model_cfg, mistral_tokenizer),
                                                   str(exported["out"]), subfolder=sub).eval()
        original = PeftModel.from_pretrained(load_base_model(tiny_model_cfg, mistral_tokenizer),
                                             str(exported["run"].parent), subfolder=sub).eval()
        with torch.no_grad():
            a, b = exported_model(ids).logits, original(ids).logits
        assert torch.equal(a, b), sub
        assert not torch.allclose(a, plain)  # the adapter is applied, not a zero one


@pytest.mark.slow
def test_front_matter_parses_and_equals_the_metrics_files(exported) -> None:
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(exported["out"] / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "tiny_mistral" and data["library_name"] == "peft"
    assert data["license"] == "apache-2.0" and data["datasets"] == ["sample"] and "nli" in data["tags"]
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "someone/tiny-nli"
    got = {(r.dataset_name, r.metric_name): r.metric_value for r in results}
    expected = {}
    for d in exported["evals"]:
        m = json.loads((d / "metrics.json").read_text())
        expected[(m["name"], "Accuracy")] = m["accuracy"]["value"]
        expected[(m["name"], "Macro F1")] = m["macro_f1"]["value"]
    assert got == expected

    body = card.text
    state = json.loads((exported["run"] / _checkpoints(exported["run"])[-1] / "trainer_state.json").read_text())
    cfg = state["config"]
    m = json.loads((exported["evals"][0] / "metrics.json").read_text())
    acc = m["accuracy"]
    row = (f"| esnli_test | {m['n']} | {100 * acc['value']:.1f}% | {100 * acc['ci'][0]:.1f}% - "
           f"{100 * acc['ci'][1]:.1f}% |")
    assert row in body  # the evaluation table carries the file's CI
    assert f"| learning rate | {cfg['optimizer']['lr']:.4g} |" in body
    assert f"| rank r | {cfg['lora']['r']} |" in body and "4-bit NF4" in body
    assert "![training curves](training_curves.png)" in body
    assert "### Comparison" in body and "McNemar" in body
    # The usage snippet and the evaluation table name the run's best adapter (checkpoints=all exported both).
    assert f'subfolder="{RUN}/{state["best_checkpoint"]}"' in body
    assert f"Adapter `{RUN}/{state['best_checkpoint']}`" in body
    for section in ("## Base model", "## Data and SFT strategy", "## LoRA and quantisation",
                    "## Training hyper-parameters", "## Evaluation", "## Usage", "## Limitations"):
        assert section in body


@pytest.mark.slow
def test_user_mistakes_are_one_line_exit_2(exported, tmp_path: Path) -> None:
    proc = run_module("nli_cot.export", [str(tmp_path / "nope"), f"out={tmp_path / 'o'}"])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "no such run dir or checkpoint folder" in proc.stderr

    from nli_cot.inference.export import ExportError
    from nli_cot.inference.export import run as export

    def cfg(*extra: str):
        return compose([f"source={exported['run']}", *extra], "export")

    with pytest.raises(ExportError, match="exists and is not empty"):
        export(cfg(f"out={exported['out']}"))
    with pytest.raises(ExportError, match="checkpoints must be best, last or all"):
        export(cfg(f"out={tmp_path / 'a'}", "checkpoints=newest"))
    with pytest.raises(ExportError, match="metrics.json"):
        export(cfg(f"out={tmp_path / 'b'}", f"evals=[{tmp_path}]"))
    with pytest.raises(ExportError, match="must not be inside the run"):
        export(cfg(f"out={exported['run'] / 'hub'}"))
    with pytest.raises(ExportError, match="eval_checkpoint"):
        export(cfg(f"out={tmp_path / 'c'}", f"evals=[{exported['evals'][0]}]", "eval_checkpoint=checkpoint-99"))
    # One checkpoint folder as the source; the default (best) of a run dir is the run's best checkpoint.
    summary = export(cfg(f"out={tmp_path / 'd'}"))
    last, first = _checkpoints(exported["run"])[-1], _checkpoints(exported["run"])[0]
    best = json.loads((exported["run"] / last / "trainer_state.json").read_text())["best_checkpoint"]
    assert summary["subfolders"] == [f"{RUN}/{best}"]
    summary = export(compose([f"source={exported['run'] / first}", f"out={tmp_path / 'e'}"], "export"))
    assert summary["subfolders"] == [f"{RUN}/{first}"] and summary["evals"] == []
    with pytest.raises(ExportError, match="out: missing"):
        export(cfg())
    proc = run_inprocess("nli_cot.export", [str(exported["run"]), "outt=x"])  # a typo in a key: Hydra's check
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "outt" in proc.stderr


def test_positional_source() -> None:
    from nli_cot.inference.export import positional_source

    assert positional_source(["runs/abl1", "out=x"]) == ["source=runs/abl1", "out=x"]
    assert positional_source(["source=a", "out=x"]) == ["source=a", "out=x"]
    assert positional_source(["--cfg", "job"]) == ["--cfg", "job"]


def test_push_without_token_says_so_and_keeps_the_folder(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    from nli_cot.inference.export import push_folder

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    (tmp_path / "README.md").write_text("card")
    line = push_folder(tmp_path, "someone/x", private=False)
    assert line.startswith("push skipped: no Hugging Face token") and "\n" not in line
    assert (tmp_path / "README.md").read_text() == "card"
