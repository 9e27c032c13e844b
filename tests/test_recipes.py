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


# ---------------------------------------------------------------------------------------------- number ranges


def _numeric_fields(schema, where=""):
    """(dotted key, annotation type int/float, Range) of every number in `schema`, sections included."""
    import dataclasses
    import typing

    from sage_cli.config import numeric_type, range_of

    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, f"{where}{f.name}.")
        elif numeric_type(tp) is not None:
            yield f"{where}{f.name}", numeric_type(tp), range_of(schema, f.name)


NUMBERS = [(kind, key, tp, rng) for kind, schema in SCHEMAS.items() for key, tp, rng in _numeric_fields(schema)]


def test_the_walk_sees_every_kind_of_number():
    keys = {(kind, key) for kind, key, _, _ in NUMBERS}
    assert {("sfe", "train.batch_size"), ("edpo", "edpo.beta"), ("facts", "endpoint.timeout"),
            ("score", "retries_malformed")} <= keys
    assert len({kind for kind, *_ in NUMBERS}) == len(SCHEMAS)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_default_number_is_in_its_range(kind):
    import functools

    cfg = SCHEMAS[kind]()
    for key, _, rng in _numeric_fields(SCHEMAS[kind]):
        value = functools.reduce(getattr, key.split("."), cfg)
        if value is not None:
            rng.check(value, key)


def test_every_number_out_of_range_is_one_line_naming_the_key(tmp_path):
    """Every int/float field of every recipe kind (read from the schemas), given values just outside its
    range (and nan, inf for floats), fails at load time with one line naming the key."""
    files = {}
    for kind in SCHEMAS:
        files[kind] = tmp_path / f"{kind}.yaml"
        files[kind].write_text(f"kind: {kind}\n")
    tried = 0
    for kind, key, tp, rng in NUMBERS:
        assert rng is not None, f"{kind}: {key} has no range"
        bad = rng.bad_values(tp)
        assert bad, f"{kind}: {key} has a range that refuses nothing"
        for value in bad:
            with pytest.raises(SageError) as e:
                load_recipe(str(files[kind]), kind, [f"{key}={value!r}"])
            msg = str(e.value)
            assert f"{key} must be" in msg and "\n" not in msg, (kind, key, value, msg)
            tried += 1
    assert tried >= 2 * len(NUMBERS)


@pytest.mark.parametrize("override, ok", [
    ("train.max_steps=null", True), ("train.save_every=null", True), ("model.image_size=null", True),
    ("optim.warmup_steps=0", True), ("optim.grad_clip=0", True), ("edpo.eta=0", True), ("lora.dropout=0", True),
    ("optim.lr=2e-6", True), ("train.seed=4294967295", True),
    ("train.seed=4294967296", False), ("optim.lr=-1", False), ("optim.lr=.nan", False), ("edpo.beta=0", False),
])
def test_range_edges(override, ok):
    if ok:
        load_recipe("sage-smol", "edpo", [override])
    else:
        with pytest.raises(SageError, match=override.split("=")[0] + " must be"):
            load_recipe("sage-smol", "edpo", [override])


@pytest.mark.parametrize("argv", [
    ["train", "sfe", "train.batch_size=0", "--dry-run"],
    ["train", "sfe", "optim.lr=nan", "--out", "{out}"],
    ["train", "edpo", "train.epochs=-1", "--out", "{out}"],
    ["facts", "extract", "batch_size=0", "--from", "{out}", "--out", "{out}/facts.jsonl"],
])
def test_commands_refuse_a_bad_number_before_writing_anything(argv, tmp_path, capsys):
    out = tmp_path / "run"
    assert run([a.replace("{out}", str(out)) for a in argv]) == 1
    err = capsys.readouterr().err
    key = next(a for a in argv if "=" in a).split("=")[0]
    assert err.startswith("error: ") and f"{key} must be" in err and err.count("\n") == 1
    assert not out.exists()
