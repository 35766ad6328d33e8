"""How long the local API's loop polls for the next request after a reply (the post-reply spin).

A thread that sleeps in epoll pays the CPU's wake-up on the next request, which on a VM
with cpuidle haltpoll is most of a digits round trip; polling a little after each reply
avoids it. The poll is CPU spent on nobody's request, so it runs only while it pays:

- requests keep coming soon after replies (`hit_rate`: the share of recent requests that
  came within `spin_us` of the reply before; a client pacing itself stops the spin);
- it lasts a few times the usual reply-to-request gap (`gap_factor` x `gap_s`), not
  `spin_us` whatever the client does: a miss then costs that, not a whole `spin_us`;
- it has a CPU of its own. On an oversubscribed host a spinning thread only takes the CPU
  from the client it waits for, so it stops while the host's run queue is longer than its
  CPUs (`crowded`, from samples of `runnable_tasks()`), and while the scheduler keeps taking
  the thread off in the middle of spins (`contention`, a jump between two polls), trying
  one spin again every so often (`contention` decays while it does not spin).

The governor is pure: the server feeds it what it saw (gaps, spins, run-queue samples) and
asks `budget_s()`; tested without sockets. `runnable_tasks` is the one read of the host.
"""

from __future__ import annotations

import os

HIT_WEIGHT = 0.1  # weight of the newest request in hit_rate and of the newest hit in gap_s
MIN_HIT_RATE = 0.25  # below it no spin: most requests came after a spin would have ended
GAP_FACTOR = 3.0  # a spin lasts at most this many times the usual reply-to-request gap
FLOOR_S = 30e-6  # ... and at least this long (a gap measured on an idle host can be a few us)
PREEMPTED_AFTER_S = 50e-6  # a jump this long between two polls: the thread was descheduled
CONTENTION_WEIGHT = 0.25  # weight of the newest spin in contention
MAX_CONTENTION = 0.25  # above it no spin: the spins are being preempted
HOST_SAMPLE_S = 0.02  # the server reads the host's run queue at most this often
CROWDED_WEIGHT = 0.2  # weight of the newest run-queue sample in crowded
MAX_CROWDED = 0.5  # above it no spin: most recent samples found more runnable tasks than CPUs
# runnable tasks a sample may find beyond the CPUs before it counts as crowded: the loop's own
# thread, and for a moment ZeroMQ's I/O threads and the client that a reply just woke
CROWDED_MARGIN = 1
CONTENTION_DECAY = 0.97  # per reply without a spin: under lasting contention one spin in ~20 replies tries again


class SpinGovernor:
    """The post-reply spin's budget, from the gaps and spins the server reports."""

    def __init__(self, spin_us: float, cpus: int | None = None) -> None:
        self.max_s = spin_us / 1e6
        self.cpus = cpus or os.cpu_count() or 1
        self.hit_rate = 1.0
        self.gap_s = self.max_s / GAP_FACTOR  # until measured: the whole spin_us
        self.contention = 0.0
        self.crowded = 0.0
        # totals, for benchmarks and tests: spins run, and how many a request ended or the scheduler cut
        self.spins = 0
        self.spin_hits = 0
        self.spins_preempted = 0
        self.spin_s_total = 0.0

    def budget_s(self) -> float:
        """How long to poll after this reply; 0: sleep in epoll at once."""
        if not self.max_s or self.hit_rate < MIN_HIT_RATE or self.crowded > MAX_CROWDED:
            return 0.0
        if self.contention > MAX_CONTENTION:
            self.contention *= CONTENTION_DECAY
            return 0.0
        return min(self.max_s, max(FLOOR_S, GAP_FACTOR * self.gap_s))

    def request_came(self, gap_s: float) -> None:
        """A request arrived `gap_s` after the reply before it (whether or not the loop spun)."""
        hit = gap_s < self.max_s
        self.hit_rate += HIT_WEIGHT * (hit - self.hit_rate)
        if hit:
            self.gap_s += HIT_WEIGHT * (gap_s - self.gap_s)

    def host_seen(self, runnable: int | None) -> None:
        """A sample of the host's runnable tasks (`runnable_tasks()`; None: not known here)."""
        if runnable is not None:
            self.crowded += CROWDED_WEIGHT * ((runnable > self.cpus + CROWDED_MARGIN) - self.crowded)

    def spun(self, seconds: float, hit: bool, preempted: bool) -> None:
        """A spin ended after `seconds`: a request came (`hit`) or the budget ran out; `preempted`:
        the scheduler took the thread off the CPU during it."""
        self.spins += 1
        self.spin_hits += hit
        self.spins_preempted += preempted
        self.spin_s_total += seconds
        self.contention += CONTENTION_WEIGHT * (preempted - self.contention)


def runnable_tasks() -> int | None:
    """Tasks runnable on the host now, the caller included (/proc/loadavg's fourth field); None off Linux."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None
