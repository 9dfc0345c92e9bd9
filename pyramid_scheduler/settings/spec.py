"""Every ``scheduler.*`` setting, described once.

Each :class:`Setting` names its key, the
:class:`~pyramid_scheduler.settings.model.SchedulerSettings` field it sets,
the kind of value it takes (which reads and checks the text, see
:mod:`pyramid_scheduler.settings.values`), its default and what it means.
:data:`SETTINGS` is the one table: :func:`pyramid_scheduler.settings.parse_settings`
reads the keys through it, :data:`KNOWN_KEYS` is its list of keys, and the
reference in docs/settings.rst is made from it by
:func:`pyramid_scheduler.settings.reference.reference_rst`.
"""

from __future__ import annotations

from pyramid_scheduler.settings.spec_flow import SETTINGS_FLOW
from pyramid_scheduler.settings.spec_limits import SETTINGS_LIMITS
from pyramid_scheduler.settings.spec_operations import OPERATIONS
from pyramid_scheduler.settings.spec_shell import SHELL_SETTINGS
from pyramid_scheduler.settings.spec_tasks import SETTINGS_TASKS
from pyramid_scheduler.settings.urls import (
    DEFAULT_BROKER_URL,
    DEFAULT_JOBSTORE_URL,
    BrokerAddress,
    StoreAddress,
    StoreClass,
)
from pyramid_scheduler.settings.values import (
    Aliases,
    APSchedulerOptions,
    Choice,
    DottedName,
    DottedNames,
    Duration,
    Flag,
    Modules,
    Queues,
    Secret,
    Setting,
    Text,
    TransportOptions,
    Whole,
    WholeSeconds,
    Zone,
)
from pyramid_scheduler.wire.options import CATCH_UP_POLICIES

FLAG = Flag()

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "combined",
        FLAG,
        default="false",
        doc="""``true`` runs the jobs in the web process (a background thread started on
``ApplicationCreated``); ``false`` leaves them to ``pscheduler``, which refuses to run a
combined application. 0.3.4 defaulted to ``true``; when the key is absent the include logs
this at INFO. See :ref:`combined-mode`.""",
    ),
    Setting(
        "transactional",
        FLAG,
        default="true",
        doc="""``true``: inside a transaction (pyramid_tm's request, ``with
transaction.manager:``, a job's run) ``add_*_job``, ``cancel_job`` and ``send_message``
publish when it commits, nothing when it aborts; ``immediate=True`` publishes one call at
once. ``false``: every call publishes at once. See :ref:`transactional-enqueue`.""",
    ),
    Setting(
        "durable",
        FLAG,
        default="true",
        doc="""``true``: every job is stored in the job store before its message is acked
(record-first, see :doc:`guarantees`). ``false``: jobs of ``add_async_job`` that pass
neither ``durable=`` nor ``retries=`` are sent ``durable=False``: the daemon acks the
message and runs the job at once, recording it after its run, at most once (see
:ref:`fast-lane`). Read by the process that calls ``add_async_job``; other jobs are
always durable.""",
    ),
    Setting(
        "queues",
        Queues(),
        default="default",
        blank_is_default=True,
        doc="""Letters, digits, ``_``, ``.``, ``-``; up to 100 characters; not starting
with ``.`` or ``-``; no repeats. The first is where ``add_*_job`` sends jobs without
``queue=``. Each queue has its own broker queue and APScheduler table, and ``pscheduler
-q`` runs a subset. An empty value means ``default``. Names that differ only in case
(``Jobs jobs``) are refused: some databases would give them one table.""",
    ),
    Setting(
        "id",
        Text(strip=False),
        default_doc="the queue names joined by ``;``",
        blank_is_default=True,
        doc="A name for this scheduler, shown in the daemon's start and stop log lines.",
    ),
    Setting(
        "delegator",
        DottedName(),
        default_doc="none",
        blank_is_default=True,
        doc="""A callable that runs every job in place of the direct call:
``delegator(func, args, kwargs)`` (``args`` a list, ``kwargs`` a dict), inside the same
registry and transaction context. Its return value is the run's result.""",
    ),
    Setting(
        "serializer",
        Choice(
            ("json",),
            "'json' (pickle is no longer accepted on the wire: a pickle message "
            "from the broker can run any code in the daemon)",
        ),
        default="json",
        doc="``pickle`` is refused: a pickle from the broker can run any code in the daemon.",
    ),
    Setting(
        "timezone",
        Zone(),
        default="UTC",
        doc="""For example ``Europe/Paris``. Naive datetimes and ISO strings without an
offset passed to ``add_*_job`` are read in this zone (never the host's), and it is the zone
of cron fields when a job gives no ``timezone=``. The producer writes the zone into every
message; the daemon's value applies only to messages that carry none.""",
    ),
    Setting(
        "broker.url",
        BrokerAddress(),
        field="broker",
        default=DEFAULT_BROKER_URL,
        doc="""Where job messages go. A Kombu URL with scheme ``redis``, ``rediss``,
``sentinel``, ``amqp``, ``amqps``, ``pyamqp``, ``librabbitmq`` or ``memory`` (one process
only); or a SQLAlchemy URL with scheme ``sqlite``, ``postgresql``, ``mysql`` or ``mariadb``
(with an optional ``+driver``), served by the built-in SQL transport (see :doc:`embedded`).
The 0.3.4 forms are translated, see below. Other schemes, and other
``module:Transport+url`` forms, are refused. Relative SQLite paths are relative to the
current directory; use ``%(here)s`` in INI files.""",
    ),
    Setting(
        "broker.transport_options.*",
        TransportOptions(),
        field="broker_transport_options",
        default_doc="see meaning",
        doc="""Each ``scheduler.broker.transport_options.NAME = VALUE`` becomes Kombu
transport option ``NAME``; ``true``/``false`` become booleans, numbers become ``int`` or
``float``, anything else stays a string. They override the defaults pyramid_scheduler sets:
SQL transport ``visibility_timeout = 300`` (also understands ``polling_interval``, default
``0.02``) and ``busy_timeout`` = ``broker.timeout`` (how long SQLite waits for another
process's lock); Redis ``visibility_timeout = 60``, ``socket_timeout`` and
``socket_connect_timeout`` = ``broker.timeout``, ``unacked_key``, ``unacked_index_key``,
``unacked_mutex_key`` under ``broker.queue_prefix``; AMQP ``confirm_publish = true``,
``read_timeout`` and ``write_timeout`` = ``broker.timeout``. (The publishing pool uses half
of ``broker.timeout`` for each of these timeouts.)""",
    ),
    Setting(
        "broker.timeout",
        Duration(above_zero=True),
        default="5s",
        doc="""Bounds every broker wait of the producer: ``add_*_job`` returns or raises
``EnqueueError`` within this (plus about 0.5 s). Waiting for a pooled connection, and each
broker round trip (connect, socket read or write, publisher confirm, SQLite lock wait), get
at most half of it; retries fill the rest. The daemon's connection uses the whole value for
each of those waits, and on RabbitMQ sends heartbeats every twice this (at least 2 s).""",
    ),
    Setting(
        "broker.pool_limit",
        Whole(1),
        default="10",
        doc="""Broker connections (and producers) in each process's publishing pool. A
call that finds them all busy waits at most half of ``broker.timeout`` for one, then raises
``EnqueueError`` ("no broker connection free").""",
    ),
    Setting(
        "broker.prefetch",
        Whole(1),
        default="64",
        doc="""The daemon's consumer prefetch count, and the most messages it handles as
one batch (stores together): on Redis taken in one round trip, elsewhere those already
delivered.""",
    ),
    Setting(
        "broker.queue_prefix",
        Text(),
        default="pyramid_scheduler.",
        doc="""Prefix of the broker-side queue names: queue ``default`` is broker queue
``pyramid_scheduler.default``. Lets several applications share one Redis or RabbitMQ.""",
    ),
    Setting(
        "jobstore.url",
        StoreAddress(),
        default=DEFAULT_JOBSTORE_URL,
        blank_is_default=True,
        doc="""Where jobs, run records, leases and dead letters are kept: a SQLAlchemy
URL with scheme ``sqlite``, ``postgresql``, ``mysql`` or ``mariadb`` (``+driver``
allowed), or ``memory`` to keep jobs in the daemon's memory only (lost on restart; no
leases, no job records, no recovery). The tables are created on first use. Relative SQLite
paths are relative to the current directory. ``postgres://`` is read as
``postgresql://``; a PostgreSQL URL without a driver uses psycopg 3 when psycopg2 is not
installed; a URL whose driver does not import is refused when the configuration is
committed. On PostgreSQL 12 and later each connection sets ``plan_cache_mode =
force_custom_plan`` for its session (unless the database, the role or the URL's
``options`` set another mode than ``auto``): the tables grow from empty to many thousands
of rows within one session, and a plan kept from when a table was small would scan all of
it ever after (see :doc:`performance`). Behind a pooler in transaction mode (PgBouncer),
set it for the database instead (``ALTER DATABASE ... SET plan_cache_mode =
force_custom_plan``).""",
    ),
    Setting(
        "jobstore.default.class",
        StoreClass(),
        field="",
        default_doc="empty",
        blank_is_default=True,
        doc="""0.3.4 compatibility. ``memory``,
``apscheduler.jobstores.memory:MemoryJobStore`` (or the 0.3.4 ``ram_store:RAMJobStore``
names) select the memory store unless ``jobstore.url`` is set; ``sqlalchemy`` or
``apscheduler.jobstores.sqlalchemy:SQLAlchemyJobStore`` (or ``sqlalchemy_store``) select
the SQL store at ``jobstore.url``. Any other class is refused.""",
    ),
    Setting(
        "jobstore.tablename_prefix",
        Text(r"^[A-Za-z_][A-Za-z0-9_]*$", "an SQL identifier"),
        default="pyramid_scheduler_",
        doc="""Prefixed to the job store's tables: ``<prefix>jobs``, ``<prefix>runs``,
``<prefix>leases``, ``<prefix>dead_letters``, ``<prefix>event_seqs``, ``<prefix>schema``
(the tables' version) and one ``<prefix>aps_<queue>`` per queue (a queue name with
characters other than letters, digits and ``_``, such as ``a.b``, gets them replaced by
``_`` and a digest of the name appended: ``<prefix>aps_a_b_2e7336dc8e``, so that ``a.b``,
``a-b`` and ``a_b`` have three tables). (The SQL transport's table is always
``pyramid_scheduler_messages``.) See :ref:`migrations`.""",
    ),
    Setting(
        "sqlite.wal",
        FLAG,
        default="true",
        doc="""``true``: the job store's and the SQL broker's SQLite files are switched to
the WAL journal, so that the web processes read while the daemon writes. The journal mode
belongs to the file and stays after the scheduler's connections close: on a database shared
with the application (``%(sqlalchemy.url)s``) set ``false`` to leave its mode as it is
(readers then wait for writers; the busy timeout covers it). The scheduler's own
connections also set ``synchronous = NORMAL`` and a busy timeout, for themselves only. No
effect on other databases.""",
    ),
    Setting(
        "housekeeping",
        Duration(above_zero=True),
        default="24h",
        doc="""How often the daemon runs housekeeping (first one interval after it
starts). Housekeeping purges records older than ``result_ttl`` (or their job's ``ttl=``),
then calls the ``housekeeping.append`` callables.""",
    ),
    Setting(
        "housekeeping.append",
        DottedNames(),
        default_doc="none",
        doc="""Each is called with no arguments at every housekeeping, with the registry
current. A callable that raises is logged; the others still run.""",
    ),
    Setting(
        "misfire_grace_time",
        WholeSeconds(),
        default="3600",
        default_doc="(1 hour)",
        doc="""How late a scheduled run may start (after downtime or under load). A later
run is not started and is reported ``JOB_MISSED`` (unless a recurring job's ``catch_up``
is ``once`` or ``all``). Whole seconds, because APScheduler takes no other. Jobs from
``add_async_job`` have no limit unless they set ``misfire_grace_time=``; other jobs may
override it per job (``None``: no limit).""",
    ),
    Setting(
        "coalesce",
        FLAG,
        default="true",
        doc="""The default of the per-job ``coalesce`` option: when several runs of a
recurring job are due at once (after downtime), run it once for the latest of them (the
others are reported missed). Applies with ``catch_up = skip``.""",
    ),
    Setting(
        "catch_up",
        Choice(
            CATCH_UP_POLICIES,
            "'skip' (overdue runs past misfire_grace_time are not run), 'once' (one run "
            "for all overdue runs) or 'all' (every overdue run, up to scheduler.catch_up_limit)",
        ),
        default="skip",
        doc="""What a recurring job does with runs that fell due while it could not run
(see "A catch-up policy" in :doc:`guarantees`): ``skip`` (runs later than the misfire
grace time are not run), ``once`` (one run for all of them) or ``all`` (each of them). The
default of the per-job ``catch_up`` option, for jobs that set neither ``catch_up`` nor
``misfire_grace_time`` nor ``coalesce`` (those keep ``skip``, the policy that uses them);
read by the daemon when a job arrives.""",
    ),
    Setting(
        "catch_up_limit",
        Whole(1),
        default="100",
        doc="""Overdue runs of one job handled one by one (run or recorded missed); beyond
it, the overdue runs up to the latest are one ``missed`` record and one ``JOB_MISSED``
event with their count. Bounds the work after a long outage or a clock jump.""",
    ),
    Setting(
        "executor",
        Choice(
            ("thread",),
            "'thread' (jobs need the application's registry, which a process pool cannot share)",
            aliases=(("threadpool", "thread"), ("default", "thread")),
            show_stripped=True,
            fold_case=False,
        ),
        default="thread",
        doc="Jobs need the application's registry, which a process pool cannot share.",
    ),
    Setting(
        "executor.max_workers",
        Whole(1),
        field="max_workers",
        default="10",
        doc="Threads running jobs at the same time in one daemon.",
    ),
    Setting(
        "shutdown_timeout",
        Duration(),
        default="30s",
        doc="""On SIGTERM or SIGINT, how long the daemon waits for running jobs before it
releases the lease (see :ref:`signals`). ``pscheduler --processes`` and ``--restart``
kill a daemon still running 10 s after that.""",
    ),
    Setting(
        "processes",
        Whole(1),
        default="1",
        doc="""How many daemon processes ``pscheduler CONFIG-URI`` starts (its
``--processes`` option overrides it). Above 1, ``pscheduler`` supervises them: it starts
each as a child process, restarts one that dies, and passes signals on (see
:ref:`processes`). Read by ``pscheduler`` only, from the application's section, before
it loads the application.""",
    ),
    Setting(
        "lease.ttl",
        Duration(minimum=1),
        default="3s",
        doc="""Every daemon renews its heartbeat every ttl/3; one whose heartbeat is older
than the ttl is dead to the others, which take its work over, and it starts no run again
(it exits with code 3). The same ttl times the lease that lets one daemon of a set of
queues do the single-owner work (recovery, declared jobs, housekeeping). Failover takes
at most ttl + 1 s (see :ref:`several-daemons`).""",
    ),
    Setting(
        "result_ttl",
        Duration(),
        default="7d",
        doc="""Finished job records (and their run records) and dead letters older than
this are deleted at housekeeping. A job's own ``ttl=`` option overrides it for its record
(see :doc:`results`).""",
    ),
    Setting(
        "max_message_size",
        Whole(64, unit="bytes"),
        default="262144",
        default_doc="(256 KiB)",
        doc="""``add_*_job`` refuses a larger message with ``InvalidJob``; the daemon
dead-letters one. On the SQL transport and Redis a broker entry larger than this in base64
(plus 16 KiB for its envelope) is not even read (see :ref:`the-door`).""",
    ),
    Setting(
        "secret",
        Secret(),
        default_doc="none",
        blank_is_default=True,
        doc="""When set, producers sign every message with HMAC-SHA256 (its body, queue,
content type and encoding) and a daemon that has it refuses unsigned or wrongly signed
messages, and signed ones older than ``scheduler.max_message_age`` (see
:doc:`wire-format`). Unset, the daemon logs a ``SECURITY`` warning at start. Use the same
value everywhere; generate one with ``python -c 'import secrets;
print(secrets.token_hex(32))'``.""",
    ),
    Setting(
        "max_message_age",
        Duration(),
        default_doc="``scheduler.result_ttl``",
        doc="""``0`` for no limit. With ``scheduler.secret`` set, a message whose
``sent_at`` is older than this when the daemon reads it is dead-lettered as a possible
replay (a captured message sent again once its job's record is gone). A message that waits
in the broker longer than this (a daemon down for days) is refused too: raise it if your
daemons may be down that long.""",
    ),
    Setting(
        "dead_letters.max",
        Whole(1),
        default="10000",
        doc="""Dead letters kept. Beyond it the oldest are dropped as new ones are
written, with a ``WARNING`` that counts them (each dead letter keeps the first 4 KiB of its
body, its size and its SHA-256).""",
    ),
    Setting(
        "allowed_modules",
        Modules(),
        default_doc="empty (any module)",
        doc="""Job functions must live in one of them or in a module below one
(``myapp.jobs`` allows ``myapp.jobs.mail``). Checked before anything is imported, by
``add_*_job``, by the daemon at its door and as it loads each stored job (a refused one is
parked). A reference must name a function where it is defined (``myapp.jobs:os.system``
is refused); see :doc:`security`.""",
    ),
    Setting(
        "insecure",
        FLAG,
        default="false",
        doc="""A process that runs jobs (``pscheduler``, or combined mode) refuses to start
when its broker is reachable from other machines (a host other than ``localhost`` or a
loopback address) and neither ``scheduler.secret`` nor ``scheduler.allowed_modules`` is
set; ``true`` lets it start anyway (``pscheduler`` otherwise exits with code 13). See
:doc:`security`.""",
    ),
    Setting(
        "func_aliases",
        Aliases(),
        default_doc="none",
        doc="""Renamed job functions, one per line. A stored job or an arriving message
naming an old function runs the new one (checked against ``scheduler.allowed_modules``
under its new name). Parked jobs of a renamed function run once the daemon has the alias
(see :doc:`guarantees`). Give each old name its final new name (no chains).""",
    ),
    Setting(
        "interrupted",
        Choice(
            ("record", "rerun"),
            "'record' (a run cut short by a crash is reported interrupted, never run twice) "
            "or 'rerun' (it is run once more after the restart)",
        ),
        default="record",
        doc="""What a daemon taking over does with a run that a crash cut short (found
``started`` in the run ledger). ``record``: report it interrupted and never run it again
(at most once). ``rerun``: for a one-off job (or the last run of a series), report it
interrupted and run it once more (at least once; a second interruption is only recorded).
See :doc:`guarantees`.""",
    ),
    Setting(
        "events.subscribe",
        FLAG,
        default="false",
        doc="""``true``: this process receives the job events of the daemons (every queue,
when they have ``events.publish``, whose default is this setting) on the broker's fan-out
exchange ``<broker.queue_prefix>events``; its ``add_listener`` listeners and
``config.add_subscriber`` subscribers get them, in order per job, each with ``seq``.
Started when the application is created (``ApplicationCreated``), stopped by
``registry.scheduler.shutdown()``; a server that forks after loading the application
(``gunicorn --preload``) leaves its workers without it. Needs a Redis or RabbitMQ broker:
with the SQL broker (no fan-out) ``true`` is refused. See :ref:`events-everywhere`.""",
    ),
    Setting(
        "events.publish",
        FLAG,
        default_doc="the value of ``events.subscribe``",
        doc="""In a process that runs jobs (``pscheduler``, combined mode): publish every
job event on the fan-out exchange, for the processes that subscribe. It costs one counter
update in the job store and one publish per event, on the event thread. Unset, it follows
``events.subscribe``, so one INI file shared by the web processes and the daemons turns on
both ends. Needs a Redis or RabbitMQ broker.""",
    ),
    Setting(
        "testing.eager",
        FLAG,
        default="false",
        doc="""Read by :doc:`testing` only: ``true`` runs each job that is due as soon as
it is added (an async job inside the ``add_async_job`` call) instead of at
``run_pending()`` or ``clock.advance()``.""",
    ),
    Setting(
        "apscheduler.*",
        APSchedulerOptions(),
        field="apscheduler",
        default_doc="none",
        doc="""APScheduler configuration, passed to ``BackgroundScheduler.configure()``:
``scheduler.apscheduler.jobstore_retry_interval = 5`` sets its ``jobstore_retry_interval``.
Not checked, except that ``jobstores``, ``executors``, ``job_defaults`` and ``timezone``
(which pyramid_scheduler sets) are refused with the setting to use instead.""",
    ),
    *OPERATIONS,
    *SETTINGS_TASKS,
    *SETTINGS_LIMITS,
    *SHELL_SETTINGS,
    *SETTINGS_FLOW,
)

#: The families of free names: ``NAME.`` -> their setting.
FAMILIES = {setting.family: setting for setting in SETTINGS if setting.family}
#: Keys with a fixed name, beside the ``apscheduler.*`` and
#: ``broker.transport_options.*`` families.
KNOWN_KEYS = frozenset(setting.key for setting in SETTINGS if not setting.family)
#: The field each key sets ("" for a key read together with another).
BY_ATTR = {setting.key: setting.attr for setting in SETTINGS}
