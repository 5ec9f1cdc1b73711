"""The mitigation methods' cores, each recomputed a second way: reweighting from hand counts, one group DRO step by
hand, a fit step on a weighted or DRO loss against plain torch, JTT's error set against a plain forward pass."""

import copy
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from auditnn.data.controlled import BuildConfig, Split, build_controlled
from auditnn.errors import AuditError
from auditnn.shortcut.metrics import reliance_from_predictions
from auditnn.shortcut.mitigate import (
    METHODS,
    MitigationConfig,
    balancing_weights,
    check_dfr_data,
    dfr_groups,
    group_ids,
    group_names,
    jtt_errors,
    jtt_weights,
    parse_methods,
)
from auditnn.train import GroupDRO, TrainConfig, fit

CPU = torch.device("cpu")


def test_the_registry_holds_the_five_methods_in_order():
    assert list(METHODS) == ["erm", "reweight", "groupdro", "jtt", "dfr"]
    assert [m for m in METHODS if METHODS[m].needs_groups] == ["reweight", "groupdro", "dfr"]


def test_methods_keep_their_order_and_unknown_duplicate_or_empty_ones_are_refused():
    assert parse_methods("jtt, erm") == ["jtt", "erm"]
    with pytest.raises(AuditError, match="method 'erx' is unknown; allowed: .*erm.*dfr"):
        parse_methods("erm,erx")
    with pytest.raises(AuditError, match="names 'erm' twice; allowed: each method once"):
        parse_methods("erm,jtt,erm")
    with pytest.raises(AuditError, match="names no method"):
        parse_methods("erm,,jtt")


@pytest.mark.parametrize(
    "config,needle",
    [
        (MitigationConfig(upweight=0.5), "JTT upweight 0.5; allowed: a finite number >= 1"),
        (MitigationConfig(upweight=math.inf), "JTT upweight inf"),
        (MitigationConfig(jtt_epochs=0), "JTT epochs 0; allowed: at least 1"),
        (MitigationConfig(groupdro_eta=-1), "group DRO eta -1"),
        (MitigationConfig(groupdro_adjustment=math.nan), "group DRO adjustment nan"),
    ],
)
def test_bad_method_settings_are_refused_naming_the_value(config, needle):
    with pytest.raises(AuditError, match=needle):
        config.validate()


def test_reweighting_gives_each_group_the_same_total_weight_by_hand_counts():
    groups = torch.tensor([0, 0, 0, 1, 2, 2])  # counts 3, 1, 2, and group 3 empty: 3 groups present, N = 6
    weights = balancing_weights(groups, 4)
    assert weights.tolist() == pytest.approx([6 / 9, 6 / 9, 6 / 9, 2.0, 1.0, 1.0])  # N / (G * n_g)
    for g in range(3):
        assert float(weights[groups == g].sum()) == pytest.approx(2.0)  # N / G
    assert float(weights.mean()) == pytest.approx(1.0)


def test_groups_are_label_x_shortcut_and_named_as_the_metrics_name_them():
    labels, ids = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 1, 2])
    groups, count = group_ids(labels, ids, 3, None)
    assert groups.tolist() == [0, 5, 7, 8] and count == 9
    tagged, count = group_ids(labels, torch.tensor([-1, 1, -1, 1]), 3, target_class=1)
    assert tagged.tolist() == [0, 3, 4, 5] and count == 6
    classes = ["a", "b", "c"]
    for target in (None, 1):
        variants = 3 if target is None else 2
        n = 3
        metrics = reliance_from_predictions(
            torch.zeros(variants * n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.arange(3), 3, target
        )
        names = group_names(classes, target)
        for g in metrics.groups:
            sid = torch.tensor([g["shortcut_id"]])
            index, _ = group_ids(torch.tensor([g["label"]]), sid, 3, target)
            assert g["group"].replace("0", "a").replace("1", "b").replace("2", "c") == names[int(index)]


def test_one_group_dro_step_by_hand():
    dro = GroupDRO(torch.tensor([0, 0, 0, 1, 1, 2]), 4, eta=0.1, adjustment=1.0)  # n_g = 3, 2, 1, 0
    assert dro.q.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
    losses, groups = torch.tensor([1.0, 3.0, 2.0, 5.0]), torch.tensor([0, 0, 1, 2])
    loss = dro.loss(losses, groups)
    group_loss = [2.0, 2.0, 5.0, 0.0]  # batch means per group; group 3 absent
    adjusted = [group_loss[0] + 1 / math.sqrt(3), group_loss[1] + 1 / math.sqrt(2), group_loss[2] + 1.0]
    raw = [(1 / 3) * math.exp(0.1 * a) for a in adjusted]
    q = [r / sum(raw) for r in raw] + [0.0]
    assert dro.q.tolist() == pytest.approx(q)
    assert float(loss) == pytest.approx(sum(qg * lg for qg, lg in zip(q, group_loss, strict=True)))


def _tiny(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    return model, torch.rand(12, 1, 4, 4), torch.randint(0, 3, (12,))


def _one_manual_step(model: nn.Module, loss_of) -> nn.Module:  # noqa: ANN001
    manual = copy.deepcopy(model)
    optimizer = torch.optim.Adam(manual.parameters(), lr=0.05)
    optimizer.zero_grad()
    loss_of(manual).backward()
    optimizer.step()
    return manual


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_a_weighted_fit_step_is_adam_on_the_weighted_mean_loss():
    model, x, y = _tiny()
    weights = torch.tensor([1.0, 20.0, 1.0, 1.0, 20.0, 1.0, 1.0, 1.0, 1.0, 1.0, 20.0, 1.0])
    manual = _one_manual_step(
        model, lambda m: (weights * F.cross_entropy(m(x), y, reduction="none")).sum() / weights.sum()
    )
    one_batch = TrainConfig(epochs=1, batch_size=len(y), lr=0.05)
    erm = copy.deepcopy(model)
    fit(model, x, y, one_batch, device=CPU, weights=weights)
    _assert_same_weights(model, manual)
    fit(erm, x, y, one_batch, device=CPU)
    assert not torch.allclose(next(erm.parameters()), next(model.parameters()), atol=1e-4)  # the weights mattered


def test_a_group_dro_fit_step_is_adam_on_the_q_weighted_group_losses():
    model, x, y = _tiny(1)
    groups = torch.tensor([0, 1, 2, 0, 0, 1, 0, 0, 0, 2, 0, 0])

    def dro_loss(m: nn.Module) -> torch.Tensor:
        each = F.cross_entropy(m(x), y, reduction="none")
        means = torch.stack([each[groups == g].mean() for g in range(3)])
        counts = torch.tensor([8.0, 2.0, 2.0])
        raw = torch.full((3,), 1 / 3) * torch.exp(0.5 * (means.detach() + 2.0 / counts.sqrt()))
        q = raw / raw.sum()
        return (q * means).sum()

    manual = _one_manual_step(model, dro_loss)
    dro = GroupDRO(groups, 3, eta=0.5, adjustment=2.0)
    fit(model, x, y, TrainConfig(epochs=1, batch_size=len(y), lr=0.05), device=CPU, dro=dro)
    _assert_same_weights(model, manual)


def test_fit_refuses_weights_that_do_not_fit():
    model, x, y = _tiny()
    config = TrainConfig(epochs=1)
    with pytest.raises(AuditError, match=r"loss weights of shape \(3,\); allowed: \(12,\)"):
        fit(model, x, y, config, device=CPU, weights=torch.ones(3))
    with pytest.raises(AuditError, match="allowed: \\(12,\\) finite values >= 0"):
        fit(model, x, y, config, device=CPU, weights=-torch.ones(12))
    with pytest.raises(AuditError, match="one of them"):
        fit(model, x, y, config, device=CPU, weights=torch.ones(12), dro=GroupDRO(torch.zeros(12).long(), 1))


def test_jtt_errors_are_a_plain_forward_pass_and_they_weigh_upweight():
    model, x, y = _tiny(2)
    split = Split(x, y, torch.zeros_like(y), torch.zeros(12, 1, 4, 4, dtype=torch.bool), torch.arange(12))
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert 0 < int(wrong.sum()) < 12
    assert torch.equal(jtt_errors(model, split), wrong)
    assert jtt_weights(wrong, 20.0).tolist() == [20.0 if w else 1.0 for w in wrong.tolist()]


def test_dfr_groups_are_aligned_or_conflicting_and_a_split_too_small_is_refused_with_its_counts():
    labels, ids = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 0, 2])
    masks = torch.zeros(4, 1, 2, 2, dtype=torch.bool)
    split = Split(torch.zeros(4, 1, 2, 2), labels, ids, masks, torch.arange(4))
    assert dfr_groups(split, None).tolist() == [0, 0, 1, 1]
    check_dfr_data(split, None, 0.5)
    small = Split(split.images[:3], labels[:3], ids[:3], masks[:3], torch.arange(3))
    with pytest.raises(AuditError, match="rho 0.5 has 1 conflicting image\\(s\\) of 3; allowed: at least 2 per group"):
        check_dfr_data(small, None, 0.5)
    with pytest.raises(AuditError, match="the group-balanced held-out set has 1 conflicting .*more training data"):
        check_dfr_data(small, None, 0.8, balanced=True)  # not 'rho 0.8' nor 'a lower rho': it is planted at 1/2


def test_a_built_dataset_validation_split_at_rho_099_is_too_small_for_dfr():
    """150 digits at rho 0.99: one conflicting image, the count the message gives (the path of a built dataset
    folder, whose validation split is taken as it is)."""
    dataset = build_controlled(BuildConfig(rho=0.99))
    with pytest.raises(AuditError, match="has 1 conflicting image\\(s\\) of 150"):
        check_dfr_data(dataset.val, None, 0.99)


def test_dfr_held_out_set_is_the_validation_images_planted_again_half_aligned():
    """DFR retrains on a small group-balanced held-out set (the paper's setting): the validation split's own images
    (never a training or test image), planted again at rho 1/2. Before, it took the validation split at the training
    rho: 7 conflicting images of 150 at rho 0.95, none at 0.99 (refused)."""
    from auditnn.checks.shortcut import balanced_held_out
    from auditnn.data.controlled import aligned_with_label

    config = BuildConfig(rho=0.99)
    dataset = build_controlled(config)
    held_out = balanced_held_out(config, None)
    assert torch.equal(held_out.source_index, dataset.val.source_index)
    assert torch.equal(held_out.labels, dataset.val.labels)
    aligned = aligned_with_label(held_out.labels, held_out.shortcut_ids, None)
    assert abs(float(aligned.float().mean()) - 0.5) <= 1 / len(aligned)
    check_dfr_data(held_out, None, 0.5)  # both groups large enough: no refusal at rho 0.99 any more
    assert not set(held_out.source_index.tolist()) & set(dataset.train.source_index.tolist())


@pytest.mark.parametrize(
    "settings,needle",
    [
        ({"upweight": 5.0}, "upweight) 5.0 applies to jtt"),
        ({"mitigation": ["dfr"], "upweight": 5.0}, "upweight) 5.0 applies to jtt"),
        ({"mitigation": ["dfr"], "groupdro_eta": 0.5}, "groupdro_eta) 0.5 applies to groupdro"),
        ({"mitigation": ["jtt"], "jtt_epochs": 3, "epochs": 1}, "jtt_epochs) 3 is more than the 1 epochs"),
    ],
)
def test_an_audit_file_setting_of_a_method_not_run_is_refused_not_ignored(settings, needle):
    """Review: an audit file's upweight without jtt (or groupdro_eta with dfr only) ran and was silently ignored,
    while the CLI refused the same; a first JTT pass longer than the training was taken as given."""
    from auditnn.checks import KINDS
    from auditnn.checks.shortcut import ShortcutSettings
    from auditnn.subject import SubjectSpec

    with pytest.raises(AuditError, match=re.escape(needle)):
        KINDS["shortcut"].validate(ShortcutSettings(tag="watermark", **settings), SubjectSpec())


def test_a_groups_holdout_without_mitigation_is_refused():
    from auditnn.checks import KINDS
    from auditnn.checks.groups import GroupsSettings
    from auditnn.subject import SubjectSpec

    with pytest.raises(AuditError, match="holdout 0.3 applies to mitigation = 'dfr'"):
        KINDS["groups"].validate(GroupsSettings(groups="g.csv", attribute="a", holdout=0.3), SubjectSpec())
