"""`python -m moecli` and the `moecli` command. Importing the CLI (typer, rich: a few tenths of a
second) happens inside the Ctrl-C handler, so an early Ctrl-C exits 130 without a traceback."""

import sys


def main() -> None:
    try:
        from moecli.cli import main as cli_main
    except KeyboardInterrupt:
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
