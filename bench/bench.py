#!/usr/bin/env python3
"""The benchmark's command (bench/run and scripts/bench-smoke run it; see BENCHMARKS.md), and
the timestamping proxy's process (`bench.py proxy LISTEN UPSTREAM LOG`). The code is the
package next to it, bench/pwbench: a module per scenario, the shared harness apart."""

import sys

from pwbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
