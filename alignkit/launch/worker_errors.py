"""How a launched worker tells the launcher why it failed, without printing to the shared console.

Every rank's output reaches the console; a traceback there would be printed by the failing rank and again,
for the same cause, by each rank that lost its peer. So a failing worker writes its error into the error
file torch's elastic agent gives it (`TORCHELASTIC_ERROR_FILE`, in torch's own format) and its traceback
into its log, and prints nothing; the launcher reports the first failure once (alignkit.launch.spawn).
"""

from __future__ import annotations

import json
import os
import time

ERROR_FILE_VARIABLE = "TORCHELASTIC_ERROR_FILE"


def report_failure(message: str, trace: str = "") -> bool:
    """Write `message` (one or more lines) for the launcher; False when not started by the elastic agent."""
    path = os.environ.get(ERROR_FILE_VARIABLE)
    if not path:
        return False
    now = time.time()
    record = {
        "message": {
            "message": message,
            # torch reads whole seconds; two ranks failing in the same second are ordered by alignkit's time.
            "extraInfo": {"py_callstack": trace, "timestamp": str(int(now)), "alignkit_failed_at": now},
        }
    }
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
    except OSError:
        return False
    return True


def failed_at(failure) -> float:
    """When a worker failed: its own precise time when it reported one, else torch's (whole seconds)."""
    message = failure.message if isinstance(failure.message, dict) else {}
    extra = message.get("extraInfo") if isinstance(message.get("extraInfo"), dict) else {}
    precise = extra.get("alignkit_failed_at")
    return float(precise) if isinstance(precise, int | float) else float(failure.timestamp)


def message_lines(failure) -> list[str]:
    """The lines a worker reported through its error file (empty when it wrote none)."""
    if not os.path.isfile(failure.error_file):
        return []
    message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
    return [line for line in str(message).strip().splitlines() if line.strip()]
