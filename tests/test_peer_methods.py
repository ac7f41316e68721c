"""The robust fine-tuning peers (FLYP, CAR-FT, CRoFT, LP-FT) against their rules written out independently."""
import math

import pytest
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config

from clipood_zoo import ConfigError
from clipood_zoo.data import create_loader
from clipood_zoo.data.synthetic import write_synthetic_dataset
from clipood_zoo.losses import carft_context_kl, croft_energy_gradient_penalty, flyp_contrastive_loss
from clipood_zoo.methods import METHODS, TrainStep, create_method
from clipood_zoo.models import build_classifier

CLASSES = ["cat", "dog", "fish", "owl"]


def loop_flyp(img, txt, target, tau):
    """CLIP's symmetric InfoNCE over (image_i, prompt of y_i) pairs, one row and one column at a time."""
    n = img.shape[0]
    sim = [[torch.dot(img[i] / img[i].norm(), txt[target[j]] / txt[target[j]].norm()) / tau for j in range(n)]
           for i in range(n)]
    i2t = [-(sim[i][i] - torch.logsumexp(torch.stack(sim[i]), 0)) for i in range(n)]
    t2i = [-(sim[j][j] - torch.logsumexp(torch.stack([sim[i][j] for i in range(n)]), 0)) for j in range(n)]
    return (sum(i2t) / n + sum(t2i) / n) / 2


def test_flyp_matches_symmetric_infonce_with_duplicate_labels_as_negatives():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(4, 6, generator=g, dtype=torch.float64)
    target = torch.tensor([2, 0, 2, 3, 2])  # class 2 three times: its prompts are negatives of each other
    ours = flyp_contrastive_loss(img, txt, target, temperature=0.07)
    ref = loop_flyp(img, txt, target, 0.07)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(ours, img)[0], torch.autograd.grad(ref, img)[0])
    # not cross-entropy: a duplicate class keeps the loss at or above log(count) even for a perfect image
    perfect = F.normalize(txt, dim=-1)[target] * 50
    assert flyp_contrastive_loss(perfect, txt, target, temperature=0.01).item() > 0.5 * 2 * math.log(3) / 5


def test_carft_kl_matches_the_hand_formula():
    g = torch.Generator().manual_seed(1)
    teacher, student = torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g,
                                                                                        dtype=torch.float64)
    ctx = torch.randn(5, 8, generator=g, dtype=torch.float64)
    tau = 0.05
    total = 0.0
    for b in range(3):
        cos_t = [torch.dot(teacher[b] / teacher[b].norm(), ctx[k] / ctx[k].norm()).item() / tau for k in range(5)]
        cos_s = [torch.dot(student[b] / student[b].norm(), ctx[k] / ctx[k].norm()).item() / tau for k in range(5)]
        zt, zs = sum(math.exp(v) for v in cos_t), sum(math.exp(v) for v in cos_s)
        total += sum(math.exp(a) / zt * (math.log(math.exp(a) / zt) - math.log(math.exp(s) / zs))
                     for a, s in zip(cos_t, cos_s))
    assert carft_context_kl(teacher, student, ctx, temperature=tau).item() == pytest.approx(total / 3, rel=1e-9)
    assert carft_context_kl(teacher, teacher, ctx, temperature=tau).item() == pytest.approx(0.0, abs=1e-12)


def croft_energy(z, txt, delta):
    """mean_{b,c} exp(cos(z_b (I + delta), t_c)), written with explicit loops."""
    vals = []
    for b in range(z.shape[0]):
        zb = z[b] / z[b].norm()
        g = zb + zb @ delta
        for c in range(txt.shape[0]):
            vals.append(torch.exp(torch.dot(g / g.norm(), txt[c] / txt[c].norm())))
    return torch.stack(vals).mean()


def test_croft_penalty_matches_finite_differences_and_is_differentiable():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(3, 4, generator=g, dtype=torch.float64)
    txt = torch.randn(5, 4, generator=g, dtype=torch.float64)
    base, eps = torch.full((4, 4), 1e-4, dtype=torch.float64), 1e-6
    grad = torch.zeros(4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            step = torch.zeros(4, 4, dtype=torch.float64)
            step[i, j] = eps
            grad[i, j] = (croft_energy(feats, txt, base + step) - croft_energy(feats, txt, base - step)) / (2 * eps)
    ours = croft_energy_gradient_penalty(feats, txt)
    assert ours.item() == pytest.approx(grad.pow(2).sum().item(), rel=1e-6)
    # the penalty's own gradient reaches the features (create_graph): checked against finite differences
    feats.requires_grad_(True)
    torch.autograd.gradcheck(lambda f: croft_energy_gradient_penalty(f.double(), txt), (feats,))


def test_croft_loss_is_ce_plus_lambda_penalty():
    model = build_classifier("clipood-test-tiny", class_names=CLASSES)
    images, target = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 1])
    method = create_method("croft", croft_lambda=7.0)
    torch.manual_seed(0)
    feats = model.forward_features(images)
    ce = F.cross_entropy(100.0 * F.normalize(feats, dim=-1) @ model.head.weight.T, target)
    expected = ce + 7.0 * croft_energy_gradient_penalty(feats, model.head.weight)
    assert method.loss(model, images, target).item() == pytest.approx(expected.item(), rel=1e-5)


def _text_tower_model():
    """A tiny classifier whose head is its own text tower's class embeddings (as CLIP's zero-shot head is)."""
    model = build_classifier("clipood-test-tiny", class_names=CLASSES, with_text_tower=True)
    model.set_classes(CLASSES)
    return model


def test_carft_keeps_a_frozen_zero_shot_teacher_and_context_prompts():
    model = _text_tower_model()
    templates = ["a photo of a {}.", "a sketch of a {}.", "a painting of a {}."]
    method = create_method("car_ft", carft_lambda=2.0, context_templates=templates)
    method.prepare(model)
    tower = model.text_tower
    for k, t in enumerate(templates):  # each context weight: that template's class embeddings averaged
        per_class = torch.stack([tower.class_embeddings([c], [t], torch.device("cpu"))[0] for c in CLASSES])
        torch.testing.assert_close(method.context[k], F.normalize(per_class.mean(0), dim=0))
    images, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = method.loss(model, images, target)
    feats = model.forward_features(images)
    ce = F.cross_entropy(100.0 * F.normalize(feats, dim=-1) @ model.head.weight.T, target)
    assert loss.item() == pytest.approx(ce.item(), rel=1e-5)  # the student is still the teacher: KL = 0
    with torch.no_grad():
        model.visual.conv1.weight.add_(torch.randn_like(model.visual.conv1.weight))  # moves the student only
    kl = carft_context_kl(method.teacher(images), model.forward_features(images), method.context, temperature=0.01)
    assert kl.item() > 0
    assert method.loss(model, images, target).item() == pytest.approx(
        (F.cross_entropy(100.0 * F.normalize(model.forward_features(images), dim=-1) @ model.head.weight.T, target)
         + 2.0 * kl).item(), rel=1e-5)
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert all(p.requires_grad for p in model.visual.parameters())


def test_carft_without_a_text_tower_says_how_to_get_one():
    with pytest.raises(ConfigError, match="--clip-pretrained"):
        create_method("car_ft").prepare(build_classifier("clipood-test-tiny", class_names=CLASSES))


def test_carft_context_averages_the_training_classes_only():
    """Restricted to the training classes (train.py: the base classes), the new classes' names never reach the
    regulariser."""
    model, templates, base = _text_tower_model(), ["a photo of a {}.", "a sketch of a {}."], CLASSES[:2]
    method = create_method("car_ft", context_templates=templates)
    method.restrict_to([0, 1], num_classes=len(CLASSES))
    method.prepare(model)
    for k, t in enumerate(templates):
        per_class = torch.stack([model.text_tower.class_embeddings([c], [t], torch.device("cpu"))[0] for c in base])
        torch.testing.assert_close(method.context[k], F.normalize(per_class.mean(0), dim=0))
    everything = create_method("car_ft", context_templates=templates)
    everything.prepare(model)
    assert not torch.allclose(everything.context, method.context)


def test_carft_refuses_a_text_tower_that_did_not_make_the_head():
    """A text tower built with weights of its own (random here) beside a head it did not embed: the context
    prompts would be in another space than the classes, so car_ft says so instead of training."""
    model = build_classifier("clipood-test-tiny", class_names=CLASSES, with_text_tower=True)  # random head
    with pytest.raises(ConfigError) as exc:
        create_method("car_ft").prepare(model)
    assert str(exc.value).startswith("car_ft: the model's text tower does not reproduce its class head (lowest cosine ")
    assert "over 4 classes, 0.99 needed)" in str(exc.value) and "--clip-pretrained <tag>" in str(exc.value)
    model.set_classes(CLASSES)
    create_method("car_ft", context_templates=["a {}."]).prepare(model)  # its own embeddings: accepted


def test_lp_ft_trains_only_the_text_initialised_head_then_everything():
    model = build_classifier("clipood-test-tiny", class_names=CLASSES)
    text_head = model.head.weight.clone()
    method = create_method("lp_ft", lp_steps=1)
    method.prepare(model)
    assert isinstance(model.head.weight, torch.nn.Parameter)
    torch.testing.assert_close(model.head.weight.detach(), text_head)  # LP starts from the text embeddings
    assert set(model.state_dict()) == set(build_classifier("clipood-test-tiny", class_names=CLASSES).state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    tower = {k: v.clone() for k, v in model.visual.state_dict().items()}
    loss = method.loss(model, images, target)
    expected = F.cross_entropy(100.0 * F.normalize(model.visual(images), dim=-1) @ model.head.weight.T, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    assert all(torch.equal(v, model.visual.state_dict()[k]) for k, v in tower.items())  # LP: backbone untouched
    assert not torch.equal(model.head.weight.detach(), text_head)
    method.step = 1  # FT phase
    method.loss(model, images, target).backward()
    optimizer.step()
    assert not torch.equal(tower["conv1.weight"], model.visual.conv1.weight)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(root, per_class=4, shard_size=8)
    model = build_classifier("clipood-test-tiny", num_classes=4)
    model.pretrained_cfg = {"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 1.0,
                            "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    transform = create_transform(**resolve_data_config({}, model=model), is_training=True)
    loader = create_loader(root, "train", transform=transform, batch_size=4, is_training=True, domains=["photo", "art"])
    return [next(iter(loader))[:2] for _ in range(2)]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_two_steps_to_finite_changed_weights(name, batches):
    model = _text_tower_model()
    method = create_method(name, lp_steps=1, context_templates=["a photo of a {}.", "a sketch of a {}."])
    method.prepare(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = TrainStep(model, method)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i, (images, target) in enumerate(batches):
        method.step = i
        loss = step(images, target)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_restricted_to_the_training_classes_never_scores_the_other_rows(name):
    """CoOp's base-to-new protocol: the new classes' head rows take no part in training, not even as negatives.
    Changing them changes neither the loss nor the gradient, and they get no gradient themselves (LP-FT)."""
    model = _text_tower_model()
    method = create_method(name, lp_steps=0, context_templates=["a photo of a {}."])
    method.restrict_to([2, 0], num_classes=4)  # training classes 2 and 0, in that order
    method.prepare(model)
    images, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 2, 2, 0])
    loss = method.loss(model, images, target)
    loss.backward()
    grad = model.visual.conv1.weight.grad.clone()
    if isinstance(model.head.weight, torch.nn.Parameter):
        assert torch.count_nonzero(model.head.weight.grad[[1, 3]]) == 0
    model.zero_grad()
    with torch.no_grad():
        model.head.weight[[1, 3]] = torch.randn(2, model.head.weight.shape[1])
    moved = method.loss(model, images, target)
    moved.backward()
    assert moved.item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(model.visual.conv1.weight.grad, grad)


def test_erm_restricted_to_the_training_classes_is_cross_entropy_over_their_rows():
    model = _text_tower_model()
    method = create_method("erm")
    method.restrict_to([2, 0], num_classes=4)
    images, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 2, 2, 0])
    features = F.normalize(model.forward_features(images), dim=-1)
    by_hand = F.cross_entropy(100.0 * features @ model.head.weight[[2, 0]].T, torch.tensor([1, 0, 0, 1]))
    assert method.loss(model, images, target).item() == pytest.approx(by_hand.item(), rel=1e-5)
    method.restrict_to([0, 1, 2, 3], num_classes=4)  # every class: the whole head, targets unchanged
    whole = F.cross_entropy(100.0 * features @ model.head.weight.T, target)
    assert method.loss(model, images, target).item() == pytest.approx(whole.item(), rel=1e-5)


def test_lp_fts_trained_head_gets_no_weight_decay():
    """Only the training classes' rows get gradients: decay alone would shrink the new classes' zero-shot rows."""
    from timm.optim import create_optimizer_v2

    model = _text_tower_model()
    create_method("lp_ft", lp_steps=1).prepare(model)
    groups = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.1).param_groups
    (head_group,) = [g for g in groups if any(p is model.head.weight for p in g["params"])]
    assert head_group["weight_decay"] == 0.0
    assert any(g["weight_decay"] == 0.1 for g in groups)
