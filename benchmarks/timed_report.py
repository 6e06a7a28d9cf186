"""What the side-by-side benchmarks share: note the machine's load before timing (warning when other work
shares the CPUs, which makes the figures incomparable), measure, and print the table or the JSON."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

BUSY_LOAD = 1.5
"""A 1-minute load average above this means other work shares the two cores."""


def measure_and_report(measure: Callable[[Any], dict], args, table: Callable[[dict, float], str]) -> int:
    """Run `measure(args)` after noting the load; print `table(result, load)`, or JSON with `args.json`."""
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        print(f"warning: load average {load:.2f} is above {BUSY_LOAD}: other work shares the CPUs", file=sys.stderr)
    result = measure(args)
    result["load_average"] = load
    print(json.dumps(result, indent=2) if args.json else table(result, load))
    return 0
