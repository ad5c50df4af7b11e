"""`python -m bench.memory`: the command; the harness is bench/harnesses/memory.py."""

import sys

from bench.harnesses.memory import main

if __name__ == "__main__":
    main(sys.argv[1:])
