"""``python -m camlib.batch``: see ``camlib.batch``."""

import sys

from camlib.batch.job import main

if __name__ == "__main__":
    sys.exit(main())
