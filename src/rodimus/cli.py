"""The ``rodimus`` command: a thin root that mounts each area's subcommands."""

from __future__ import annotations

import typer

from rodimus.data import cli as data_cli
from rodimus.eval import cli as eval_cli
from rodimus.models import cli as models_cli
from rodimus.serve import cli as serve_cli
from rodimus.train import cli as train_cli

app = typer.Typer(
    name="rodimus",
    help="Train, evaluate, generate with and serve Rodimus / Rodimus+ language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (data_cli, train_cli, eval_cli, serve_cli, models_cli):
    module.register(app)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="rodimus")


if __name__ == "__main__":
    main()
