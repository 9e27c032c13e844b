"""Recipes: typed YAML configs, `key.sub=value` overrides, and did-you-mean validation.

A recipe is a YAML file whose top-level `kind` picks its schema (a dataclass below). Unknown keys,
wrong types, bad choices and numbers out of range (RANGES) fail with one line naming the key; a close
spelling is suggested. All of it is checked when the recipe is loaded, before a command writes anything.
Recipes are found by path, or by name under the recipe directory (`sfe/sage-smol`, or `sage-smol`
for a command that knows its kind).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sage_cli.errors import SageError, did_you_mean

# ---------------------------------------------------------------------------------------------
# Schemas. Defaults are the embedded CPU-friendly settings; the paper's large-backbone settings
# live in the recipes for those backbones.


@dataclass
class ModelConfig:
    backbone: str = "sage-smol"  # a registered name, a local path or a hub name (loaded offline)
    checkpoint: str | None = None  # a sage checkpoint directory to start from
    facts_mode: Literal["fe", "hard", "none"] = "fe"  # Fact[FE] fusion, Fact[Hard] plain text, or no facts
    num_facts: int = 8  # L_F: fact sentences used per image
    k_patches: int = 16  # K in Eq. 1
    fusion_heads: int = 4
    fusion_values: Literal["test", "diff", "test+sim"] = "test"  # "test" is the paper's Eq. 2
    peak_hint: bool = False  # add a learned direction × log(anomaly-map peak) to the question's tokens
    image_size: int | None = None  # None = the backbone's native size


@dataclass
class LoraConfig:
    enabled: bool = True  # False = full fine-tuning of the LLM
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class DataConfig:
    root: str | None = None  # dataset root the records' image paths are relative to
    train: str | None = None  # QA groups (sfe) or preference pairs (edpo), JSON Lines
    val: str | None = None
    facts: str | None = None  # facts JSON Lines from `sage facts extract`
    shots: Literal[0, 1] = 1  # 0 = zero-shot (no reference image)
    # SFE, one-shot data: this share of the training micro-batches is shown without its reference, so the
    # model also learns to answer zero-shot (beyond the paper, whose training is one-shot); which ones is
    # fixed by train.seed and the step, so a resumed run repeats them. 0.25 in the release recipe's verdict
    # phase cost more one-shot accuracy than it gave zero-shot (recipes/release/sage-smol.sh)
    zero_shot_share: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    output_dir: str = "runs"
    log_every: int = 10
    save_every: int | None = None  # optimizer steps between resumable states (None = only the final checkpoint)
    feature_cache: bool = True  # keep the frozen encoder's features of each image (memory + disk)
    verdict_weight: float = 1.0  # SFE: weight of each answer's first (Yes/No) token; 1 = plain CE (Eq. 8)
    eval_every: int = 0  # optimizer steps between validations (0 = only at the end); logged as val/*
    report_to: list[Literal["tensorboard"]] = field(default_factory=list)  # trackers besides metrics.jsonl
    # examples sharing a prompt prefix (a QA group's questions, a pair's two answers) run it once per
    # micro-batch, packed in one sequence (train/packing.py); false = each sequence alone, in a shuffled order
    shared_prefix: bool = True


@dataclass
class EDPOConfig:
    beta: float = 0.1
    eta: float = 0.5  # weight of the entropy term; 0 with one pair per question = plain DPO
    pairs: Literal["both", "min", "max"] = "both"  # which ΔH pairs of each question to train on


@dataclass
class EndpointConfig:
    base_url: str | None = None  # an OpenAI-compatible `/v1` URL; None = the local backbone
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never from a file
    timeout: float = 60.0
    max_retries: int = 3
    concurrency: int = 4


@dataclass
class SFERecipe:
    kind: Literal["sfe"] = "sfe"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class EDPORecipe(SFERecipe):
    """Stage 2 takes every stage-1 section plus `edpo`."""

    kind: Literal["edpo"] = "edpo"
    edpo: EDPOConfig = field(default_factory=EDPOConfig)


@dataclass
class FactsRecipe:
    kind: Literal["facts"] = "facts"
    description: str = ""
    backbone: str = "sage-smol"  # used when endpoint.base_url is not set
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    # Put before every prompt when the image's category is known ({category} is filled in): a small
    # local model that reads images poorly still writes facts about the right kind of object.
    context: str = ""
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 64
    temperature: float = 0.0
    batch_size: int = 4


@dataclass
class ScoreRecipe:
    """The MLE judge (`sage score mle`): an LLM rates each ranked answer on type, location and logic."""

    kind: Literal["score"] = "score"
    description: str = ""
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    rubric: str = ""  # the system prompt, sent as written
    # The user message; placeholders: {category} {level} {question} {truth} {defect} {conclusion}
    # {reference} (the top-ranked option) {answer} (the option being scored). Literal braces: {{ }}.
    template: str = ""
    max_tokens: int = 200
    temperature: float = 0.0
    retries_malformed: int = 2  # a reply that is not the JSON asked for is asked again this many times
    json_mode: bool = False  # also send response_format={"type": "json_object"} (not every server has it)


SCHEMAS: dict[str, type] = {"sfe": SFERecipe, "edpo": EDPORecipe, "facts": FactsRecipe, "score": ScoreRecipe}

# ---------------------------------------------------------------------------------------------
# Ranges of the numbers. Every int or float field of a schema has one: from RANGES, else the default
# of its type (DEFAULT_INT / DEFAULT_FLOAT). A value outside it fails at load time with one line naming
# the key; tests/test_recipes.py walks every numeric field of every kind with values just outside.

INT_MAX = 2**31 - 1  # no count, size or step number of a recipe is anywhere near this


@dataclass(frozen=True)
class Range:
    """lo <= x <= hi (`lo_open` / `hi_open` make that end strict); a float must also be finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""  # what such a number is, for the error line

    def check(self, value: int | float, path: str) -> None:
        why = f" ({self.why})" if self.why else ""
        if isinstance(value, float) and not math.isfinite(value):
            raise SageError(f"{path} must be a finite number{why}, got {value!r}")
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            raise SageError(f"{path} must be {'>' if self.lo_open else '>='} {_num(self.lo)}{why}, got {value!r}")
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            raise SageError(f"{path} must be {'<' if self.hi_open else '<='} {_num(self.hi)}{why}, got {value!r}")

    def bad_values(self, tp: type) -> list:
        """Values just outside the range (for tests): below it, above it, and for a float nan and inf."""
        step = 1 if tp is int else 0.5
        out = []
        if self.lo is not None:
            out.append(tp(self.lo) if self.lo_open else tp(self.lo - step))
        if self.hi is not None:
            out.append(tp(self.hi) if self.hi_open else tp(self.hi + step))
        return out + ([math.nan, math.inf] if tp is float else [])


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


POSITIVE_INT = Range(1, INT_MAX)  # sizes, counts, "every N steps" (None, where allowed, means off)
NON_NEGATIVE_INT = Range(0, INT_MAX)  # warm-up steps, retries
SEED = Range(0, 2**32 - 1, why="numpy's seeds are 32-bit")
POSITIVE = Range(0.0, lo_open=True)  # learning rates, beta, timeouts, loss weights
NON_NEGATIVE = Range(0.0)  # weight decay, clipping (0 = off), eta, temperature
DROPOUT = Range(0.0, 1.0, hi_open=True, why="a probability; 1 would zero the LoRA branch and nothing would train")
SHARE = Range(0.0, 1.0, why="a share")
DEFAULT_INT, DEFAULT_FLOAT = POSITIVE_INT, NON_NEGATIVE  # fields not listed (None means "off", so 0 is not needed)

RANGES: dict[type, dict[str, Range]] = {
    DataConfig: {"zero_shot_share": SHARE},
    ModelConfig: {"num_facts": POSITIVE_INT, "k_patches": POSITIVE_INT, "fusion_heads": POSITIVE_INT,
                  "image_size": POSITIVE_INT},
    LoraConfig: {"r": POSITIVE_INT, "alpha": POSITIVE_INT, "dropout": DROPOUT},
    OptimConfig: {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE_INT,
                  "grad_clip": NON_NEGATIVE},
    TrainConfig: {"epochs": POSITIVE_INT, "max_steps": POSITIVE_INT, "batch_size": POSITIVE_INT,
                  "grad_accum": POSITIVE_INT, "seed": SEED, "log_every": POSITIVE_INT, "save_every": POSITIVE_INT,
                  "verdict_weight": POSITIVE, "eval_every": NON_NEGATIVE_INT},
    EDPOConfig: {"beta": POSITIVE, "eta": NON_NEGATIVE},
    EndpointConfig: {"timeout": POSITIVE, "max_retries": NON_NEGATIVE_INT, "concurrency": POSITIVE_INT},
    FactsRecipe: {"max_new_tokens": POSITIVE_INT, "temperature": NON_NEGATIVE, "batch_size": POSITIVE_INT},
    ScoreRecipe: {"max_tokens": POSITIVE_INT, "temperature": NON_NEGATIVE, "retries_malformed": NON_NEGATIVE_INT},
}


def numeric_type(tp: Any) -> type | None:
    """int or float for an annotation `int`, `float`, `int | None`, `float | None`; None otherwise."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
        typing.Union, types.UnionType) else [tp]
    return args[0] if len(args) == 1 and args[0] in (int, float) else None


def range_of(schema: type, name: str) -> Range | None:
    """The range of a numeric field of `schema` (None for a field that is not a number)."""
    tp = numeric_type(typing.get_type_hints(schema)[name])
    if tp is None:
        return None
    for cls in schema.__mro__:  # EDPORecipe takes SFERecipe's sections
        if name in RANGES.get(cls, {}):
            return RANGES[cls][name]
    return DEFAULT_INT if tp is int else DEFAULT_FLOAT

# ---------------------------------------------------------------------------------------------
# Finding recipes


def recipe_dirs() -> list[Path]:
    """Where named recipes live: $SAGE_RECIPES, the repository's recipes/, the installed copy."""
    here = Path(__file__).resolve().parent
    dirs = []
    if os.environ.get("SAGE_RECIPES"):
        dirs.append(Path(os.environ["SAGE_RECIPES"]))
    dirs += [here.parent / "recipes", here / "recipes"]
    return [d for d in dirs if d.is_dir()]


def list_recipes() -> dict[str, Path]:
    """Every named recipe: {"sfe/sage-smol": path, ...}; earlier directories win."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.rglob("*.yaml")):
            name = p.relative_to(d).with_suffix("").as_posix()
            if not name.startswith(ACCELERATE_DIR + "/"):  # launcher configs, not recipes
                found.setdefault(name, p)
    return found


ACCELERATE_DIR = "accelerate"


def find_accelerate_config(name_or_path: str) -> Path:
    """An accelerate launcher config: a path, or a name shipped under recipes/accelerate/."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json") and p.is_file():
        return p
    shipped = {}
    for d in recipe_dirs():
        for q in sorted((d / ACCELERATE_DIR).glob("*.yaml")):
            shipped.setdefault(q.stem, q)
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise SageError(f"no accelerate config {name_or_path!r} (shipped: {', '.join(shipped) or 'none'}; or give a path)"
                    f"{_hint(name_or_path, list(shipped))}")


def short_name_matches(name: str) -> list[str]:
    """The shipped recipes whose short name is `name` ("sage-smol" -> ["edpo/sage-smol", "sfe/sage-smol"])."""
    return [n for n in list_recipes() if n.split("/", 1)[-1] == name]


def find_recipe(name_or_path: str, kind: str | None = None) -> Path:
    """A recipe file from a path or a name; `kind` lets `sage-smol` mean `sfe/sage-smol`."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise SageError(f"{p}: recipe file not found")
        return p
    known = list_recipes()
    for key in ([f"{kind}/{name_or_path}"] if kind else []) + [name_or_path]:
        if key in known:
            return known[key]
    matches = short_name_matches(name_or_path) if kind is None else []
    if len(matches) == 1:
        return known[matches[0]]
    if matches:
        raise SageError(f"{name_or_path!r} names {len(matches)} recipes ({', '.join(matches)}); give one of them")
    names = [n for n in known if kind is None or n.startswith(f"{kind}/")]
    short = [n.split("/", 1)[-1] for n in names] if kind else names
    raise SageError(f"no recipe named {name_or_path!r}{_hint(name_or_path, short)} (see `sage recipes ls`)")


# ---------------------------------------------------------------------------------------------
# Loading, overriding, validating


def load_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SageError(f"{path}: not valid YAML{where}") from None
    except OSError as e:
        raise SageError(f"{path}: cannot read recipe ({e.strerror})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SageError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=2e-6` -> (["train", "lr"], 2e-6); values are parsed as YAML scalars/lists."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SageError(f"override {text!r} must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of `data` with each `key.sub=value` set (validation happens in `build`)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise SageError(f"override {text!r}: {k} is not a section")
            node = nxt
        node[keys[-1]] = value
    return out


def build(schema: type, data: dict, where: str = "") -> Any:
    """Instantiate `schema` from a nested dict, checking every key, type, choice and range."""
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}{key}"
        if key not in names:
            raise SageError(f"unknown key {path!r}{_hint(key, names, prefix=where)}")
        kwargs[key] = _coerce(hints[key], value, path)
        if isinstance(kwargs[key], (int, float)) and not isinstance(kwargs[key], bool):
            rng = range_of(schema, key)
            if rng is not None:
                rng.check(kwargs[key], path)
    return schema(**kwargs)


def load_recipe(name_or_path: str, kind: str | None = None, overrides: list[str] | None = None) -> Any:
    """Find, read, override and validate a recipe; returns the schema instance."""
    path = find_recipe(name_or_path, kind)
    data = apply_overrides(load_yaml(path), overrides or [])
    rkind = data.get("kind", kind)
    if rkind not in SCHEMAS:
        raise SageError(f"{path}: 'kind' must be one of {', '.join(SCHEMAS)}, got {rkind!r}")
    if kind is not None and rkind != kind:
        raise SageError(f"{path}: this recipe is of kind {rkind!r}; this command needs kind {kind!r}")
    try:
        return build(SCHEMAS[rkind], data)
    except SageError as e:
        raise SageError(f"{path}: {e}") from None


def to_dict(recipe: Any) -> dict:
    return dataclasses.asdict(recipe)


def to_yaml(recipe: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)


def _hint(word: str, choices: list[str], prefix: str = "") -> str:
    hint = did_you_mean(word, choices)
    return hint.replace(" (did you mean '", f" (did you mean '{prefix}", 1)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is looser (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except SageError as e:
                errors.append(str(e))
        raise SageError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is Literal:
        if value in args:
            return value
        shown = ", ".join(repr(a) for a in args)
        hint = _hint(str(value), [str(a) for a in args]) if isinstance(value, str) else ""
        raise SageError(f"{path} must be one of {shown}, got {value!r}{hint}")
    if origin is list:
        if not isinstance(value, list):
            raise SageError(f"{path} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SageError(f"{path} must be a section (a mapping), got {value!r}")
        return build(tp, value, where=f"{path}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SageError(f"{path} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SageError(f"{path} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 2e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise SageError(f"{path} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise SageError(f"{path} must be a string, got {value!r}")
    raise SageError(f"{path}: unsupported type {tp!r}")  # a schema bug, not user input
