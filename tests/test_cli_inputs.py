"""Issue 10, items 7-8 at the CLI level: non-finite numbers, seeds beyond what the generators take, an output name
longer than the file system allows. Each exits 2 with one line naming the option and value, before any work."""

import math

import pytest
from helpers import assert_usage_error, files_under, run_cli

from auditnn.errors import AuditError
from auditnn.values import parse_number, parse_number_list


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "Infinity", "1e999"])
def test_parse_number_refuses_non_finite_values_naming_option_and_value(text):
    with pytest.raises(AuditError, match=f"--eps value '{text}' is not a finite number"):
        parse_number(text, "--eps")


def test_parse_number_keeps_finite_values_exact():
    assert parse_number("8/255", "--eps") == 8 / 255 and parse_number(" 1e-3 ", "--lr") == 0.001
    assert parse_number_list("0,1/255,0", "--eps") == [0.0, 1 / 255]
    assert math.isfinite(parse_number("1e308", "--eps"))


ATTACK = ("attack", "--method", "fgsm", "--epochs", "1", "--test-per-class", "2", "--device", "cpu")
BAD = [
    ([*ATTACK, "--norm", "linf", "--eps", "inf"], ["--eps", "'inf'", "finite"]),
    (["attack", "--norm", "l2", "--eps", "0,inf", "--device", "cpu"], ["--eps", "'inf'", "finite"]),
    (["attack", "--step-size", "inf", "--device", "cpu"], ["--step-size", "'inf'", "finite"]),
    ([*ATTACK, "--mean", "inf"], ["--mean", "'inf'", "finite"]),
    ([*ATTACK, "--std", "nan"], ["--std", "'nan'", "finite"]),
    ([*ATTACK, "--std", "inf"], ["--std", "'inf'", "finite"]),
    (["shortcut", "--lr", "inf", "--device", "cpu"], ["--lr", "inf", "finite"]),
    (["shortcut", "--lr", "nan", "--device", "cpu"], ["--lr", "nan", "finite"]),
    (["train", "--data", "nowhere", "--lr", "inf"], ["--lr", "inf", "finite"]),
    (["data", "build", "--rho", "nan"], ["--rho", "'nan'", "finite"]),
    (["data", "build", "--seed", str(2**64)], ["--seed", str(2**64), "4294967295"]),
    ([*ATTACK, "--seed", str(2**70)], ["--seed", str(2**70)]),
    (["shortcut", "--seed", "-1"], ["--seed", "-1"]),
    # review of issue 10: finite but absurd values overflowed into exit 3
    (["attack", "--norm", "l2", "--eps", "1e300", "--device", "cpu"], ["eps 1e+300", "0 <= eps <= 10000"]),
    (["shortcut", "--epochs", "1", "--lr", "1e300", "--device", "cpu"], ["learning rate 1e+300", "at most 1000"]),
    (["shortcut", "--epochs", "1", "--width", "99999999999999999999", "--device", "cpu"], ["width", "at most 65536"]),
]


@pytest.mark.parametrize("args,needles", BAD, ids=[" ".join(b[0][-2:]) for b in BAD])
def test_bad_numbers_exit_2_with_one_line_and_write_nothing(capsys, tmp_path, args, needles):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *args, "--out", out)
    assert_usage_error(code, err, *needles)
    assert files_under(tmp_path) == []


def test_an_out_name_longer_than_the_file_system_allows_exits_2_naming_it(capsys, tmp_path):
    out = tmp_path / ("a" * 300)
    code, _, err = run_cli(capsys, "data", "build", "--test-per-class", "2", "--out", out)
    assert_usage_error(code, err, str(out), "cannot be written")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_name_too_long_is_a_usage_error_for_per_file_outputs_too(tmp_path):
    from auditnn.io import output_folder

    with pytest.raises(AuditError, match="cannot be written [(]File name too long[)]"):
        with output_folder(tmp_path / ("g" * 300)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_mean_and_std_keep_every_value_in_order():
    """Review of issue 10: --std 0.25,0.25,0.5 lost a value (the list was de-duplicated like an eps list)."""
    from auditnn.cli.options import user_model

    spec = user_model("cnn", None, "0.5,0.5,0.4", "0.25,0.25,0.5")
    assert spec.mean == [0.5, 0.5, 0.4] and spec.std == [0.25, 0.25, 0.5]
