"""The ``fairfm`` command: a thin Typer layer over the Python API.

Bad input raises :class:`fairfm.errors.InputError`; :func:`main` turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console

from fairfm.errors import InputError

app = typer.Typer(
    name="fairfm",
    help="Measure and improve the fairness of medical-imaging foundation models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def make_console(**kwargs) -> Console:
    """A console for tables: at least 120 columns when output is not a terminal (pipes, files, CI logs), so
    tables are not squeezed into 80 columns of wrapped cells."""
    probe = Console(**kwargs)
    if not probe.is_terminal and "width" not in kwargs:
        return Console(width=max(probe.width, 120), **kwargs)
    return probe


def _register_commands() -> None:
    # Each sub-module adds its commands to ``app`` when imported; command groups are Typer sub-apps.
    # Imports happen here, not at module top, so that ``fairfm --help`` does not pay for torch.
    from fairfm.cli import demo, evaluate  # noqa: F401  (modules register their commands on import)

    from fairfm.cli import datasets as datasets_cli

    app.add_typer(datasets_cli.app, name="datasets")

    from fairfm.cli import features as features_cli
    from fairfm.cli import models as models_cli

    app.add_typer(models_cli.app, name="models")
    app.add_typer(features_cli.app, name="features")

    from fairfm.cli import methods as methods_cli

    app.add_typer(methods_cli.app, name="methods")

    from fairfm.cli import runs as runs_cli

    app.add_typer(runs_cli.app, name="runs")

    from fairfm.cli import run as run_cli  # noqa: F401  (registers ``fairfm run``)
    from fairfm.cli import sweep as sweep_cli  # noqa: F401  (registers ``fairfm sweep``)
    from fairfm.cli import select as select_cli  # noqa: F401  (registers ``fairfm select``)
    from fairfm.cli import ensemble as ensemble_cli  # noqa: F401  (registers ``fairfm ensemble``)
    from fairfm.cli import report as report_cli  # noqa: F401  (registers ``fairfm report``)
    from fairfm.cli import compare as compare_cli  # noqa: F401  (registers ``fairfm compare``)

    from fairfm.cli import analyze as analyze_cli

    app.add_typer(analyze_cli.app, name="analyze")

    from fairfm.cli import fl as fl_cli

    app.add_typer(fl_cli.app, name="fl")


#: Top-level module → the extra that installs it (``pip install 'fairfm[EXTRA]'``); checked against pyproject.toml
#: by tests/test_install.py. A command whose extra is missing says so in one line instead of a traceback.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("PIL", "pydicom", "nibabel", "h5py", "openpyxl"), "data"),
    **dict.fromkeys(("torch", "torchvision", "timm", "open_clip", "transformers", "safetensors", "segment_anything",
                     "peft", "sklearn", "fairlearn", "geomloss", "ot"), "models"),
    **dict.fromkeys(("duckdb", "pydantic", "pydantic_core", "yaml"), "results"),
    "ray": "sweep",
    **dict.fromkeys(("matplotlib", "jinja2", "umap"), "report"),
    "flwr": "federated",
}  # fmt: skip


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """The one-line message for a module of an uninstalled extra (None for any other missing module)."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return (f"this command needs the '{extra}' extra (module {module!r} is not installed): "
            f"pip install 'fairfm[{extra}]'")


def _usage_error(exc: BaseException) -> bool:
    # Typer may vendor its own copy of click, so match click's protocol rather than click's classes.
    return hasattr(exc, "exit_code") and hasattr(exc, "format_message")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: bad input is one line on stderr and exit code 2, never a traceback."""
    try:
        _register_commands()
        command = typer.main.get_command(app)
        # Without standalone mode click returns the code of ``typer.Exit`` instead of raising it.
        code = command.main(args=argv, prog_name="fairfm", standalone_mode=False)
    except InputError as exc:
        err_console.print(f"error: {exc}", markup=False)
        sys.exit(2)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        err_console.print("aborted", markup=False)
        sys.exit(130)
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc)
        if message is None:
            raise
        err_console.print(f"error: {message}", markup=False)
        sys.exit(1)
    except Exception as exc:
        if not _usage_error(exc):
            raise
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            sys.exit(0)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err_console.print(f"error: {exc.format_message()}{hint}", markup=False)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
