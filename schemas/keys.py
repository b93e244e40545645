"""The Redis key schema, as plain functions of (prefix, queue).

Every key of a queue carries the hash tag ``{queue}``, so a queue lives in one Redis
Cluster slot and every script touches one slot. Nothing else in Conveyor spells a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONSUMER_GROUP = "workers"
# The group in which consumers read the dead-letter stream to run `on_failure` hooks.
FAILURE_GROUP = "on_failure"
DEFAULT_PREFIX = "conveyor"
JOB_EVENTS_SUFFIX = ":events"  # a job's own events stream: its hash's key and this
JOB_STEPS_SUFFIX = ":steps"  # a job's recorded steps (hash): its hash's key and this
JOB_CHILDREN_SUFFIX = ":children"  # a parent's children (hash): its hash's key and this
FLOW_SUFFIX = ":flow"  # a queue's flow tasks (stream): its base and this
CALLBACKS_SUFFIX = ":callbacks"  # a queue's callbacks to deliver (stream): its base and this
CALLBACKS_GROUP = "callbacks"
PAUSED_SUFFIX = ":paused"  # the queue's pause flag: its base and this
FINISHED_SUFFIX = ":finished:"  # a minute's count of ended jobs: its base, this, the minute
# Flow control (schemas/gates.py has the why): the queue's ordered backlog (zset), who the
# jobs stream's backlog belongs to (string), the backlog's fair clock (hash), a gate's keys
# (its base, this, `rate:` or `run:`, type, key) and the rate gates' release times (zset).
BACKLOG_SUFFIX = ":backlog"
LEAD_SUFFIX = ":lead"
FAIR_SUFFIX = ":fair"
GATE_SUFFIX = ":gate:"
GATES_SUFFIX = ":gates"
# `lead` while the backlog is in use: no tenant is spelled so (TENANT_NAME).
ORDERED_LEAD = "*"
# The group in which workers carry out a queue's flow tasks, and the tasks' names.
FLOW_GROUP = "flow"
TASK_CHILD_ENDED = "child_ended"
TASK_CANCEL_CHILDREN = "cancel_children"
# Tenants are spelled inside keys (`idem:{tenant}:{key}`, `tenant:{tenant}:jobs`) beside parts
# a caller chooses. With no `:` in a tenant name those keys parse one way only: tenants `acme`
# and `acme:prod` once shared `idem:acme:prod:order-42`. Checked when keys are configured.
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """All key names of one queue."""

    queue: str
    prefix: str = DEFAULT_PREFIX

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}"

    @property
    def jobs(self) -> str:
        """Stream: one entry per delivery (`job_id`, `type`, `attempt`); group `workers`."""
        return f"{self.base}:jobs"

    @property
    def events(self) -> str:
        """Stream, capped: every event of every job of the queue (the fan-out source)."""
        return f"{self.base}:events"

    @property
    def delayed(self) -> str:
        """Sorted set: job ids due later, scored by due time in ms."""
        return f"{self.base}:delayed"

    @property
    def dead(self) -> str:
        """Stream: dead-lettered jobs."""
        return f"{self.base}:dead"

    @property
    def job_prefix(self) -> str:
        """What scripts prepend to a job id to reach its hash (they batch over ids)."""
        return f"{self.base}:job:"

    # `job` and `job_events` spell `job_prefix` out: a consumer builds both for every job it
    # starts and ends, and the three nested properties cost 0.4 us a job more.
    def job(self, job_id: str) -> str:
        return f"{self.prefix}:{{{self.queue}}}:job:{job_id}"

    def job_events(self, job_id: str) -> str:
        return f"{self.prefix}:{{{self.queue}}}:job:{job_id}{JOB_EVENTS_SUFFIX}"

    def job_steps(self, job_id: str) -> str:
        """Hash: step name -> JSON record (state, attempt, times, result); see ctx.step."""
        return f"{self.job(job_id)}{JOB_STEPS_SUFFIX}"

    def job_children(self, job_id: str) -> str:
        """Hash: child id -> JSON {queue, status} of a parent's children (`open` until the
        child's end reaches the parent: the fan-in's record, idempotent per child)."""
        return f"{self.job(job_id)}{JOB_CHILDREN_SUFFIX}"

    @property
    def flow(self) -> str:
        """Stream, group `flow`: the queue's flow tasks, written by the script that causes
        them and carried out at least once by its workers: `child_ended` (tell a parent,
        perhaps on another queue or cluster slot) and `cancel_children`."""
        return f"{self.base}{FLOW_SUFFIX}"

    @property
    def callbacks(self) -> str:
        """Stream, group `callbacks`: ended jobs whose `callback_url` is to be POSTed to,
        written by the script that ends the job, delivered at least once by its workers."""
        return f"{self.base}{CALLBACKS_SUFFIX}"

    @property
    def callbacks_due(self) -> str:
        """Sorted set: job ids whose failed callback is tried again, scored by when (ms)."""
        return f"{self.base}:callbacks:due"

    def cache(self, tenant: str, key: str) -> str:
        """String, expiring: the job that did this tenant's work `key` (`cache_ttl_s`)."""
        return f"{self.base}:cache:{tenant}:{key}"

    @property
    def schedules(self) -> str:
        """Hash: `{tenant}/{name}` -> JSON schedule (cron, type, payload, timezone, origin)."""
        return f"{self.base}:schedules"

    @property
    def schedule_ticks(self) -> str:
        """Hash: `{tenant}/{name}` -> the last tick (ms) a job was submitted for."""
        return f"{self.base}:schedules:ticks"

    @property
    def paused(self) -> str:
        """String: present while the queue is paused (it accepts submits, starts nothing)."""
        return f"{self.base}{PAUSED_SUFFIX}"

    @property
    def backlog(self) -> str:
        """Sorted set: queued job ids waiting in priority and fair order, while the queue has
        jobs of several priorities or tenants queued (else they wait in the jobs stream)."""
        return f"{self.base}{BACKLOG_SUFFIX}"

    @property
    def lead(self) -> str:
        """String: the tenant whose jobs the jobs stream's backlog holds, or `*` while the
        ordered backlog is in use; absent while nothing waits."""
        return f"{self.base}{LEAD_SUFFIX}"

    @property
    def fair(self) -> str:
        """Hash, per priority level: `<tenant>:<priority>` -> the virtual time of the
        tenant's last job in the backlog; `*<priority>` -> that of the last job taken at that
        level (its fair clock)."""
        return f"{self.base}{FAIR_SUFFIX}"

    def gate(self, kind: str, job_type: str, key: str = "") -> str:
        """A flow-control gate of a job type (and key): `rate` (hash: `tat` the next free
        start in ms, `interval` in ms, `booked` the last turn given, `round` how many to let
        go at once) or `run` (set: the ids of its jobs running). The type's length keeps
        gates apart whatever `:` the type and key hold (`gate_key` in the scripts)."""
        return f"{self.base}{GATE_SUFFIX}{kind}:{len(job_type)}:{job_type}:{key}"

    def held(self, kind: str, job_type: str, key: str = "") -> str:
        """List: the jobs a gate holds, in the order they go."""
        return f"{self.base}{GATE_SUFFIX}{kind}-held:{len(job_type)}:{job_type}:{key}"

    @property
    def gates(self) -> str:
        """Sorted set: rate gates with held jobs, scored by when the next may go (ms)."""
        return f"{self.base}{GATES_SUFFIX}"

    def finished(self, minute: int) -> str:
        """Hash, expiring after two hours: jobs that ended in that minute (ms // 60,000) by
        terminal status, for `GET /v1/queues`."""
        return f"{self.base}{FINISHED_SUFFIX}{minute}"

    @property
    def waiting(self) -> str:
        """Sorted set: the queue's `waiting` parents, scored by when their children are next
        checked for one that was never created (a submit cut short)."""
        return f"{self.base}:waiting"

    def idempotency(self, tenant: str, key: str) -> str:
        """String: the job id an `Idempotency-Key` made. `tenant` never holds a `:`
        (TENANT_NAME), so the first `:` after it ends it."""
        return f"{self.base}:idem:{tenant}:{key}"

    def tenant_jobs(self, tenant: str) -> str:
        """Sorted set: the tenant's job ids in this queue, scored by creation time in ms."""
        return f"{self.base}:tenant:{tenant}:jobs"

    def tenant_active(self, tenant: str) -> str:
        """Counter: the tenant's unfinished jobs in this queue, kept while
        CONVEYOR_TENANT_MAX_ACTIVE is set (a job counted in is counted out when it ends)."""
        return f"{self.base}:tenant:{tenant}:active"

    def health(self, consumer: str) -> str:
        """String, expiring: arq's health-check record of one consumer."""
        return f"{self.base}:health:{consumer}"

    def consumer_seen(self) -> str:
        """Hash: consumer name -> last time (ms) it fetched; for `inspect` and cleanup."""
        return f"{self.base}:consumers"


LIMIT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def limit_key(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """String, expiring: a shared rate limit's next free start (ms, Redis's clock). Not a
    queue's key: the name is its own hash tag, so every queue's workers share the limit."""
    if not LIMIT_NAME.fullmatch(name):
        raise ValueError(f"a limit's name is 1-128 of A-Z a-z 0-9 _ . : -, not {name!r}")
    return f"{prefix}:limit:{{{name}}}"
