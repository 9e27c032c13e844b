"""The `sage` command: groups of subcommands, each a thin wrapper over a module.

Heavy libraries (torch, transformers, numpy, PIL) are imported inside the commands so that
`sage --help` answers at once. A SageError anywhere becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import sys

import typer

from sage_cli.commands import data_export, data_ls, data_normals, data_synth, env as env_cmd, models as models_cmd, prefs_build, recipes as recipes_cmd
from sage_cli.commands import bench as bench_cmd, bench_speed, demo as demo_cmd, facts_extract, infer as infer_cmd, score_mle, serve as serve_cmd, train as train_cmd
from sage_cli.commands import calibrate as calibrate_cmd

app = typer.Typer(
    name="sage",
    help="SAGE for industrial inspection: facts, preference data, training, inference and benchmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings wrap like prose: single newlines join, blank lines split
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _group(name: str, help: str, parent: typer.Typer = app) -> typer.Typer:
    group = typer.Typer(help=help, no_args_is_help=True, rich_markup_mode="markdown")
    parent.add_typer(group, name=name)
    return group


facts_app = _group("facts", "Fact sentences about each image from a VLM (local or OpenAI-compatible), cached.")
prefs_app = _group("prefs", "Preference data (AD-PL style): QA groups with four ranked answers per question.")
score_app = _group("score", "MLE scores from an LLM judge and entropy-based pair selection for E-DPO.")
train_app = _group("train", "The two training stages: SFE (stage 1) and E-DPO (stage 2).")
bench_app = _group("bench", "The paper's metrics (accuracy per level, Acc-G, SBERT, MLE) on QA benchmarks.")
data_app = _group("data", "Inspect dataset roots, make normal images of new categories and synthetic defects on them, export QA groups and pairs as Hugging Face datasets.")
recipes_app = _group("recipes", "Find, read, copy and validate YAML recipes.")
models_app = _group("models", "The embedded sage-smol backbone (what is installed and cached, building it) packing and exporting checkpoints, converting the published InternVL2 layout.")

data_app.command("ls")(data_ls.ls)
data_app.command("synth")(data_synth.synth)
data_app.command("normals")(data_normals.normals)
data_app.command("export")(data_export.export)

recipes_app.command("ls")(recipes_cmd.ls)
recipes_app.command("show")(recipes_cmd.show)
recipes_app.command("validate")(recipes_cmd.validate)
recipes_app.command("cp")(recipes_cmd.cp)

models_app.command("ls")(models_cmd.ls)
models_app.command("build")(models_cmd.build)
models_app.command("pack")(models_cmd.pack)
models_app.command("export")(models_cmd.export)
models_app.command("convert")(models_cmd.convert)


facts_app.command("extract")(facts_extract.extract)
prefs_app.command("build")(prefs_build.build)
score_app.command("mle")(score_mle.mle)
app.command("infer")(infer_cmd.infer)
app.command("calibrate")(calibrate_cmd.calibrate)
app.command("serve")(serve_cmd.serve)
app.command("demo")(demo_cmd.demo)
app.command("env")(env_cmd.env)
train_app.command("sfe")(train_cmd.sfe)
train_app.command("edpo")(train_cmd.edpo)
train_app.command("plot")(train_cmd.plot)

for fmt in bench_cmd.FORMAT_HELP:  # manta, mpdd, mmad, qa, mvtec: one command each, same options
    bench_app.command(fmt)(bench_cmd.command_for(fmt))
bench_app.command("compare")(bench_cmd.compare)
speed_app = _group("speed", bench_speed.HELP, parent=bench_app)
speed_app.command("infer")(bench_speed.infer)
speed_app.command("train")(bench_speed.train)
speed_app.command("group")(bench_speed.group)
speed_app.command("serve")(bench_speed.serve)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on `argv` and return the exit code (tests call this; `main` exits with it)."""
    from sage_cli.errors import SageError

    try:
        rc = app(args=argv, prog_name="sage", standalone_mode=False)
    except SageError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as e:
        # Usage errors (click's ClickException, vendored by newer typer): print usage + message.
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return e.exit_code
        raise
    return rc if isinstance(rc, int) else 0


def main() -> None:
    sys.exit(run())
