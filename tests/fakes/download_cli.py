"""`python -m tests.fakes.download_cli download http://127.0.0.1:PORT DEST ...`: the real CLI, with the test store.

The command line is outrider's own (`outrider.cli.main`); only the source opener is swapped for `http_opener`, so
subprocess tests exercise argument parsing, the progress output, exit codes and kill -9 resume end to end.
"""

from __future__ import annotations

import sys

from outrider.cli import main
from tests.fakes.http_store import http_opener

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], source_opener=http_opener))
