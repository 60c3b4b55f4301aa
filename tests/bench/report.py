"""The printed report: a table per server, the two systems side by side, the targets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.bench.background import BackgroundRun
from tests.bench.queries import QUERY_CONCURRENCY
from tests.bench.querybench import QueryRun
from tests.bench.runner import (
    CREATE_NEW,
    DESCRIPTIONS,
    HEALTH,
    IMBALANCE_SHARE,
    READ,
    SET_STATE_CYCLE,
    SET_STATE_START,
    Cell,
    Plan,
    ServerRun,
)
from tests.bench.servers import OURS, PREFECT

DATABASE_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
SYSTEM_NAMES = {OURS: "taskrun-api", PREFECT: "Prefect 3.9.1"}

# The targets, checked against the measured numbers (printed, never asserted).
TARGET_CONCURRENCY = 16
TARGET_TIMES_PREFECT_RPS = 15.0
TARGET_FRACTION_OF_PREFECT_P99 = 0.1
TARGET_SHARE_OF_HEALTH = {CREATE_NEW: 0.5, READ: 0.7}
TARGET_PEAK_RSS_MB = 150.0
# set_state: successful (2xx) requests per second, times Prefect's, by database.
TARGET_SET_STATE_TIMES_PREFECT = {"sqlite": 15.0, "postgresql": 15.0}
# The workers' CPU ms per request at the target concurrency, on SQLite.
TARGET_CPU_MS_PER_REQUEST = {READ: 0.5, CREATE_NEW: 1.0}
TARGET_BACKGROUND_TIMES_PREFECT = 3.0

MET, NOT_MET, UNAVAILABLE = "met", "NOT MET", "unavailable"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _per_worker(values: Sequence[float | None], digits: int) -> str:
    return " / ".join(_number(value, digits) for value in values)


def _latency(cell: Cell, value: float) -> str:
    """A latency, or "no answer" when not one request finished within the cell."""
    return "no answer" if cell.requests_per_second == 0 else _number(value, 2)


def _statuses(cell: Cell) -> str:
    return " ".join(f"{status}:{count}" for status, count in cell.statuses.items())


def _errors(non_2xx: int, socket_errors: int) -> str:
    return f"{non_2xx}" + (f" +{socket_errors} sock" if socket_errors else "")


# ---------------------------------------------------------------------------------------
# Header and per-server tables


def header(plan: Plan, context: dict[str, Any]) -> str:
    """What was run, how, and how to read the numbers."""
    mode = "QUICK mode" if plan.quick else "full mode"
    concurrencies = ", ".join(str(c) for c in plan.concurrencies)
    return "\n".join(
        [
            f"taskrun-api bench, {mode}: {plan.seconds} s per cell, {plan.repetitions}"
            f" repetition(s), each figure the median of the repetitions",
            "  (non-2xx and socket errors: totals over the repetitions; CPU s: median per"
            " worker; peak RSS: highest sample, every 0.1 s, per worker)",
            f"  concurrency {concurrencies} = wrk connections; wrk threads = min(concurrency,"
            f" {context['wrk_max_threads']}); warm-up {plan.warmup_seconds} s of mix first",
            f"  machine: {context['cpus']} CPUs shared by wrk and the server, 1-min load"
            f" average {context['load_average'][0]:.2f} at the start; {context['wrk_version']}",
            "  other CPU s: the machine's CPU time in a cell that was neither a worker's nor"
            " wrk's (PostgreSQL, the server's supervisor, anything else running); a cell has"
            f" {context['cpus']} x {plan.seconds} = {(context['cpus'] or 1) * plan.seconds}"
            " CPU s in all",
            f"  commit {context['commit']}{' (working tree modified)' if context['dirty'] else ''}",
            *(f"  {name:<16} {text}" for name, text in DESCRIPTIONS.items()),
        ]
    )


def server_table(run: ServerRun) -> str:
    """Every cell measured against one server."""
    headers = [
        "operation", "conc", "req/s", "p50 ms", "p99 ms", "non-2xx", "sock err",
        "of health", "CPU ms/req", "worker CPU s", "wrk CPU s", "other CPU s",
        "worker peak RSS MB", "statuses",
    ]  # fmt: skip
    rows = [
        [
            cell.operation,
            str(cell.concurrency),
            _number(cell.requests_per_second),
            _number(cell.p50_ms, 2),
            _number(cell.p99_ms, 2),
            str(cell.non_2xx),
            str(cell.socket_errors),
            _percent(run.share_of_health(cell)) if cell.operation != HEALTH else "",
            _number(cell.cpu_ms_per_request, 2),
            _per_worker(cell.worker_cpu_seconds(), 1) + (" !" if cell.imbalanced() else ""),
            _number(cell.wrk_cpu_seconds),
            _number(cell.other_cpu_seconds),
            _per_worker(cell.worker_peak_rss_mb(), 0),
            _statuses(cell),
        ]
        for cell in run.measured_cells
    ]
    title = (
        f"{SYSTEM_NAMES[run.system]} on {DATABASE_NAMES[run.database]}"
        f" ({len(run.worker_pids)} worker process(es))"
    )
    # A run of the background cell alone has no wrk cells to tabulate.
    parts = [title, format_table(headers, rows)] if rows else [title]
    if run.log_tracebacks:
        parts.append(
            f"  note: the server logged {run.log_tracebacks} traceback(s); the JSON has its"
            " log's last lines"
        )
    if not run.health_available:
        parts.append("  /api/health did not answer 200: the ceiling is unavailable, no ratios")
    parts.extend(imbalance_warnings(run))
    if run.background is not None:
        parts.append(background_line(run.background))
    parts.extend(
        f"  warning: {cell.operation} c={cell.concurrency} ran out of prepared runs:"
        f" {cell.reused} request(s) proposed for a run a second time"
        for cell in run.measured_cells
        if cell.reused
    )
    return "\n".join(parts)


def background_line(background: BackgroundRun) -> str:
    """The background-task cell, with where its time went, per task."""
    if background.error is not None:
        return f"  background: FAILED: {background.error}"
    run = background
    waits = run.service_wait_seconds
    waited = ", ".join(
        f"{kind} {_number(run.per_task_ms(seconds), 1)}" for kind, seconds in sorted(waits.items())
    )
    cpu = run.cpu_ms_per_task
    known = [value for value in cpu.values() if value is not None]
    total = sum(known) if len(known) == len(cpu) else None
    cpus = os.cpu_count() or 1
    bound = (
        f" = {total:.0f} ms on {cpus} CPUs: at most {cpus * 1000 / total:.1f} tasks/s"
        " (the database's own CPU not counted)"
        if total
        else ""
    )
    return "\n".join(
        [
            f"  background: {run.completed}/{run.tasks} results back in"
            f" {run.total_seconds:.1f} s = {run.tasks_per_second:.1f} tasks/s ({run.lost} lost);"
            f" delaying took {run.delay_seconds:.1f} s, collecting the results"
            f" {run.results_seconds:.1f} s",
            f"    per task in the delay side: {_number(run.per_task_ms(run.delay_seconds), 1)} ms"
            f" delaying + {_number(run.per_task_ms(run.results_seconds), 1)} ms collecting, of"
            f" which {_number(run.per_task_ms(sum(waits.values())), 1)} ms waiting for the"
            f" server's HTTP answers ({waited})",
            "    CPU ms per task: "
            + ", ".join(f"{who} {_number(value, 1)}" for who, value in cpu.items())
            + bound,
            f"    one task at a time: {_number(run.round_trip_median_ms, 0)} ms from .delay() to"
            f" its result (median of {len(run.round_trip_ms)})"
            if run.round_trip_error is None
            else f"    one task at a time: FAILED: {run.round_trip_error}",
        ]
    )


def imbalance_warnings(run: ServerRun) -> list[str]:
    """A line for every cell in which one worker got too little of the CPU."""
    warnings = []
    for cell in run.measured_cells:
        lowest = cell.lowest_cpu_share()
        if cell.imbalanced() and lowest is not None:
            warnings.append(
                f"  warning (!): {cell.operation} c={cell.concurrency}: a worker got only"
                f" {lowest:.0%} of the server CPU of a repetition (< {IMBALANCE_SHARE:.0%});"
                " uvicorn gave it too few connections, the cell may be up to 2x off"
            )
    return warnings


# ---------------------------------------------------------------------------------------
# Side by side


def side_by_side(ours: ServerRun, prefect: ServerRun) -> str:
    """Our cells next to Prefect's on the same database, with the ratios ours/Prefect."""
    headers = [
        "operation", "conc", "2xx/s ours", "2xx/s Prefect", "ours/Prefect",
        "p99 ms ours", "p99 ms Prefect", "ours/Prefect", "CPU ms/req ours",
        "CPU ms/req Prefect", "non-2xx ours", "non-2xx Prefect",
    ]  # fmt: skip
    rows = []
    for cell in ours.measured_cells:
        theirs = prefect.cell(cell.operation, cell.concurrency)
        if theirs is None:
            continue
        rps_ratio = _ratio(cell.successful_per_second, theirs.successful_per_second)
        p99_ratio = _ratio(cell.p99_ms, theirs.p99_ms) if theirs.requests_per_second else None
        rows.append(
            [
                cell.operation,
                str(cell.concurrency),
                _number(cell.successful_per_second),
                _number(theirs.successful_per_second),
                "-" if rps_ratio is None else f"{rps_ratio:.1f}x",
                _latency(cell, cell.p99_ms),
                _latency(theirs, theirs.p99_ms),
                "-" if p99_ratio is None else f"{p99_ratio:.3f}",
                _number(cell.cpu_ms_per_request, 2),
                _number(theirs.cpu_ms_per_request, 2),
                _errors(cell.non_2xx, cell.socket_errors),
                _errors(theirs.non_2xx, theirs.socket_errors),
            ]
        )
    title = f"{DATABASE_NAMES[ours.database]}: taskrun-api next to Prefect 3.9.1"
    lines = [title, format_table(headers, rows)] if rows else [title]
    if ours.background is not None and prefect.background is not None:
        ratio = _ratio(ours.background.tasks_per_second, prefect.background.tasks_per_second)
        lines.append(
            f"background tasks: {ours.background.tasks_per_second:.1f} vs"
            f" {prefect.background.tasks_per_second:.1f} tasks/s"
            f" = {'-' if ratio is None else f'{ratio:.1f}x'}"
            f" ({ours.background.tasks} vs {prefect.background.tasks} tasks; lost"
            f" {ours.background.lost} vs {prefect.background.lost}); one task at a time,"
            f" .delay() to result: {_number(ours.background.round_trip_median_ms, 0)} vs"
            f" {_number(prefect.background.round_trip_median_ms, 0)} ms"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class TargetCheck:
    """One target on one database, and whether the numbers meet it."""

    database: str
    target: str
    status: str
    detail: str

    def as_json(self) -> dict[str, str]:
        return {
            "database": self.database,
            "target": self.target,
            "status": self.status,
            "detail": self.detail,
        }


def check_targets(ours: ServerRun, prefect: ServerRun | None) -> list[TargetCheck]:
    """Every target that applies to what was measured on one database."""
    checks: list[TargetCheck] = []
    if prefect is not None:
        checks.extend(_prefect_targets(ours, prefect))
        checks.extend(_set_state_targets(ours, prefect))
        checks.append(_background_target(ours, prefect))
    checks.append(_no_errors_target(ours))
    checks.extend(
        _health_share_target(ours, op, share) for op, share in TARGET_SHARE_OF_HEALTH.items()
    )
    checks.append(_memory_target(ours))
    if ours.database == "sqlite":
        checks.extend(
            _cpu_target(ours, operation, limit)
            for operation, limit in TARGET_CPU_MS_PER_REQUEST.items()
        )
    return checks


def _check(database: str, target: str, ok: bool | None, detail: str) -> TargetCheck:
    status = UNAVAILABLE if ok is None else MET if ok else NOT_MET
    return TargetCheck(database=database, target=target, status=status, detail=detail)


def _prefect_targets(ours: ServerRun, prefect: ServerRun) -> list[TargetCheck]:
    checks = []
    for operation in (CREATE_NEW, READ):
        mine = ours.cell(operation, TARGET_CONCURRENCY)
        theirs = prefect.cell(operation, TARGET_CONCURRENCY)
        name = f"{operation} c={TARGET_CONCURRENCY}"
        if mine is None or theirs is None:
            for what in ("req/s", "p99"):
                checks.append(
                    _check(
                        ours.database,
                        f"{name} {what} vs Prefect",
                        None,
                        f"c={TARGET_CONCURRENCY} not measured",
                    )
                )
            continue
        # Successful requests: Prefect answers many creates on SQLite with 503 at once.
        rps = _ratio(mine.successful_per_second, theirs.successful_per_second)
        p99 = _ratio(mine.p99_ms, theirs.p99_ms)
        checks.append(
            _check(
                ours.database,
                f"{name} 2xx/s >= {TARGET_TIMES_PREFECT_RPS:.0f}x Prefect's",
                None if rps is None else rps >= TARGET_TIMES_PREFECT_RPS,
                f"{mine.successful_per_second:,.1f} vs {theirs.successful_per_second:,.1f}"
                f" = {_number(rps)}x",
            )
        )
        checks.append(
            _check(
                ours.database,
                f"{name} p99 <= 1/{1 / TARGET_FRACTION_OF_PREFECT_P99:.0f} of Prefect's",
                None if p99 is None else p99 <= TARGET_FRACTION_OF_PREFECT_P99,
                f"{mine.p99_ms:,.2f} ms vs {theirs.p99_ms:,.2f} ms = {_number(p99, 3)}",
            )
        )
    return checks


def _set_state_targets(ours: ServerRun, prefect: ServerRun) -> list[TargetCheck]:
    times = TARGET_SET_STATE_TIMES_PREFECT[ours.database]
    checks = []
    for operation in (SET_STATE_START, SET_STATE_CYCLE):
        mine = ours.cell(operation, TARGET_CONCURRENCY)
        theirs = prefect.cell(operation, TARGET_CONCURRENCY)
        target = f"{operation} c={TARGET_CONCURRENCY} 2xx/s >= {times:.0f}x Prefect's"
        if mine is None or theirs is None:
            checks.append(_check(ours.database, target, None, "not measured"))
            continue
        ratio = _ratio(mine.successful_per_second, theirs.successful_per_second)
        checks.append(
            _check(
                ours.database,
                target,
                None if ratio is None else ratio >= times,
                f"{mine.successful_per_second:,.1f} vs {theirs.successful_per_second:,.1f}"
                f" = {_number(ratio)}x",
            )
        )
        p99 = _ratio(mine.p99_ms, theirs.p99_ms)
        checks.append(
            _check(
                ours.database,
                f"{operation} c={TARGET_CONCURRENCY} p99 <= 1/"
                f"{1 / TARGET_FRACTION_OF_PREFECT_P99:.0f} of Prefect's",
                None if p99 is None else p99 <= TARGET_FRACTION_OF_PREFECT_P99,
                f"{mine.p99_ms:,.2f} ms vs {theirs.p99_ms:,.2f} ms = {_number(p99, 3)}",
            )
        )
    return checks


def _background_target(ours: ServerRun, prefect: ServerRun) -> TargetCheck:
    target = f"background tasks/s >= {TARGET_BACKGROUND_TIMES_PREFECT:.0f}x Prefect's, none lost"
    mine, theirs = ours.background, prefect.background
    if mine is None or theirs is None or mine.error or theirs.error:
        return _check(ours.database, target, None, "not measured")
    ratio = _ratio(mine.tasks_per_second, theirs.tasks_per_second)
    met = ratio is not None and ratio >= TARGET_BACKGROUND_TIMES_PREFECT and mine.lost == 0
    detail = (
        f"{mine.tasks_per_second:.1f} vs {theirs.tasks_per_second:.1f} = {_number(ratio)}x,"
        f" {mine.lost} lost"
    )
    return _check(ours.database, target, met, detail)


def _no_errors_target(
    ours: ServerRun, target: str = "zero non-2xx (and socket errors) under load"
) -> TargetCheck:
    failing = [
        f"{cell.operation} c={cell.concurrency}: {_errors(cell.non_2xx, cell.socket_errors)}"
        for cell in ours.measured_cells
        if cell.non_2xx or cell.socket_errors
    ]
    detail = "; ".join(failing) if failing else f"0 in {len(ours.measured_cells)} cells"
    return _check(ours.database, target, not failing, detail)


def _health_share_target(ours: ServerRun, operation: str, share: float) -> TargetCheck:
    target = f"{operation} >= {share:.0%} of /api/health"
    if not ours.health_available:
        return _check(ours.database, target, None, "/api/health unavailable")
    values = [
        (cell.concurrency, ours.share_of_health(cell))
        for cell in ours.measured_cells
        if cell.operation == operation
    ]
    known = [(concurrency, value) for concurrency, value in values if value is not None]
    if not known:
        return _check(ours.database, target, None, "not measured")
    detail = ", ".join(f"c={concurrency} {value:.0%}" for concurrency, value in known)
    return _check(ours.database, target, all(value >= share for _, value in known), detail)


def _memory_target(ours: ServerRun) -> TargetCheck:
    target = f"peak RSS per worker <= {TARGET_PEAK_RSS_MB:.0f} MB"
    peaks = [(max(cell.worker_peak_rss_mb(), default=0.0), cell) for cell in ours.measured_cells]
    if not peaks:
        return _check(ours.database, target, None, "not measured")
    highest, cell = max(peaks, key=lambda peak: peak[0])
    detail = f"highest {highest:.0f} MB ({cell.operation} c={cell.concurrency})"
    return _check(ours.database, target, highest <= TARGET_PEAK_RSS_MB, detail)


def _cpu_target(ours: ServerRun, operation: str, limit_ms: float) -> TargetCheck:
    target = f"{operation} c={TARGET_CONCURRENCY} CPU per request <= {limit_ms} ms"
    cell = ours.cell(operation, TARGET_CONCURRENCY)
    measured = None if cell is None else cell.cpu_ms_per_request
    if measured is None:
        return _check(ours.database, target, None, "not measured")
    return _check(ours.database, target, measured <= limit_ms, f"{measured:.2f} ms")


def targets_section(checks: list[TargetCheck]) -> str:
    """The targets, one line each, marked met / NOT MET / unavailable."""
    lines = ["Targets (printed, not asserted; taskrun-api's numbers)"]
    for check in checks:
        lines.append(
            f"  [{check.status:^11}] {DATABASE_NAMES[check.database]:<10} {check.target}:"
            f" {check.detail}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Query cells

# How much of a statement the plans show (the whole of it is in the JSON).
SQL_SHOWN_CHARACTERS = 400


def query_header(query: QueryRun) -> str:
    """Which table the query cells ran on."""
    size = f"{query.runs:,} runs"
    if query.quick:
        size += " (QUICK: a small table, not the one the targets are set for)"
    return (
        f"{SYSTEM_NAMES[query.run.system]} on {DATABASE_NAMES[query.run.database]}: query"
        f" cells on {size}; {query.load}"
    )


def query_table(query: QueryRun) -> str:
    """Every query cell of one server, against its target."""
    headers = [
        "cell", "conc", "req/s", "p50 ms", "p99 ms", "p99 target", "", "non-2xx",
        "worker CPU s", "statuses",
    ]  # fmt: skip
    targets = {cell.name: cell.target_p99_ms for cell in query.cells}
    rows = []
    for cell in query.run.measured_cells:
        target = targets[cell.operation]
        rows.append(
            [
                cell.operation,
                str(cell.concurrency),
                _number(cell.requests_per_second),
                _latency(cell, cell.p50_ms),
                _latency(cell, cell.p99_ms),
                f"<= {target:.0f}",
                MET if cell.p99_ms <= target and cell.requests_per_second else NOT_MET,
                _errors(cell.non_2xx, cell.socket_errors),
                _per_worker(cell.worker_cpu_seconds(), 1),
                _statuses(cell),
            ]
        )
    lines = [query_header(query), format_table(headers, rows)]
    lines.extend(f"  {cell.name:<16} {cell.description}" for cell in query.cells)
    lines.extend(f"  {name}: warm-up answered {text}" for name, text in query.failures.items())
    if query.run.log_tracebacks:
        lines.append(f"  note: the server logged {query.run.log_tracebacks} traceback(s)")
    return "\n".join(lines)


def query_plans(query: QueryRun) -> str:
    """Each cell's request, the SELECTs it ran and their plans, full scans flagged."""
    lines = [f"Query plans: {query_header(query)}"]
    for cell in query.cells:
        found = query.plans.get(cell.name)
        lines.append(f"\n{cell.name}: POST {cell.path} {cell.body_text}")
        if found is None:
            lines.append("  (no plan)")
            continue
        lines.append(f"  answered {found.status} in process; {len(found.statements)} SELECT(s)")
        for statement in found.statements:
            sql = " ".join(statement.sql.split())
            shown = sql if len(sql) <= SQL_SHOWN_CHARACTERS else sql[:SQL_SHOWN_CHARACTERS] + " ..."
            lines.append(f"  SQL: {shown}")
            lines.extend(f"    {line}" for line in statement.plan)
            lines.extend(f"  !! FULL SCAN of task_run: {scan}" for scan in statement.full_scans)
            lines.extend(
                f"  !  walks a whole index of task_run unless a LIMIT stops it: {walk}"
                for walk in statement.index_walks
            )
        if not found.full_scans and found.statements:
            lines.append("  no full scan of task_run")
    return "\n".join(lines)


def query_targets(query: QueryRun) -> list[TargetCheck]:
    """Each cell's p99 against its target, no non-2xx, and no full scan of task_run."""
    database = query.run.database
    size = f" ({query.runs:,} runs{', QUICK' if query.quick else ''})"
    checks = []
    for cell in query.cells:
        measured = query.run.cell(cell.name, QUERY_CONCURRENCY)
        target = f"{cell.name} c={QUERY_CONCURRENCY} p99 <= {cell.target_p99_ms:.0f} ms{size}"
        if measured is None:
            checks.append(_check(database, target, None, "not measured"))
            continue
        detail = f"{measured.p99_ms:,.2f} ms at {measured.requests_per_second:,.1f} req/s"
        if measured.non_2xx:
            # Fast failures are no answer: the target holds only for a cell that succeeded.
            detail += f", but {measured.non_2xx} non-2xx"
        if not measured.requests_per_second:
            detail = "no request finished within the cell"
        met = (
            measured.p99_ms <= cell.target_p99_ms
            and measured.requests_per_second > 0
            and not measured.non_2xx
        )
        checks.append(_check(database, target, met, detail))
    checks.append(_no_errors_target(query.run, "query cells: zero non-2xx (and socket errors)"))
    if query.plans:
        checks.append(_full_scan_target(query))
    return checks


def _full_scan_target(query: QueryRun) -> TargetCheck:
    target = "query cells: no full scan of task_run"
    unexplained = [name for name, found in query.plans.items() if found.status != 200]
    if unexplained:
        return _check(
            query.run.database, target, None, "no plan: failed in " + ", ".join(unexplained)
        )
    scanning = [name for name, found in query.plans.items() if found.full_scans]
    detail = "full scans in " + ", ".join(scanning) if scanning else "none in any cell"
    return _check(query.run.database, target, not scanning, detail)
