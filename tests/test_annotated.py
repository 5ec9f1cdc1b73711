"""Annotated groups (issue 9, items 5 and 10): where each attribute value's class comes from, and metadata CSVs
whose column names or rows are awkward."""

import json

import pytest
import torch
import torch.nn as nn
from helpers import assert_usage_error, files_under, run_cli

from auditnn.data.shortcuts import make_shortcut
from auditnn.errors import AuditError
from auditnn.shortcut.annotated import (
    Annotations,
    annotated_metrics,
    association_from_csv,
    load_association,
    parse_association,
    read_groups,
    tag_sensitivity,
)

BIRDS = ["landbird", "waterbird"]


def waterbirds_split():
    """A Waterbirds-style evaluation split, place-balanced within each class but with three landbirds per
    waterbird: (label, place, prediction) per image; place 0 = land, 1 = water."""
    cells = [  # (label, place, correct, wrong)
        (0, 0, 5, 1),  # landbird on land: 5 of 6 right
        (0, 1, 2, 4),  # landbird on water: 2 of 6 right, the 4 others called waterbird
        (1, 1, 2, 0),  # waterbird on water: 2 of 2 right
        (1, 0, 1, 1),  # waterbird on land: 1 of 2 right, the other called landbird
    ]
    labels, places, preds = [], [], []
    for label, place, right, wrong in cells:
        labels += [label] * (right + wrong)
        places += [place] * (right + wrong)
        preds += [label] * right + [1 - label] * wrong
    notes = Annotations("place", ["land", "water"], torch.tensor(places), len(labels))
    return torch.tensor(preds), torch.tensor(labels), notes


def test_a_given_association_gives_the_hand_computed_gap_where_the_majority_rule_is_wrong():
    preds, labels, notes = waterbirds_split()
    given = parse_association("place=water:waterbird,land:landbird", notes, BIRDS)
    m = annotated_metrics(preds, labels, notes, BIRDS, association=given)
    assert m.associated_class == {"land": "landbird", "water": "waterbird"} and m.association_source == "given"
    assert m.warnings == []
    # aligned: landbird x land (5/6) + waterbird x water (2/2); conflicting: landbird x water (2/6) + waterbird x land (1/2)
    assert m.aligned_accuracy == pytest.approx(7 / 8) and m.conflicting_accuracy == pytest.approx(3 / 8)
    assert m.gap == pytest.approx(0.5)
    assert m.agreement_rate == pytest.approx(
        5 / 8
    )  # 4 landbirds called waterbird on water, 1 waterbird called landbird
    assert m.accuracy == pytest.approx(10 / 16)
    assert m.worst_group == "landbird x water" and m.worst_group_accuracy == pytest.approx(1 / 3)

    # Without an association, every place goes to the majority class (landbird) and the gap comes out wrong:
    majority = annotated_metrics(preds, labels, notes, BIRDS)
    assert majority.associated_class == {"land": "landbird", "water": "landbird"}
    assert majority.gap == pytest.approx(7 / 12 - 3 / 4)  # landbirds 7/12 right, waterbirds 3/4
    assert majority.association_source == "evaluated images"
    assert [w["code"] for w in majority.warnings] == ["association_from_evaluated_images"]
    assert "land: landbird, water: landbird" in majority.warnings[0]["message"]
    assert majority.worst_group_accuracy == m.worst_group_accuracy  # the headline does not depend on it


def test_a_tie_goes_to_the_first_class_and_is_named_in_a_warning():
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    places = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # every place holds two of each class
    preds = torch.tensor([0, 1, 1, 1, 0, 0, 0, 1])
    notes = Annotations("place", ["land", "water"], places, 8)
    m = annotated_metrics(preds, labels, notes, BIRDS)
    assert m.associated_class == {"land": "landbird", "water": "landbird"}
    codes = [w["code"] for w in m.warnings]
    assert codes == ["association_from_evaluated_images", "association_tie", "association_tie"]
    assert "'land'" in m.warnings[1]["message"] and "landbird and waterbird" in m.warnings[1]["message"]
    assert "took landbird" in m.warnings[1]["message"]
    # aligned = the landbirds: 1 of 2 right on land, 2 of 2 on water; conflicting = the waterbirds: 2/2 and 1/2
    assert m.aligned_accuracy == pytest.approx(3 / 4) and m.conflicting_accuracy == pytest.approx(3 / 4)


def test_the_association_can_come_from_a_training_csv(tmp_path):
    preds, labels, notes = waterbirds_split()
    train = tmp_path / "train.csv"
    rows = ["label,place"] + ["landbird,land"] * 9 + ["landbird,water"] + ["1,water"] * 4 + ["waterbird,land"]
    train.write_text("\n".join(rows) + "\n")
    association = association_from_csv(train, notes, BIRDS)
    m = annotated_metrics(preds, labels, notes, BIRDS, association=association)
    assert m.associated_class == {"land": "landbird", "water": "waterbird"} and m.gap == pytest.approx(0.5)
    assert m.association_source == f"training CSV '{train}'" and m.warnings == []

    train.write_text("label,place\nlandbird,land\nwaterbird,land\n")
    with pytest.raises(AuditError, match="'water' never occurs in column 'place' of training CSV"):
        association_from_csv(train, notes, BIRDS)
    train.write_text("label,place\nlandbird,land\npenguin,water\n")
    with pytest.raises(AuditError, match="row 3 has label 'penguin'; allowed: landbird, waterbird or 0 .. 1"):
        association_from_csv(train, notes, BIRDS)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("water", "'water' is not VALUE:CLASS"),
        ("water:penguin,land:landbird", "class 'penguin' is unknown; allowed: landbird, waterbird or 0 .. 1"),
        ("ocean:waterbird,land:landbird", "value 'ocean' does not occur in column 'place'; allowed: land or water"),
        ("water:waterbird", "gives no class for 'land'"),
        ("water:waterbird,water:landbird,land:0", "names 'water' twice"),
        ("sky=water:waterbird,land:landbird", "is for attribute 'sky'; the groups use 'place'"),
    ],
)
def test_a_bad_association_names_the_value_and_what_is_allowed(spec, message):
    _, _, notes = waterbirds_split()
    with pytest.raises(AuditError, match=message.replace(".", r"\.")):
        parse_association(spec, notes, BIRDS)


def test_association_messages_are_one_line_and_say_the_classes_once():
    """A value with a newline is quoted with its escape (the message stays one line); classes named by their own
    indices are listed once; the wording names no CLI flag (an audit file gives the same value)."""
    _, _, notes = waterbirds_split()
    with pytest.raises(AuditError) as caught:
        parse_association("water:1\nland:7", notes, BIRDS)
    assert str(caught.value) == (
        r"association 'water:1\nland:7': value 'water:1\nland' does not occur in column "
        "'place'; allowed: land or water"
    )
    with pytest.raises(AuditError) as caught:
        parse_association("water:1,land:9", notes, ["0", "1"])
    assert str(caught.value) == "association 'water:1,land:9': class '9' is unknown; allowed: 0 .. 1"


def test_class_indices_are_accepted_in_an_association():
    _, _, notes = waterbirds_split()
    assert parse_association("water:1,land:0", notes, BIRDS).classes == {"land": 0, "water": 1}
    assert load_association(notes, BIRDS) is None
    with pytest.raises(
        AuditError,
        match=r"give --associate \(audit file: associate\) or --associate-from \(audit file: associate_from\), not both",
    ):
        load_association(notes, BIRDS, "water:1,land:0", "train.csv")


def _images(n=4):
    """(labels, classes, names) of n images: what read_groups checks a CSV against (no pixels)."""
    return torch.tensor([0, 1, 0, 1][:n]), BIRDS, [f"a/{i}.png" for i in range(n)]


@pytest.mark.parametrize("column", ["my place", "class", "5_o_Clock_Shadow"])
def test_attribute_columns_that_are_not_python_identifiers_are_read(tmp_path, column):
    path = tmp_path / "meta.csv"
    path.write_text(f'file,label,"{column}"\na/0.png,0,x\na/1.png,waterbird,y\na/2.png,0,y\n')
    notes = read_groups(path, column, *_images())
    assert notes.values == ["x", "y"] and notes.codes.tolist() == [0, 1, 1, -1]


def test_duplicate_rows_for_one_file_that_disagree_are_refused(tmp_path):
    path = tmp_path / "meta.csv"
    path.write_text("file,label,place\na/0.png,0,land\na/1.png,1,water\n0.png,0,water\n")
    with pytest.raises(AuditError, match="meta.csv' gives image 'a/0.png' twice with different values: rows 2 and 4"):
        read_groups(path, "place", *_images())
    path.write_text("file,label,place\na/0.png,0,land\na/0.png,0,land\n")  # an exact repeat says nothing new
    assert read_groups(path, "place", *_images()).codes.tolist() == [0, -1, -1, -1]


def test_a_background_tag_on_a_grayscale_model_is_named_as_such():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(
        AuditError, match="tag 'background' makes the images RGB .3 channels.; the model takes 1 channel"
    ):
        tag_sensitivity(
            model, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 0, 1]), make_shortcut("background", 2), BIRDS
        )


FACTORY = """
import torch
import torch.nn as nn


class PixelVote(nn.Module):
    # predicts class 0 when pixel (0, 0) is lit, class 1 when pixel (0, 1) is: its answers are set by the test
    def forward(self, x):
        return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, 1]], dim=1)


def make():
    return PixelVote()


def gray():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
"""


@pytest.fixture
def birds_project(tmp_path, monkeypatch):
    preds, labels, notes = waterbirds_split()
    images = torch.zeros(len(labels), 1, 8, 8)
    images[torch.arange(len(labels)), 0, 0, preds] = 1.0
    torch.save({"images": images, "labels": labels, "classes": BIRDS}, tmp_path / "birds.pt")
    rows = ["index,label,place"] + [
        f"{i},{int(labels[i])},{notes.values[int(notes.codes[i])]}" for i in range(len(labels))
    ]
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "birds_factory.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)  # the factory module imports from the working folder
    return tmp_path


GROUPS = (
    "shortcut",
    "--model",
    "factory:birds_factory:make",
    "--data",
    "tensors:birds.pt",
    "--groups",
    "meta.csv",
    "--attribute",
    "place",
    "--device",
    "cpu",
)


def test_the_cli_takes_an_association_and_warns_without_one(capsys, birds_project):
    code, out, err = run_cli(capsys, *GROUPS, "--associate", "water:waterbird,land:landbird", "--out", "given")
    assert code == 0, err
    report = json.loads((birds_project / "given" / "report.json").read_text())
    assert report["results"]["groups"]["gap"] == pytest.approx(0.5) and report["warnings"] == []
    assert "warning" not in err
    code, out, err = run_cli(capsys, *GROUPS, "--out", "majority")
    assert code == 0, err
    report = json.loads((birds_project / "majority" / "report.json").read_text())
    assert report["results"]["groups"]["gap"] == pytest.approx(7 / 12 - 3 / 4)
    assert [w["code"] for w in report["warnings"]] == ["association_from_evaluated_images"]
    assert "association_from_evaluated_images" in err and "--associate" in err


def test_the_cli_refuses_a_bad_association_with_one_line(capsys, birds_project):
    code, _, err = run_cli(capsys, *GROUPS, "--associate", "water:penguin,land:landbird", "--out", "bad")
    assert_usage_error(code, err, "association 'water:penguin,land:landbird'", "'penguin'", "landbird, waterbird")
    assert files_under(birds_project / "bad") == []
    code, _, err = run_cli(capsys, *GROUPS, "--associate", "water:1\nland:7", "--out", "bad")
    assert_usage_error(code, err, r"association 'water:1\nland:7'", "allowed: land or water")
    code, _, err = run_cli(
        capsys,
        "shortcut",
        "--model",
        "factory:birds_factory:make",
        "--data",
        "tensors:birds.pt",
        "--associate",
        "water:waterbird",
        "--device",
        "cpu",
        "--out",
        "bad",
    )
    assert_usage_error(code, err, "--associate", "--groups")


def test_the_cli_says_the_background_tag_makes_rgb_images_for_a_grayscale_model(capsys, birds_project):
    code, _, err = run_cli(
        capsys,
        "shortcut",
        "--tag",
        "background",
        "--model",
        "factory:birds_factory:gray",
        "--data",
        "tensors:birds.pt",
        "--device",
        "cpu",
        "--out",
        "bg",
    )
    assert_usage_error(code, err, "tag 'background' makes the images RGB", "takes 1 channel")
    assert files_under(birds_project / "bg") == []


def test_an_audit_file_groups_check_takes_the_association_and_judges_its_gap(capsys, birds_project):
    """The audit file's `associate` and `associate_from` reach the measurement: the gate judges the gap of the given
    association (0.5, hand-computed above), and the majority rule's warning reaches report.warnings."""
    (birds_project / "train_meta.csv").write_text("index,label,place\n0,waterbird,water\n1,landbird,land\n")
    audit = """[model]\nsource = "factory:birds_factory:make"\n[data]\nsource = "tensors:birds.pt"\n[run]\ndevice = "cpu"\n
[[check]]\nkind = "groups"\nname = "given"\ngroups = "meta.csv"\nattribute = "place"
associate = "water:waterbird,land:landbird"\nmax_gap = 0.49\n
[[check]]\nkind = "groups"\nname = "from training csv"\ngroups = "meta.csv"\nattribute = "place"
associate_from = "train_meta.csv"\nmax_gap = 0.51\n
[[check]]\nkind = "groups"\nname = "majority"\ngroups = "meta.csv"\nattribute = "place"\nmax_gap = 0.51\n"""
    (birds_project / "audit.toml").write_text(audit)
    code, out, err = run_cli(capsys, "audit", "audit.toml", "--out", "gate")
    assert code == 1, err  # the given association's gap 0.5 exceeds 0.49
    report = json.loads((birds_project / "gate" / "report.json").read_text())
    gaps = {row["check"]: row["value"] for row in report["metrics"] if row["metric"] == "gap"}
    assert gaps == pytest.approx({"given": 0.5, "from training csv": 0.5, "majority": 7 / 12 - 3 / 4})
    verdict = {row["check"]: row["passed"] for row in report["results"]["verdict"]["rows"]}
    assert verdict == {"given": False, "from training csv": True, "majority": True}
    assert [(w["check"], w["code"]) for w in report["warnings"]] == [("majority", "association_from_evaluated_images")]


def test_an_audit_files_bad_association_is_named_without_a_cli_flag(capsys, birds_project):
    audit = """[model]\nsource = "factory:birds_factory:make"\n[data]\nsource = "tensors:birds.pt"\n[run]\ndevice = "cpu"\n
[[check]]\nkind = "groups"\nname = "given"\ngroups = "meta.csv"\nattribute = "place"
associate = "water:99,land:landbird"\nmax_gap = 0.49\n"""
    (birds_project / "audit.toml").write_text(audit)
    code, _, err = run_cli(capsys, "audit", "audit.toml", "--out", "gate")
    assert_usage_error(
        code,
        err,
        "association 'water:99,land:landbird': class '99' is unknown",
        "allowed: landbird, waterbird or 0 .. 1",
    )
    assert "--associate" not in err and files_under(birds_project / "gate") == []
