"""train.py with the peer methods: WiSE-FT's exported interpolation, last weights beside the average, errors."""
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import clipood_zoo
import train
import validate
from clipood_zoo import ConfigError
from clipood_zoo.cli_utils import model_for_dataset
from clipood_zoo.data import read_dataset_info
from clipood_zoo.data.synthetic import write_synthetic_dataset
from tests.conftest import TINY_ARCH, train_args


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(root, per_class=4, shard_size=8)
    return root


def zeroshot_weights(shards):
    """The weights a run starts from: train.py seeds, then builds the model (seed 3 in train_args)."""
    train.reseed(3, 0, rank=0)
    return model_for_dataset(TINY_ARCH, read_dataset_info(shards)).state_dict()


def test_wise_ft_exports_the_interpolation_at_the_alpha_best_on_source_val(shards, tmp_path):
    result = train.main(train_args(shards, tmp_path, "--steps", "2", "--method", "wise_ft"))
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    wise = config["pretrained_cfg"]["recipe"]["wise_ft"]
    scores = {float(a): s for a, s in wise["scores"].items()}
    assert sorted(scores) == [0.0, 0.25, 0.5, 0.75, 1.0]
    alpha = wise["alpha"]
    assert scores[alpha] == max(scores.values()) and alpha == max(a for a, s in scores.items() if s == scores[alpha])
    assert result["wise_ft_alpha"] == alpha and config["train_results"]["wise_ft_alpha"] == alpha
    last = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    zeroshot, exported = zeroshot_weights(shards), load_file(run / "model.safetensors")
    assert not torch.equal(zeroshot["visual.conv1.weight"], last["visual.conv1.weight"])
    for key, value in exported.items():
        torch.testing.assert_close(value, (1 - alpha) * zeroshot[key] + alpha * last[key])
    assert f"WiSE-FT alpha {alpha}" in (run / "README.md").read_text()


def test_one_fixed_alpha_on_top_of_clipood_interpolates_the_bma_weights(shards, tmp_path):
    train.main(train_args(shards, tmp_path, "--steps", "2", "--method", "clipood", "--wise-ft-alphas", "0.5"))
    run = tmp_path / "run"
    average = torch.load(run / "checkpoint.pt", weights_only=True)["average"]
    zeroshot, exported = zeroshot_weights(shards), load_file(run / "model.safetensors")
    for key, value in exported.items():
        torch.testing.assert_close(value, 0.5 * zeroshot[key] + 0.5 * average[key])


def test_export_wise_ft_puts_wise_ft_beside_the_runs_own_export(shards, tmp_path):
    """--export-wise-ft: the run's export is the plain fine-tune (as without WiSE-FT), wise_ft/ holds the
    interpolation at the alpha best on source val, and result.json stays the fine-tune's."""
    plain = train.main(train_args(shards, tmp_path / "plain", "--steps", "2", "--method", "erm"))
    result = train.main(train_args(shards, tmp_path, "--steps", "2", "--method", "erm", "--wise-ft-alphas", "0", "0.5",
                                   "--export-wise-ft"))
    run, plain_run = tmp_path / "run", tmp_path / "plain" / "run"
    for key, value in load_file(plain_run / "model.safetensors").items():  # same seed, same training
        assert torch.equal(load_file(run / "model.safetensors")[key], value)
    assert "wise_ft_alpha" not in result and result["best_source_top1"] == plain["best_source_top1"]
    wise = json.loads((run / "wise_ft" / "config.json").read_text())["pretrained_cfg"]["recipe"]["wise_ft"]
    scores = {float(a): s for a, s in wise["scores"].items()}
    assert sorted(scores) == [0.0, 0.5] and scores[wise["alpha"]] == max(scores.values())
    last = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    zeroshot = zeroshot_weights(shards)
    for key, value in load_file(run / "wise_ft" / "model.safetensors").items():
        torch.testing.assert_close(value, (1 - wise["alpha"]) * zeroshot[key] + wise["alpha"] * last[key])
    assert "wise_ft" not in json.loads((run / "config.json").read_text())["pretrained_cfg"]["recipe"]


class _Preempted(Exception):
    """The process dies at an evaluation: its checkpoint (the epoch trained, the evaluation still to do) remains."""


_REAL_EVALUATE = train.Run.evaluate


def _source_val_scores(monkeypatch, scores):
    """The run loop's evaluations report these source val top-1s in turn (None: the process is killed there);
    WiSE-FT's candidates, evaluated with a model passed in, keep their real scores."""
    evaluate, left = _REAL_EVALUATE, list(scores)

    def scripted(self, model=None):
        if model is not None:
            return evaluate(self, model)
        score = left.pop(0)
        if score is None:
            raise _Preempted
        return {**evaluate(self, model), "source_top1": score}
    monkeypatch.setattr(train.Run, "evaluate", scripted)


@pytest.mark.parametrize("resume", [False, True], ids=["one_process", "resumed_after_the_export"])
def test_wise_ft_interpolates_the_exported_weights_not_the_last_ones(shards, tmp_path, monkeypatch, resume):
    """WiSE-FT mixes the fine-tune the run exports (selected on source val), so a shipped WiSE-FT is rebuilt from the
    shipped zero-shot and fine-tuned files: at alpha 1 it is that export, even when later weights score lower, and
    a run resumed after its export reads the export back."""
    args = train_args(shards, tmp_path, "--epochs", "3", "--eval-interval", "1", "--method", "erm",
                      "--wise-ft-alphas", "1", "--export-wise-ft")
    if resume:
        _source_val_scores(monkeypatch, [90.0, None])  # killed at the second evaluation, after the first one's export
        with pytest.raises(_Preempted):
            train.main(args)
        _source_val_scores(monkeypatch, [10.0, 10.0])  # the new process redoes epoch 1's evaluation, then epoch 2's
        train.main([*args, "--resume", str(tmp_path / "run")])
    else:
        _source_val_scores(monkeypatch, [90.0, 10.0, 10.0])
        train.main(args)
    run = tmp_path / "run"
    exported, wise = load_file(run / "model.safetensors"), load_file(run / "wise_ft" / "model.safetensors")
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert json.loads((run / "config.json").read_text())["step"] * 3 == checkpoint["step"]  # epoch 0's export
    assert not torch.equal(exported["visual.conv1.weight"], checkpoint["model"]["visual.conv1.weight"])
    for key, value in wise.items():
        assert torch.equal(value, exported[key]), key


def test_a_run_killed_inside_its_export_resumes_and_redoes_it(shards, tmp_path, monkeypatch):
    """Killed between an export's weights and its config.json, the folder holds new weights beside the previous
    config (whose sha256 no longer matches them). The resumed run redoes that evaluation and its export, and only
    then reads the export back for WiSE-FT: the WiSE-FT at alpha 1 is the redone export of epoch 1."""
    import clipood_zoo.hub as hub
    args = train_args(shards, tmp_path, "--epochs", "3", "--eval-interval", "1", "--method", "erm",
                      "--wise-ft-alphas", "1", "--export-wise-ft")
    run, write_text = tmp_path / "run", hub.write_text_atomic
    configs_written = []

    def killed_at_the_second_config(path, text):
        if Path(path) == run / "config.json":
            configs_written.append(path)
            if len(configs_written) == 2:
                raise _Preempted
        write_text(path, text)
    monkeypatch.setattr(hub, "write_text_atomic", killed_at_the_second_config)
    _source_val_scores(monkeypatch, [90.0, 95.0])  # epoch 1 beats epoch 0: its export is the one killed
    with pytest.raises(_Preempted):
        train.main(args)
    stale = json.loads((run / "config.json").read_text())
    assert hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest() != stale["sha256"]  # half-written
    monkeypatch.setattr(hub, "write_text_atomic", write_text)
    _source_val_scores(monkeypatch, [95.0, 10.0])  # epoch 1's evaluation redone, then epoch 2's
    train.main([*args, "--resume", str(run)])
    config = json.loads((run / "config.json").read_text())
    exported = run / "model.safetensors"
    assert config["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert config["step"] * 3 == 2 * torch.load(run / "checkpoint.pt", weights_only=True)["step"]  # epoch 1's
    wise = load_file(run / "wise_ft" / "model.safetensors")
    for key, value in load_file(exported).items():
        assert torch.equal(wise[key], value), key


def test_a_run_killed_while_writing_its_wise_ft_in_place_says_the_fine_tune_is_lost(shards, tmp_path, monkeypatch,
                                                                                      capsys):
    """--method wise_ft overwrites the fine-tune's export with the mix: killed between the mix's weights and its
    config.json, the fine-tune is gone. The resume says so and how to start again, and leaves the run's files."""
    import clipood_zoo.hub as hub
    args = train_args(shards, tmp_path, "--steps", "2", "--method", "wise_ft", "--wise-ft-alphas", "0.5")
    run, write_text = tmp_path / "run", hub.write_text_atomic

    def killed_writing_the_mix(path, text):
        if Path(path) == run / "config.json" and "wise_ft" in json.loads(text)["pretrained_cfg"]["recipe"]:
            raise _Preempted
        write_text(path, text)
    monkeypatch.setattr(hub, "write_text_atomic", killed_writing_the_mix)
    with pytest.raises(_Preempted):
        train.main(args)
    monkeypatch.setattr(hub, "write_text_atomic", write_text)
    exports = ("model.safetensors", "config.json", "README.md", "checkpoint.pt")
    before = {name: (run / name).read_bytes() for name in exports}
    with pytest.raises(SystemExit) as exc:
        train.main([*args, "--resume", str(run)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (f"train.py: error: the run's selected export in {run} cannot be read back to mix WiSE-FT. If the run "
            "was killed while it wrote its WiSE-FT in place of that export (--method wise_ft), the fine-tune is lost: "
            "start it again (--overwrite), with --export-wise-ft to keep the fine-tune beside its WiSE-FT. (sha256 "
            "mismatch for ") in err
    assert {name: (run / name).read_bytes() for name in exports} == before


def test_export_wise_ft_fixed_mixes_the_export_at_the_given_alpha_beside_the_chosen_one(shards, tmp_path):
    """--export-wise-ft-fixed 0.5: wise_ft_fixed/ is 0.5 zero-shot + 0.5 the run's export (recomputed here),
    evaluated like the other exports, its card saying the alpha was fixed; wise_ft/ keeps the chosen alpha."""
    train.main(train_args(shards, tmp_path, "--steps", "2", "--method", "erm", "--wise-ft-alphas", "1",
                          "--export-wise-ft", "--export-wise-ft-fixed", "0.5"))
    run = tmp_path / "run"
    zeroshot, exported = zeroshot_weights(shards), load_file(run / "model.safetensors")
    fixed = load_file(run / "wise_ft_fixed" / "model.safetensors")
    for key, value in fixed.items():
        torch.testing.assert_close(value, 0.5 * zeroshot[key] + 0.5 * exported[key])
    config = json.loads((run / "wise_ft_fixed" / "config.json").read_text())
    assert config["pretrained_cfg"]["recipe"]["wise_ft"] == {"alpha": 0.5}
    assert config["train_results"]["wise_ft_alpha"] == 0.5 and "source_top1" in config["train_results"]
    assert "WiSE-FT at the fixed alpha 0.5 (not chosen on validation)." in (run / "wise_ft_fixed" / "README.md").read_text()
    chosen = json.loads((run / "wise_ft" / "config.json").read_text())["pretrained_cfg"]["recipe"]["wise_ft"]
    assert chosen["alpha"] == 1.0 and "scores" in chosen


def test_a_run_whose_export_already_is_its_wise_ft_is_not_mixed_again_on_resume(shards, tmp_path, capsys):
    """--method wise_ft writes WiSE-FT in place of the fine-tune; resuming from the kept checkpoint would mix that
    mix again, so it is refused, and the export is left as it was."""
    args = train_args(shards, tmp_path, "--steps", "2", "--method", "wise_ft", "--wise-ft-alphas", "0.5")
    train.main(args)
    run = tmp_path / "run"
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as exc:
        train.main([*args, "--resume", str(run)])
    assert exc.value.code == 2
    assert (f"train.py: error: {run} already holds this run's WiSE-FT in place of its fine-tune: the run is finished "
            "and its export is final; there is nothing to resume") in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == before


def test_a_run_with_a_weight_average_also_exports_its_last_weights(shards, tmp_path):
    train.main(train_args(shards, tmp_path, "--steps", "3", "--method", "clipood"))
    run = tmp_path / "run"
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    averaged, last = load_file(run / "model.safetensors"), load_file(run / "last" / "model.safetensors")
    for key in checkpoint["model"]:
        torch.testing.assert_close(last[key], checkpoint["model"][key])
        torch.testing.assert_close(averaged[key], checkpoint["average"][key])
    assert not torch.equal(last["visual.conv1.weight"], averaged["visual.conv1.weight"])
    recipes = [json.loads((d / "config.json").read_text())["pretrained_cfg"]["recipe"] for d in (run, run / "last")]
    assert [r["weight_average"] for r in recipes] == ["ModelBma", "last"]
    assert "source_top1" in json.loads((run / "last" / "config.json").read_text())["train_results"]


def test_lp_ft_exports_a_trained_head_that_loads_back(shards, tmp_path):
    train.main(train_args(shards, tmp_path, "--steps", "2", "--method", "lp_ft", "--lp-steps", "1"))
    exported = load_file(tmp_path / "run" / "model.safetensors")
    zeroshot = zeroshot_weights(shards)
    assert not torch.equal(exported["head.weight"], zeroshot["head.weight"])
    model = model_for_dataset(TINY_ARCH, read_dataset_info(shards), checkpoint=str(tmp_path / "run"))
    torch.testing.assert_close(model.head.weight, exported["head.weight"])
    assert not isinstance(model.head.weight, torch.nn.Parameter)  # a plain frozen head again once exported


def test_lp_ft_probes_only_the_base_rows_for_its_optimizer_steps_under_gradient_accumulation(shards, tmp_path):
    """The LP stage counts optimizer steps, not batches: with --grad-accum-steps 2 and --lp-steps 2 of 2 the image
    tower ends as it started; the head's base rows are trained and its new rows (no gradient, no decay) are not."""
    train.main(train_args(shards, tmp_path, "--steps", "2", "--method", "lp_ft", "--lp-steps", "2",
                          "--grad-accum-steps", "2"))
    exported, zeroshot = load_file(tmp_path / "run" / "model.safetensors"), zeroshot_weights(shards)
    for key, value in zeroshot.items():
        if key != "head.weight":
            assert torch.equal(exported[key], value), key
    info = read_dataset_info(shards)
    base, new = list(info.base_classes), list(info.new_classes)
    assert not torch.equal(exported["head.weight"][base], zeroshot["head.weight"][base])
    assert torch.equal(exported["head.weight"][new], zeroshot["head.weight"][new])


def test_a_text_tower_built_for_a_methods_prompts_never_re_embeds_the_datasets_classes(shards):
    """car_ft asks for the architecture's text tower; without CLIP's weights that tower may be random, so it must
    not replace a zoo model's loaded head with its embeddings of the dataset's names (which car_ft's head check
    would then pass): a model that does not classify the dataset's classes is refused as without a tower."""
    info = read_dataset_info(shards)
    with pytest.raises(ConfigError, match="not all of them the model's"):
        model_for_dataset("testzoo_tiny_toy_a", info, with_text_tower=True)
    assert model_for_dataset(TINY_ARCH, info, with_text_tower=True).text_tower is not None


def test_car_ft_builds_the_text_tower_that_made_the_head_and_regularises_towards_the_base_classes(shards, tmp_path):
    """train.py builds the architecture's text tower for car_ft (the emoji models' bundled MiniLM; here the tiny
    arch's, seeded as the run seeds it). Starting from weights whose head that tower embedded, the run trains, and
    its recipe records the context: CLIP's 80 templates over the training (base) classes only."""
    info = read_dataset_info(shards)
    train.reseed(3, 0, rank=0)
    start = model_for_dataset(TINY_ARCH, info, with_text_tower=True)
    start.set_classes(start.class_names)  # the zero-shot head of this text tower
    clipood_zoo.save_pretrained(start, tmp_path / "start")
    train.main(train_args(shards, tmp_path, "--steps", "2", "--method", "car_ft", "--checkpoint",
                          str(tmp_path / "start")))
    recipe = json.loads((tmp_path / "run" / "config.json").read_text())["pretrained_cfg"]["recipe"]
    assert recipe["method"] == "car_ft" and recipe["context_prompts"] == 80
    assert recipe["trained_class_rows"] == len(info.base_classes) < len(info.classes)
    exported = load_file(tmp_path / "run" / "model.safetensors")
    assert not torch.equal(exported["visual.conv1.weight"], start.state_dict()["visual.conv1.weight"])


def test_lp_ft_fine_tunes_on_a_schedule_of_its_own_that_opens_with_the_warmup(shards, tmp_path, caplog):
    """--lp-steps 2 of 6: the probe's cosine over 2 steps, then fine-tuning's over 4, each with its share of the
    2 warmup steps (1 each), as Kumar et al.'s second run; the LP's last rate is not carried into fine-tuning."""
    with caplog.at_level("INFO", logger="train"):
        train.main(train_args(shards, tmp_path, "--steps", "6", "--method", "lp_ft", "--lp-steps", "2",
                              "--warmup-steps", "2", "--warmup-lr", "0.0001"))
    logged = [float(m) for m in re.findall(r"LR: ([0-9.e+-]+)", caplog.text)]  # after step s: the rate of step s

    def cosine(t, length, lr=1e-3, warmup_lr=1e-4):  # timm's, warmup 1 step
        return warmup_lr if t < 1 else 0.5 * lr * (1 + math.cos(math.pi * t / length))
    expected = [cosine(t, 2) for t in range(2)] + [cosine(t, 4) for t in range(4)]
    assert logged == pytest.approx(expected[1:] + [0.0], rel=1e-3)
    assert logged[1] == pytest.approx(1e-4)  # fine-tuning's first step: the warmup rate


def test_source_val_scores_the_training_classes_rows_as_validate_py_classes_base_does(shards, tmp_path):
    """A base-to-new run selects on its source domains' val images over the base classes' head rows only, as it
    trains: the selection is validate.py --classes base of the export, computed independently by validate.py."""
    info = read_dataset_info(shards)
    start = model_for_dataset(TINY_ARCH, info)
    with torch.no_grad():  # the new classes' rows: the base rows, a little longer, so they win on base images
        start.head.weight[list(info.new_classes)] = 1.01 * start.head.weight[list(info.base_classes)]
    clipood_zoo.save_pretrained(start, tmp_path / "start")
    result = train.main(train_args(shards, tmp_path, "--steps", "2", "--method", "erm", "--lr", "1e-6",
                                   "--checkpoint", str(tmp_path / "start")))
    sources = [d for d in info.domains if d != "sketch"]
    (row,) = validate.main(["--model", TINY_ARCH, "--checkpoint", str(tmp_path / "run"), "--data-dir", str(shards),
                            "--split", "val", "--domains", *sources, "--classes", "base", "--workers", "0"])
    assert result["best_source_top1"] == pytest.approx(row["top1"], abs=1e-3)
    (whole,) = validate.main(["--model", TINY_ARCH, "--checkpoint", str(tmp_path / "run"), "--data-dir", str(shards),
                              "--split", "val", "--domains", *sources, "--workers", "0"])
    assert whole["num_samples"] > row["num_samples"]  # the new classes' val images are not selected on either


@pytest.mark.parametrize("extra,message", [
    (["--wise-ft-alphas", "0.5", "1.5"], "--wise-ft-alphas must lie in [0, 1]"),
    (["--method", "car_ft"], "car_ft: the model's text tower does not reproduce its class head"),
    (["--method", "lp_ft", "--lp-steps", "-1"], "lp_steps must be >= 0"),
    (["--export-ema", "1.0"], "--export-ema is an EMA decay in [0, 1)"),
    (["--export-ema", "0.9", "--model-ema"], "--export-ema keeps an EMA beside the run's average"),
    (["--export-bma-betas", "0.5", "0"], "--export-bma-betas are Beta(beta, beta) parameters > 0 (1: the uniform "
                                         "average), got 0.0"),
    (["--export-bma-betas", "inf"], "--export-bma-betas are Beta(beta, beta) parameters > 0"),
    (["--export-bma-betas", "1", "1.0"], "--export-bma-betas names a beta twice: 1 1"),
    (["--export-bma-betas", "5000"], "Beta(5000, 5000) weights over 2 steps underflow to 0"),
    (["--method", "wise_ft", "--val-split", "nosuch"], "WiSE-FT chooses alpha on the source domains' 'nosuch' split"),
    (["--method", "erm", "--export-wise-ft"], "--export-wise-ft exports WiSE-FT beside the run, but --method erm has"),
    (["--method", "wise_ft", "--export-wise-ft-fixed", "0.5"], "--export-wise-ft-fixed exports a fixed-alpha WiSE-FT "
                                                                "beside the chosen one: add --export-wise-ft"),
    (["--method", "wise_ft", "--export-wise-ft", "--export-wise-ft-fixed", "nan"], "--export-wise-ft-fixed must lie "
                                                                                  "in [0, 1]"),
])
def test_bad_peer_arguments_exit_2_with_the_reason(shards, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        train.main(train_args(shards, tmp_path, "--steps", "2", *extra))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: ") and message in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_export_ema_keeps_timms_ema_beside_bma_and_last(shards, tmp_path, monkeypatch):
    saved = []
    real_save = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda path, **kw: (saved.append(
        (kw["step"], {k: v.clone() for k, v in kw["model"].state_dict().items()}, kw["extra"]["ema"])),
        real_save(path, **kw)))
    train.main(train_args(shards, tmp_path, "--steps", "2", "--method", "clipood", "--export-ema", "0.5",
                          "--checkpoint-interval", "1"))
    run = tmp_path / "run"
    assert {"ema", "last"} <= {p.name for p in run.iterdir()}
    theta = {step: weights for step, weights, _ in saved}
    ema = load_file(run / "ema" / "model.safetensors")
    for key in ema:  # timm's EMA with step passed starts at theta_1: ema = 0.5 theta_1 + 0.5 theta_2
        if ema[key].is_floating_point():
            torch.testing.assert_close(ema[key], 0.5 * theta[1][key] + 0.5 * theta[2][key])
    recipe = json.loads((run / "ema" / "config.json").read_text())["pretrained_cfg"]["recipe"]
    assert recipe["weight_average"] == "ModelEmaV3 (decay 0.5)"
    assert saved[-1][2] is not None  # the EMA is checkpointed, so a resumed run continues it


def beta_average(thetas, beta):
    """Independently of clipood_zoo.bma: sum_k a_k theta_k / sum_k a_k over theta_0..theta_T, a_k the Beta(beta, beta)
    density at (k + 0.5) / (T + 1), written from the formula with math.gamma."""
    total = len(thetas) - 1
    norm = math.gamma(beta) ** 2 / math.gamma(2 * beta)
    a = [((k + 0.5) / (total + 1)) ** (beta - 1) * (1 - (k + 0.5) / (total + 1)) ** (beta - 1) / norm
         for k in range(total + 1)]
    return {key: sum(w * t[key].double() for w, t in zip(a, thetas)) / sum(a) for key in thetas[0]}


def test_export_bma_betas_are_beta_averages_of_the_runs_own_steps(shards, tmp_path, monkeypatch):
    saved, initial = [], []
    real_save, real_bma = train.save_checkpoint, train.ModelBma
    monkeypatch.setattr(train, "save_checkpoint", lambda path, **kw: (saved.append(
        (kw["step"], {k: v.clone() for k, v in kw["model"].named_parameters()})), real_save(path, **kw)))

    class RecordingBma(real_bma):
        def __init__(self, model, **kw):  # theta_0: the weights every average starts from
            initial.append({k: v.detach().clone() for k, v in model.named_parameters()})
            super().__init__(model, **kw)

    monkeypatch.setattr(train, "ModelBma", RecordingBma)
    train.main(train_args(shards, tmp_path, "--steps", "3", "--method", "clipood", "--export-bma-betas", "0.25", "1",
                          "--checkpoint-interval", "1"))
    run = tmp_path / "run"
    thetas = [initial[0], *(weights for _, weights in sorted(dict(saved).items()))]
    assert len(thetas) == 4 and all(torch.equal(initial[0][k], i[k]) for i in initial for k in i)
    for beta in (0.25, 1.0):
        exported = load_file(run / f"bma_beta{beta:g}" / "model.safetensors")
        expected = beta_average(thetas, beta)
        for key, value in expected.items():
            torch.testing.assert_close(exported[key].double(), value, rtol=1e-5, atol=1e-6)
        recipe = json.loads((run / f"bma_beta{beta:g}" / "config.json").read_text())["pretrained_cfg"]["recipe"]
        assert (recipe["weight_average"], recipe["bma_beta"]) == ("ModelBma", beta)
    uniform = beta_average(thetas, 1.0)
    assert all(torch.allclose(uniform[k], sum(t[k].double() for t in thetas) / 4) for k in uniform)  # beta 1: uniform
    assert not all(torch.allclose(uniform[k], beta_average(thetas, 0.25)[k]) for k in uniform)  # betas tell apart


def test_two_process_ddp_lp_ft_with_wise_ft_and_ema(shards, tmp_path):
    """The LP phase leaves the tower without gradients (DDP must look for unused parameters); WiSE-FT and the
    extra EMA evaluate on every rank."""
    repo = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           str(repo / "train.py"), *train_args(shards, tmp_path, "--steps", "3", "--method", "lp_ft", "--lp-steps", "2",
                                               "--wise-ft-alphas", "0.5", "1", "--export-ema", "0.5",
                                               "--export-bma-betas", "2")]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (digests,) = re.findall(r"final weights digest per rank: (.*)", proc.stderr)
    assert len(digests.split()) == 2 and len(set(digests.split())) == 1
    run = tmp_path / "run"
    assert (run / "ema" / "model.safetensors").exists() and (run / "bma_beta2" / "model.safetensors").exists()
    assert json.loads((run / "config.json").read_text())["pretrained_cfg"]["recipe"]["wise_ft"]["alpha"] in (0.5, 1.0)


def test_resumed_run_continues_the_ema_and_interpolates_with_the_initial_weights(shards, tmp_path, monkeypatch):
    flags = ("--steps", "4", "--method", "clipood", "--export-ema", "0.5", "--export-bma-betas", "0.25", "2",
             "--wise-ft-alphas", "0.5", "--checkpoint-interval", "2")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train.main(train_args(shards, straight, *flags))
    real_save = train.Run.save

    def save_then_die(self):
        real_save(self)
        if self.step == 2:
            raise KeyboardInterrupt  # dies after the step-2 checkpoint

    monkeypatch.setattr(train.Run, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.main(train_args(shards, killed, *flags))
    monkeypatch.setattr(train.Run, "save", real_save)
    at = flags.index("--export-bma-betas") + 1
    reordered = (*flags[:at], "2", "0.25", *flags[at + 2:])  # the same betas in another order: the same run
    train.main(train_args(shards, killed, *reordered, "--resume", str(killed / "run")))
    for name in ("model.safetensors", "ema/model.safetensors", "last/model.safetensors", "bma_beta0.25/model.safetensors",
                 "bma_beta2/model.safetensors"):
        a, b = load_file(straight / "run" / name), load_file(killed / "run" / name)
        for key, value in a.items():
            assert torch.equal(value, b[key]), (name, key)
