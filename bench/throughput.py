"""`python -m bench.throughput`: the command; the harness is bench/harnesses/throughput.py."""

import sys

from bench.harnesses.throughput import main

if __name__ == "__main__":
    main(sys.argv[1:])
