"""Rates as people write them: `"5/s"`, `"120/m"`, `"1000/h"` (ctx.limit, and the rate
limits of handler declarations)."""

from __future__ import annotations

import re
from dataclasses import dataclass

RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")
PER_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    per_ms: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = RATE.match(text)
        if not match or int(match.group(1)) <= 0:
            raise ValueError(f"{text!r} is not a rate: write it as 5/s, 120/m or 1000/h")
        return cls(int(match.group(1)), PER_MS[match.group(2)])

    @property
    def interval_ms(self) -> float:
        """The spacing between two starts: at most `count` start in any `per` window."""
        return self.per_ms / self.count

    def __str__(self) -> str:
        unit = {v: k for k, v in PER_MS.items()}[self.per_ms]
        return f"{self.count}/{unit}"
