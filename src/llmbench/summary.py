"""`python -m llmbench.summary`: print the report's table and recommendation (end of `make run`)."""
import sys

from llmbench.config import load_params
from llmbench.errors import UserError


def main() -> None:
    try:
        report = load_params().paths.report_md
        if not report.exists():
            raise UserError(f"{report}: not found; run `make run` (or `dvc repro`) first")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    # everything up to the first embedded plot: the table, frontier and recommendation
    text = report.read_text().split("\n![", 1)[0]
    print(text.rstrip() + f"\n\nFull report with plots: {report}\n")


if __name__ == "__main__":
    main()
