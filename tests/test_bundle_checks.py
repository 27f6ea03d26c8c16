"""diskrobust.bundle_checks: strict settings, command-line override checks, the error printer.

The checks run here on the attack bundle's real config files; `tests/test_bundle_attack.py` runs them
through `python -m monai.bundle run` subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from diskrobust import bundle_checks as bc
from diskrobust.data.errors import ConfigError, DataError


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), ("true", True), ("False", False), ("YES", True), ("off", False),
    ("0", False), ("1", True), (0, False), (1, True), (" true ", True),
])
def test_as_bool_accepts_booleans_and_their_words(value, expected):
    assert bc.as_bool(value, "x") is expected


@pytest.mark.parametrize("value", ["maybe", "", "flase", 2, -1, 0.5, None, [], [False], "None"])
def test_as_bool_refuses_everything_else(value):
    # bool("false") and bool([False]) are True: a strict reading must refuse instead of guessing
    with pytest.raises(ConfigError, match=r"ood#enabled: expected true or false"):
        bc.as_bool(value, "ood#enabled")


def test_check_number_ranges_and_types():
    assert bc.check_number(0.5, "eps", minimum=0, maximum=1, min_inclusive=False) == 0.5
    assert bc.check_number(1, "eps", minimum=0, maximum=1, min_inclusive=False) == 1
    assert bc.check_number(3.0, "steps", minimum=1, integer=True) == 3
    for bad, match in [(0, r"0 < eps <= 1"), (5, r"0 < eps <= 1"), (-0.1, r"0 < eps"), ("0.1", "expected a number"),
                       (True, "expected a number"), (float("nan"), "finite")]:
        with pytest.raises(ConfigError, match=match):
            bc.check_number(bad, "eps", minimum=0, maximum=1, min_inclusive=False)
    with pytest.raises(ConfigError, match="expected an integer"):
        bc.check_number(2.5, "steps", minimum=1, integer=True)


def test_command_line_is_read_like_fire(tmp_path):
    cmd = bc.parse_bundle_command([
        "evaluating", "--config_file", "['a.json', 'b.json']", "--ind#steps=5", "--epochs", "3", "--progress",
        "false", "--flag", "--width", "-8", "--net::x", "{'a': false}", "--", "--help"])
    assert cmd.run_args == {"run_id": "evaluating", "config_file": ["a.json", "b.json"]}
    assert cmd.overrides == {"ind#steps": 5, "epochs": 3, "progress": "false", "flag": True, "width": -8,
                             "net::x": {"a": "false"}}
    assert cmd.config_files == ["a.json", "b.json"]
    assert cmd.spelled["ind#steps"] == "--ind#steps=5" and cmd.spelled["epochs"] == "--epochs 3"
    assert bc.parse_bundle_command(["--config_file", "a.json,b.json"]).config_files == ["a.json", "b.json"]
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": "c.json", "run_id": "evaluating", "epoch": 2}))
    cmd = bc.parse_bundle_command(["--args_file", str(args), "--epochs", "1"])
    assert cmd.run_args["config_file"] == "c.json" and cmd.overrides == {"epochs": 1, "epoch": 2}


CONFIG = {"epochs": 8, "profile": "cpu-quick", "progress": True, "patch_spacing_mm": 1,
          "ind": {"steps": 10, "step_ratio": 0.2, "heads": ["points"], "random_start": True},
          "network_def": {"_target_": "Net", "width": 16, "seg_head": True},
          "initialize": ["$x"], "run": ["$y"], "evaluating": ["$y"]}


@pytest.mark.parametrize("overrides, expected", [
    ({"epoch": 1}, r"unknown setting 'epoch' \(closest: 'epochs'\)"),
    ({"profle": "paper"}, r"unknown setting 'profle' \(closest: 'profile'"),
    ({"ind#stesp": 5}, r"unknown setting 'ind#stesp' \(closest: 'ind#steps'"),
    ({"ind::stesp": 5}, r"unknown setting 'ind#stesp'"),
    ({"network_def#widht": 8}, r"closest: 'network_def#width'"),
    ({"progress": "maybe"}, r"'progress' expects true or false, got 'maybe'"),
    ({"ind#random_start": 2}, r"'ind#random_start' expects true or false"),
    ({"network_def#seg_head": "false"}, r"'network_def#seg_head' expects True or False, got 'false'"),
    ({"epochs": "three"}, r"'epochs' expects a number"),
    ({"ind#heads": "points"}, r"'ind#heads' expects a list"),
])
def test_unknown_or_mistyped_overrides_are_refused(overrides, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        bc.check_overrides(overrides, CONFIG, source="evaluate.json")
    assert str(info.value).startswith("evaluate.json: ") and "Nothing was run" in str(info.value)


def test_valid_overrides_pass():
    bc.check_overrides({"epochs": 2, "ind#steps": 5, "ind::step_ratio": 0.1, "progress": "false",
                        "ind#random_start": False, "network_def#seg_head": False, "network_def#_disabled_": True,
                        "patch_spacing_mm": 0.5, "ind#heads": ["points", "seg"], "network_def#width": "$@epochs * 2",
                        "_meta_#version": "1"}, CONFIG, run_id="evaluating")


def test_retired_settings_and_run_ids_are_explained():
    retired = {"sweep_overrides": "give each setting as an id, e.g. --ind#steps 5"}
    with pytest.raises(ConfigError, match=r"'sweep_overrides' is no longer a setting: give each setting as an id"):
        bc.check_overrides({"sweep_overrides": {"ind": {"steps": 5}}}, CONFIG, retired=retired)
    with pytest.raises(ConfigError, match=r"closest: 'sweep_overrides'; 'sweep_overrides' is no longer a setting"):
        bc.check_overrides({"sweep_override": {}}, CONFIG, retired=retired)
    with pytest.raises(ConfigError, match=r"run id 'evaluate' is not in the config.*closest: 'evaluating'"):
        bc.check_overrides({}, CONFIG, run_id="evaluate")


def test_check_command_line_reads_real_config_files(repo_root, monkeypatch):
    evaluate = str(repo_root / "bundles" / "lumbar_disk_attack" / "configs" / "evaluate.json")
    argv = [sys.executable, "run", "--config_file", evaluate, "--output_dir", "/tmp/x", "--width", "8", "--ind#steps=3"]
    bc.check_command_line(argv)
    with pytest.raises(ConfigError, match=r"evaluate\.json: .*unknown setting 'output_dri' \(closest: 'output_dir'"):
        bc.check_command_line(argv + ["--output_dri", "/tmp/y"])
    with pytest.raises(ConfigError, match=r"config_file: no such file"):
        bc.check_command_line([sys.executable, "run", "--config_file", "nowhere.json"])
    # created programmatically (here: under pytest), the check stays out of the way unless told
    monkeypatch.setattr(sys, "argv", ["pytest", "--output_dri", "x"])
    bc.check_command_line()
    monkeypatch.setattr(sys, "argv", ["/x/monai/bundle/__main__.py", "run", "--config_file", evaluate, "--epoch", "1"])
    with pytest.raises(ConfigError, match="'epoch'"):
        bc.check_command_line()


def test_project_error_is_found_through_wrapping():
    try:
        try:
            raise DataError("model.pt", "checkpoint file not found")
        except DataError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as outer:
        assert isinstance(bc.project_error(outer), DataError)
    try:
        try:
            raise ConfigError("a.json", "ind#steps", "must be >= 1")
        except ConfigError:
            raise RuntimeError("wrapped without from")  # only __context__
    except RuntimeError as outer:
        assert str(bc.project_error(outer)) == "a.json: ind#steps: must be >= 1"
    assert bc.project_error(RuntimeError("plain")) is None


def test_error_printer_puts_the_project_message_last():
    code = ("import diskrobust.bundle_checks\n"
            "from diskrobust.data.errors import DataError\n"
            "def deep(n):\n    return deep(n - 1) if n else (_ for _ in ()).throw(DataError('x.pt', 'bad weights'))\n"
            "try:\n    deep(30)\n"
            "except DataError as e:\n    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "x.pt: bad weights" in lines[-1]
    assert any("Traceback" in line for line in lines[:-3]) and "RuntimeError: Failed to evaluate" in proc.stderr


def test_settings_that_take_a_second_kind_of_value(repo_root, monkeypatch):
    """`--num_samples None` (every test patch) and `--micro_batch auto` pass the real bundles' own check
    expressions; any other value of the wrong type is still refused."""
    import diskrobust.robustness.workflow  # noqa: F401  (the expressions name these modules)
    import diskrobust.training.step  # noqa: F401
    from monai.bundle import ConfigParser
    from monai.bundle.config_item import ConfigExpression

    def run_check(config_file, *overrides):
        config = ConfigParser.load_config_file(str(config_file))
        [expr] = [x for x in config["initialize"] if "check_command_line" in x]
        monkeypatch.setattr(sys, "argv", ["/x/monai/bundle/__main__.py", "run", "--config_file", str(config_file),
                                          *overrides])
        try:
            ConfigExpression(expr, globals={"diskrobust": __import__("diskrobust")}).evaluate()
        except RuntimeError as e:  # MONAI wraps what an expression raises
            raise e.__cause__ from None

    attack = repo_root / "bundles" / "lumbar_disk_attack" / "configs" / "evaluate.json"
    train = repo_root / "bundles" / "lumbar_disk_shape" / "configs" / "train.json"
    run_check(attack, "--num_samples", "None", "--ood#num_samples", "None")
    with pytest.raises(ConfigError, match=r"'num_samples' expects a number or None, got 'all'"):
        run_check(attack, "--num_samples", "all")
    with pytest.raises(ConfigError, match=r"'batch_size' expects a number, got None"):
        run_check(attack, "--batch_size", "None")
    run_check(train, "--micro_batch", "auto", "--channels_last", "auto", "--micro_batch", "8")
    with pytest.raises(ConfigError, match=r"'channels_last' expects true or false or 'auto', got 'sometimes'"):
        run_check(train, "--channels_last", "sometimes")
    run_check(attack, "--channels_last", "auto", "--chunk_size", "8", "--chunk_size", "auto", "--ind#precision", "bf16")
    with pytest.raises(ConfigError, match=r"'channels_last' expects true or false or 'auto', got 'ture'"):
        run_check(attack, "--channels_last", "ture")
