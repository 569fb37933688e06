"""
C{python -m rmux}: the C{rmux} command (L{rmux.cli}), for when the
console script is not on C{PATH}.
"""

import sys

from rmux.cli import main

if __name__ == "__main__":
    sys.exit(main())
