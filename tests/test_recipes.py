"""Recipes: every shipped one validates; overrides, hints and type errors behave."""

import pytest

from sage_cli.cli import run
from sage_cli.config import SCHEMAS, apply_overrides, list_recipes, load_recipe, parse_override
from sage_cli.errors import SageError

SHIPPED = list_recipes()


def test_there_is_a_recipe_per_stage_and_for_facts():
    kinds = {name.split("/")[0] for name in SHIPPED}
    assert {"sfe", "edpo", "facts"} <= kinds


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_recipe_validates(name):
    cfg = load_recipe(name)
    assert type(cfg) is SCHEMAS[name.split("/")[0]]


def test_override_sets_nested_values_with_yaml_types():
    cfg = load_recipe("sage-smol", "sfe", ["optim.lr=2e-6", "train.batch_size=8", "lora.enabled=false",
                                            "lora.target_modules=[q_proj, v_proj]", "model.checkpoint=null"])
    assert cfg.optim.lr == 2e-6 and cfg.train.batch_size == 8 and cfg.lora.enabled is False
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.model.checkpoint is None


def test_override_does_not_touch_the_original():
    data = {"a": {"b": 1}}
    assert apply_overrides(data, ["a.b=2"]) == {"a": {"b": 2}} and data == {"a": {"b": 1}}


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1"])
def test_malformed_override(text):
    with pytest.raises(SageError, match="key.sub=value"):
        parse_override(text)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(SageError, match=r"unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_recipe("sage-smol", "sfe", ["optim.lrr=1"])


def test_unknown_section_suggests():
    with pytest.raises(SageError, match="did you mean 'optim'"):
        load_recipe("sage-smol", "sfe", ["optm.lr=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=two", "must be an integer"),
        ("train.batch_size=1.5", "must be an integer"),
        ("optim.lr=fast", "must be a number"),
        ("lora.enabled=maybe", "must be true or false"),
        ("model.facts_mode=fee", "did you mean 'fe'"),
        ("train=3", "must be a section"),
        ("lora.target_modules=q_proj", "must be a list"),
    ],
)
def test_type_errors_name_the_key(override, message):
    with pytest.raises(SageError, match=message):
        load_recipe("sage-smol", "sfe", [override])


def test_kind_mismatch():
    with pytest.raises(SageError, match="kind 'sfe'; this command needs kind 'edpo'"):
        load_recipe("sfe/sage-smol", "edpo")


def test_unknown_recipe_name_hints():
    with pytest.raises(SageError, match="did you mean 'sage-smol'"):
        load_recipe("sage-smoll", "sfe")


def test_recipe_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: sfe\nmodel: [unclosed\n")
    with pytest.raises(SageError, match="not valid YAML"):
        load_recipe(str(bad))
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SageError, match="must be a mapping"):
        load_recipe(str(bad))
    bad.write_text("kind: nonsense\n")
    with pytest.raises(SageError, match="'kind' must be one of"):
        load_recipe(str(bad))
    with pytest.raises(SageError, match="recipe file not found"):
        load_recipe(str(tmp_path / "missing.yaml"))


def test_print_config_shows_the_resolved_recipe(capsys):
    assert run(["train", "sfe", "--print-config", "optim.lr=3e-5"]) == 0
    out = capsys.readouterr().out
    assert "lr: 3.0e-05" in out and "kind: sfe" in out and "gradient_checkpointing" in out


def test_command_reports_bad_override_in_one_line(capsys):
    assert run(["train", "edpo", "edpo.betta=1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'edpo.beta'" in err


def test_recipes_ls_show_validate_cp(capsys, tmp_path):
    assert run(["recipes", "ls"]) == 0
    assert "sfe/sage-smol" in capsys.readouterr().out
    assert run(["recipes", "show", "sfe/sage-smol"]) == 0
    assert "# " in capsys.readouterr().out  # the file as written, comments included
    assert run(["recipes", "show", "sfe/sage-smol", "--resolved"]) == 0
    assert "weight_decay" in capsys.readouterr().out
    assert run(["recipes", "validate"]) == 0
    assert run(["recipes", "cp", "edpo/sage-smol", str(tmp_path)]) == 0
    copied = tmp_path / "sage-smol.yaml"
    assert copied.exists()
    assert run(["recipes", "cp", "edpo/sage-smol", str(tmp_path)]) == 1  # exists, no --force
    copied.write_text(copied.read_text().replace("beta:", "betta:"))
    capsys.readouterr()
    assert run(["recipes", "validate", str(copied)]) == 1
    assert "did you mean 'edpo.beta'" in capsys.readouterr().out
    assert run(["train", "edpo", "--recipe", str(copied)]) == 1


def test_short_recipe_names_everywhere(capsys, tmp_path):
    """`sage-smol` names sfe/sage-smol and edpo/sage-smol: show and validate take both, cp asks for one."""
    assert run(["recipes", "show", "sage-smol"]) == 0
    out = capsys.readouterr().out
    assert "# --- edpo/sage-smol ---" in out and "# --- sfe/sage-smol ---" in out and "kind: sfe" in out
    assert run(["recipes", "validate", "sage-smol"]) == 0
    assert capsys.readouterr().out.count("ok ") == 2
    assert run(["recipes", "cp", "sage-smol", str(tmp_path / "x.yaml")]) == 1
    err = capsys.readouterr().err
    assert "names 2 recipes (edpo/sage-smol, sfe/sage-smol)" in err and len(err.strip().splitlines()) == 1
    assert run(["recipes", "show", "internvl2-8b", "--resolved"]) == 0  # each kind's resolved recipe
    assert run(["recipes", "cp", "sfe/sage-smol", str(tmp_path / "x.yaml")]) == 0
