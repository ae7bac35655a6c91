"""The defaults of the settings the engine and the stores share, written once."""

from __future__ import annotations

from typing import Final

DAY: Final = 86_400.0

# Seconds a record is kept after its last change (and after its lease's end).
RETENTION: Final = 7 * DAY
# Seconds a cleared key's tombstone is kept (Clear without force).
CLEAR_GRACE: Final = 600.0
# Seconds an attempt's lease outlives its channel's timeout: only a crashed or hung holder loses it.
LEASE_MARGIN: Final = 5.0
# Longest retry_after suggested with IN_PROGRESS.
IN_PROGRESS_RETRY_AFTER: Final = 1.0
# Seconds a flight asks again, with the same reservation, when the store's answer to a reserve
# was lost.
RESERVE_RETRY: Final = 2.0
# Seconds running attempts get to finish on SIGTERM.
SHUTDOWN_GRACE: Final = 25.0
