"""One way for every command line (`python -m helpers.<module>`) to end on a user error: one clear line on stderr and
exit status 2; `--debug` shows the traceback instead.

    if __name__ == "__main__":
        cli.run(main)          # main(argv) parses its own arguments (argparse exits 2 on a usage error itself)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from helpers.lib.config import ConfigError

# what a user can cause (a bad path, value, file or permission); anything else is a bug and keeps its traceback
USER_ERRORS = (
    ConfigError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    KeyError,
)


def run(main: Callable[[Sequence[str]], object], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)` (argv without `--debug`) and exit: 0 on success (or main's int), 2 on a user error."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        out = main(args)
    except USER_ERRORS as e:
        if debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    sys.exit(out if isinstance(out, int) else 0)
