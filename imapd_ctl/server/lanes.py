"""Which whole request a free thread takes next: the panels' and operators' requests first, in
arrival order; scrapes of /metrics in a lane of their own.

Why a lane: a scrape is cheap but not free (the counts of every worker added up, the text made),
and a scraper may ask as fast as it is answered. Served like any request, 64 scrapers in a loop
take the CPU the panels' isRunning needs (docs/monitoring.md, "What a scrape costs"). In the lane,
a worker runs one scrape at a time, only when no other request waits for a thread, and starts
the next at least `spacing` seconds after the last one ended: the scrapers wait their turn, the
panels do not. Prometheus scrapes each target every 15-60 s, so a real fleet of scrapers never
waits."""
from __future__ import annotations

import collections
from typing import Generic, TypeVar

Item = TypeVar("Item")

SCRAPE_SPACING = 0.01    # seconds between the end of one scrape and the start of the next, per worker


class Lanes(Generic[Item]):
    def __init__(self, spacing: float = SCRAPE_SPACING):
        self.spacing = spacing
        self.requests: collections.deque[Item] = collections.deque()
        self.scrapes: collections.deque[Item] = collections.deque()
        self.scraping: Item | None = None     # the scrape a thread runs now
        self._next_scrape = 0.0

    def add(self, item: Item, scrape: bool) -> None:
        (self.scrapes if scrape else self.requests).append(item)

    def take(self, now: float) -> Item | None:
        """The next item a free thread should run now, or None (none waits, or the scrape lane's
        turn has not come). The caller drops items that were cut while they waited."""
        if self.requests:
            return self.requests.popleft()
        if self.scrapes and self.scraping is None and now >= self._next_scrape:
            self.scraping = self.scrapes.popleft()
            return self.scraping
        return None

    def taken_back(self, item: Item) -> None:
        """`item` from take() will not run after all (it was cut while it waited)."""
        if item is self.scraping:
            self.scraping = None

    def done(self, item: Item, now: float) -> None:
        if item is self.scraping:
            self.scraping = None
            self._next_scrape = now + self.spacing

    def wait(self, now: float) -> float | None:
        """Seconds until the scrape lane may go on, if a scrape waits for its turn."""
        if self.scrapes and self.scraping is None and not self.requests:
            return max(0.0, self._next_scrape - now)
        return None
