"""A job's priority: 0-9, higher first. Strict between levels within a queue; within one
level, first in first out per tenant, the tenants taking turns (producer/scripts, `route`)."""

from __future__ import annotations

MIN_PRIORITY = 0
MAX_PRIORITY = 9
DEFAULT_PRIORITY = 5
