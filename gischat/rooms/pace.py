"""When a room's `nb_users` broadcast may go: soon after the count settles, cheaply while it moves.

A count goes to every socket of the room, one write each, and a write costs the machine about
10 µs all told (the server's system call, the kernel's delivery, the client waking up to read
it): at 10,000 sockets a broadcast is about 100 ms of work. Sent on every join, a join storm
would cost a broadcast per join; sent on a fixed timer, a large room either spends too much on
counts during the storm or learns the final count long after the storm is over. So the pace
depends on the room's size and on whether the count is still moving:

- while it keeps changing (people are joining), counts may take about `STORM_SHARE` of the
  machine, leaving the rest to the joins themselves (2 s apart at 10,000 sockets);
- once it has not changed for `QUIET` seconds, the count that settled may go as soon as counts
  take no more than about `SETTLED_SHARE` (0.4 s after the last one at 10,000 sockets);
- never two within NB_USERS_INTERVAL, the operator's floor, whatever the room's size.

The cost is estimated per socket rather than timed: a broadcast's own duration on the loop
(about 2 µs a write) misses most of what it costs, and pacing by it slowed a 10,000-socket
join storm by a quarter. The first change after a quiet spell goes out on the next loop turn.
Every trailing broadcast carries the count when it is sent, so a room always ends on its exact
count.
"""

from __future__ import annotations

from dataclasses import dataclass

# What one socket's share of a broadcast costs the machine, in seconds (see above).
WRITE_COST = 0.00001
# Share of the machine counts may take while the room's count keeps changing (a join storm),
STORM_SHARE = 0.05
# and to deliver a count that has settled: the storm is over, the loop is free again.
SETTLED_SHARE = 0.25
# A count unchanged for this long has settled (joins from one storm come far closer together).
QUIET = 0.05


@dataclass(slots=True)
class CountPace:
    """The timing of one room's count broadcasts: the last change and the last broadcast."""

    interval: float  # NB_USERS_INTERVAL
    last_change: float = float("-inf")
    last_sent: float = float("-inf")

    def due(self, sockets: int) -> float:
        """The loop time at which the next broadcast to `sockets` sockets may go."""
        cost = sockets * WRITE_COST
        storm = self.last_sent + max(self.interval, cost / STORM_SHARE)
        settled = max(
            self.last_change + QUIET,
            self.last_sent + max(self.interval, cost / SETTLED_SHARE),
        )
        return min(storm, settled)
