"""The ``comfysweep`` command: arguments in, library calls, one-line errors and exit codes out.

No SQL and no HTTP here: every command calls the public library. Only ``ComfysweepError`` is
caught, so a mistake of the user's is one line on stderr and exit 1, while a bug of ours still shows
its traceback.
"""

from __future__ import annotations

from typing import Any

import click

from orchestrator.errors import ComfysweepError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ComfysweepError as exc:
            click.echo(f"Error: {one_line(exc)}", err=True)
            ctx.exit(1)


def one_line(exc: BaseException) -> str:
    """An exception and its chained causes that add something, in one line."""
    parts = [str(exc) or type(exc).__name__]
    cause = exc.__cause__
    while cause is not None:
        text = str(cause) or type(cause).__name__
        if text not in parts[-1]:
            parts.append(text)
        cause = cause.__cause__
    return ": ".join(p.replace("\n", " ") for p in parts)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="comfysweep")
def cli() -> None:
    """Resumable parameter sweeps on RunComfy's Model API (or its embedded emulator)."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="comfysweep")


if __name__ == "__main__":  # pragma: no cover
    main()
