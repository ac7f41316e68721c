"""WiSE-FT entries that store no weights: the registry mixes two shipped files at load time, and --ship writes such
an entry only when the WiSE-FT run's fine-tune is the very run it ships beside it."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import clipood_zoo
from clipood_zoo import WeightsNotFoundError
from clipood_zoo.models.emoji import SHIPPED

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from emojidg import run_benchmark as rb  # noqa: E402
from emojidg import shipped  # noqa: E402

BASE, FINE_TUNE = "clip_vitt_emoji", "erm_vitt_emojidg_3d"
UNSHIPPED = "lp_ft_vitt_emojidg_3d"  # a registered name without weights, for an entry to mix into


def spec(alpha, finetuned=FINE_TUNE):
    return {"zeroshot": BASE, "finetuned": finetuned, "alpha": alpha}


def test_a_wise_ft_entry_is_the_per_tensor_mix_of_the_two_shipped_files():
    """Every weight is (1 - alpha) base + alpha fine-tune, computed here from the two committed files, and the model
    records which files (with their manifest sha256) it was mixed from."""
    model = clipood_zoo.create_model(UNSHIPPED, pretrained=True, pretrained_cfg_overlay={"wise_ft": spec(0.25)})
    base = load_file(REPO / "weights" / BASE / "model.safetensors")
    tuned = load_file(REPO / "weights" / FINE_TUNE / "model.safetensors")
    state = model.state_dict()
    assert set(state) == set(tuned)
    for key, value in state.items():
        torch.testing.assert_close(value, 0.75 * base[key].float() + 0.25 * tuned[key].float(), rtol=0, atol=1e-6)
    assert not torch.equal(state["visual.conv1.weight"], tuned["visual.conv1.weight"].float())
    loaded = model.pretrained_cfg["loaded_weights"]
    assert loaded["wise_ft_alpha"] == 0.25
    assert (loaded["zeroshot"]["model"], loaded["zeroshot"]["sha256"]) == (BASE, SHIPPED[BASE]["sha256"])
    assert (loaded["finetuned"]["model"], loaded["finetuned"]["sha256"]) == (FINE_TUNE, SHIPPED[FINE_TUNE]["sha256"])


def test_a_wise_ft_entry_takes_timms_kwargs_like_any_entry():
    """img_size resamples the mixed position embedding, num_classes gives a new head after the mix: the same as
    the fine-tune's own entry with those kwargs at alpha 1."""
    mixed = clipood_zoo.create_model(UNSHIPPED, pretrained=True, pretrained_cfg_overlay={"wise_ft": spec(1.0)},
                                     img_size=48, num_classes=5)
    plain = clipood_zoo.create_model(FINE_TUNE, pretrained=True, img_size=48, num_classes=5)
    assert mixed.num_classes == 5 and mixed.image_size == 48
    for key, value in plain.state_dict().items():
        if not key.startswith("head.weight"):  # the new head is random
            torch.testing.assert_close(mixed.state_dict()[key], value, rtol=0, atol=1e-6)


def test_a_wise_ft_entry_whose_fine_tune_has_no_weights_says_which_and_why():
    with pytest.raises(WeightsNotFoundError) as e:
        clipood_zoo.create_model(UNSHIPPED, pretrained=True,
                                 pretrained_cfg_overlay={"wise_ft": spec(0.5, finetuned="flyp_vitt_emojidg_3d")})
    message = str(e.value)
    assert message.startswith(f"{UNSHIPPED} is WiSE-FT of two shipped models, mixed when it loads (0.5 x {BASE} + "
                              "0.5 x flyp_vitt_emojidg_3d), and one could not be loaded: flyp_vitt_emojidg_3d has no "
                              "published weights")


def test_a_saved_wise_ft_model_is_its_weights_and_an_overlaid_file_replaces_the_mix(tmp_path):
    """save_pretrained writes the mixed weights and no wise_ft spec (the folder holds them); a file given for an
    entry that mixes is loaded in place of the mix, never mixed into: the weights' source travels as one unit."""
    mixed = clipood_zoo.create_model(UNSHIPPED, pretrained=True, pretrained_cfg_overlay={"wise_ft": spec(0.5)})
    assert UNSHIPPED not in clipood_zoo.list_pretrained()  # the overlay does not change the registry
    clipood_zoo.save_pretrained(mixed, tmp_path / "saved")
    assert "wise_ft" not in json.loads((tmp_path / "saved" / "config.json").read_text())["pretrained_cfg"]
    again = clipood_zoo.create_model(f"local-dir:{tmp_path / 'saved'}", pretrained=True)
    for key, value in mixed.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    clipood = REPO / "weights" / "clipood_vitt_emojidg_3d" / "model.safetensors"
    shipped = "wise_ft_vitt_emojidg_3d"  # a registered entry that mixes (the manifest's wise_ft)
    assert clipood_zoo.get_pretrained_cfg(shipped).wise_ft and shipped in clipood_zoo.list_pretrained()
    other = clipood_zoo.create_model(shipped, pretrained=True, pretrained_cfg_overlay={"file": str(clipood)})
    assert "wise_ft_alpha" not in other.pretrained_cfg["loaded_weights"]
    assert torch.equal(other.state_dict()["visual.conv1.weight"], load_file(clipood)["visual.conv1.weight"].float())
    with pytest.raises(clipood_zoo.ConfigError, match="gives both wise_ft .* and file: give one source of weights"):
        clipood_zoo.create_model(UNSHIPPED, pretrained=True, pretrained_cfg_overlay={"wise_ft": spec(0.5),
                                                                                    "file": str(clipood)})


def test_a_wise_ft_entry_is_pinned_to_the_files_it_was_measured_with():
    """A source re-shipped after the mix was measured (another sha256 than the spec pins) is refused by name, and a
    spec that is not two entries with weights of their own is refused before anything loads."""
    pinned = {**spec(0.5), "sha256": {"zeroshot": SHIPPED[BASE]["sha256"], "finetuned": "0" * 64}}
    with pytest.raises(clipood_zoo.WeightsIntegrityError, match=(
            f"{UNSHIPPED} was measured as a mix of {FINE_TUNE} with sha256 0{{64}}, but {FINE_TUNE}'s weights are now "
            f"{SHIPPED[FINE_TUNE]['sha256']}: {FINE_TUNE} was re-shipped since; re-ship {UNSHIPPED} with it")):
        clipood_zoo.create_model(UNSHIPPED, pretrained=True, pretrained_cfg_overlay={"wise_ft": pinned})
    assert SHIPPED["wise_ft_vitt_emojidg_3d"]["wise_ft"]["sha256"] == {
        "zeroshot": SHIPPED[BASE]["sha256"], "finetuned": SHIPPED[FINE_TUNE]["sha256"]}  # what --ship pins
    for bad in ({"zeroshot": BASE, "alpha": 0.5}, spec(0.5, finetuned="wise_ft_vitt_emojidg_3d")):
        with pytest.raises(clipood_zoo.ConfigError, match="must name two entries with weights of their own"):
            clipood_zoo.create_model(UNSHIPPED, pretrained=True, pretrained_cfg_overlay={"wise_ft": bad})


def _staged(run_id):
    return rb.Staged(name=FINE_TUNE, run_id=run_id, model=None, sections={}, trained={})


def test_ship_mixes_wise_ft_only_from_the_very_fine_tune_it_ships(tmp_path):
    """A WiSE-FT run derived from the staged ERM run is an entry of base + ERM + alpha (the alpha its export chose);
    derived from another ERM run (another selected config or seed), or with no ERM shipped beside it, it is not."""
    run_dir = tmp_path / "wise_ft"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"pretrained_cfg": {"recipe": {"wise_ft": {"alpha": 0.75}}}}))
    erm_run = "erm-3d-lr0.0001-st1000-s0"
    record = {"run_id": "wise_ft-3d-lr0.0001-st1000-s0", "derived_from": erm_run}
    assert rb.mixable_wise_ft(record, {FINE_TUNE: _staged(erm_run)}, "wise_ft", "3d", run_dir, BASE) == spec(0.75)
    assert rb.mixable_wise_ft(record, {FINE_TUNE: _staged("erm-3d-lr0.0003-st1000-s0")}, "wise_ft", "3d", run_dir,
                              BASE) is None
    assert rb.mixable_wise_ft(record, {}, "wise_ft", "3d", run_dir, BASE) is None
    assert rb.mixable_wise_ft(record, {FINE_TUNE: _staged(erm_run)}, "erm", "3d", run_dir, BASE) is None


def test_the_manifest_entry_of_a_mixed_wise_ft_names_its_sources_and_the_mixed_logit_scale(tmp_path, monkeypatch):
    """record_shipped writes no file entry for a mixed name, and its logit scale is the one the mix holds (the head's
    log scale is interpolated too), read back from the two files."""
    import math

    manifest = tmp_path / "shipped_weights.json"
    manifest.write_text(json.dumps({"kept": {"file": "kept/model.safetensors"}}))
    monkeypatch.setattr(shipped, "MANIFEST", manifest)
    shipped.record_shipped(["wise_ft_vitt_emojidg_3d"], {"wise_ft_vitt_emojidg_3d": {"train_command": "python x"}},
                           {"wise_ft_vitt_emojidg_3d": spec(0.5)})
    written = json.loads(manifest.read_text())
    log_scales = [load_file(REPO / "weights" / n / "model.safetensors")["head.logit_scale"].float().item()
                  for n in (BASE, FINE_TUNE)]
    assert written["kept"] == {"file": "kept/model.safetensors"}
    pins = {"zeroshot": SHIPPED[BASE]["sha256"], "finetuned": SHIPPED[FINE_TUNE]["sha256"]}  # of the files mixed
    assert written["wise_ft_vitt_emojidg_3d"] == {"wise_ft": {**spec(0.5), "sha256": pins}, "train_command": "python x",
                                                  "logit_scale": round(math.exp(sum(log_scales) / 2), 4)}
