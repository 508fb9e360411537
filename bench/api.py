"""API latency under load: queue a question, read a page of history, search history.

    vidmem bench api                      # SQLite and PostgreSQL, 50/100/200 requests/s, 10 s per cell
    vidmem bench api --quick              # 1,000 stored questions, 4 s per cell
    python -m bench.api --help

For each database a fresh deployment runs as separate processes on loopback: ``vidmem api``, ``vidmem
ingest`` with one looping H.264 stream, and ``vidmem worker --queues chunks,alerts`` (the broker and memory
store are a Redis database that is FLUSHED). The worker does not take questions, so the questions this
benchmark queues wait in the broker instead of taking the CPU from the API; the stream keeps ingesting, and
every chunk must be applied (``chunks_lost`` counts pending chunks dropped and chunks failed during the
run; it must be 0). Before the load, ``stored_questions`` answered questions are inserted directly into the
database, as the tenant whose key the load generator uses.

The load generator is open-loop: request i is sent at ``start + i / rate`` whether or not earlier ones
have returned (asyncio, one keep-alive connection pool), and its latency counts from that scheduled time,
so a server that falls behind shows it (no coordinated omission). Each cell (database, endpoint, rate)
starts on an idle server (``settle``), runs ``warmup_s`` unmeasured, then ``seconds`` measured; reported:
p50, p99, max, errors, the rate achieved, and the CPU time a request cost the API's processes and the whole machine
(server, database, load generator and ingest together: on a machine of 2 cores, 200 requests/s leave 10 ms of CPU a
request, and a cell whose machine CPU nears that queues). Target: p99 < 25 ms at 200 requests/s on both databases. The
last stdout line is one JSON document; ``--out`` also writes the JSON and a PNG plot.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import httpx
import typer
import uvloop

log = logging.getLogger(__name__)

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/12"
TENANT = "bench"
ENDPOINTS = ("post_question", "history", "history_search")
WORDS = ("red", "blue", "green", "circle", "square", "triangle", "left", "right", "car", "person", "van", "door")


@dataclass(frozen=True)
class ApiBenchConfig:
    databases: tuple[str, ...] = ("sqlite", "postgres")
    rates: tuple[int, ...] = (50, 100, 200)
    endpoints: tuple[str, ...] = ENDPOINTS
    seconds: float = 10.0
    warmup_s: float = 2.0
    stored_questions: int = 10_000
    page: int = 50
    search_term: str = "triangle"
    model: str = "vidmem-tiny"
    api_workers: int = 3  # VIDMEM_API_WORKERS of the deployment (3 measured best on 2 cores)
    pg_admin_url: str = PG_ADMIN_URL
    redis_url: str = REDIS_URL


@dataclass
class Cell:
    database: str
    endpoint: str
    rate: int
    requests: int
    errors: int
    achieved_rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    api_cpu_ms: float  # CPU time of the API processes per request
    machine_cpu_ms: float  # CPU time of the whole machine per request: the API, the database, the generator, ingest
    outside_cpu_pct: float  # CPU of processes outside the benchmark (another service of the machine), % of one core


@dataclass
class Report:
    config: dict
    machine: dict
    cells: list[Cell] = field(default_factory=list)
    chunks_lost: dict[str, int] = field(default_factory=dict)
    chunks_applied: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ deployment
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(cfg: ApiBenchConfig, folder: Path, database: str):  # type: ignore[no-untyped-def]
    from vidmem.settings import Settings

    url = None
    if database == "postgres":
        from bench.workers import _create_database

        url = _create_database(cfg.pg_admin_url)
    return Settings(
        _env_file=None, data_dir=folder / database, database_url=url, broker_url=cfg.redis_url,
        model=cfg.model, file_dir=folder, api_port=_free_port(), torch_threads=1,
        api_workers=cfg.api_workers,
    )


def _seed_questions(settings, stream_id: str, count: int) -> None:  # type: ignore[no-untyped-def]
    """``count`` answered questions of the bench tenant, newest last, a minute apart, inserted in bulk."""
    from sqlalchemy import insert, text

    from store.db import make_engine
    from store.models import Question, new_id

    engine = make_engine(settings.sqlalchemy_url)
    start = datetime.now(UTC) - timedelta(minutes=count)
    rows = []
    for i in range(count):
        a, b, c = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)], WORDS[(i * 5 + 1) % len(WORDS)]
        created = start + timedelta(minutes=i)
        rows.append({
            "id": new_id(), "stream_id": stream_id, "tenant_id": TENANT, "status": "done",
            "text": f"was there a {a} {b} near the {c} at minute {i}?", "answer": f"yes, a {b} {a}",
            "created_at": created, "started_at": created, "finished_at": created + timedelta(seconds=1),
            "timings": {}, "attempts": 1,
        })
    with engine.begin() as conn:
        for first in range(0, count, 1000):
            conn.execute(insert(Question), rows[first:first + 1000])
    # statistics as a database that grew to this size has them (PostgreSQL's autovacuum analyzes within a minute
    # of such a change); without them the planner runs a search by computing every row's tsvector (74 ms, not 2)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()


def _create_key(settings) -> str:  # type: ignore[no-untyped-def]
    env = {**os.environ, **settings.to_env()}
    out = subprocess.run([sys.executable, "-m", "vidmem", "keys", "create", "--tenant", TENANT, "--name", "bench"],
                         env=env, capture_output=True, text=True, check=True).stdout
    match = re.search(r"\bvm_[A-Za-z0-9_\-]+", out)
    if not match:
        raise RuntimeError(f"no key in the output of 'vidmem keys create': {out!r}")
    return match.group(0)


class Deployment:
    """``vidmem api``, ``vidmem ingest`` and a chunks-only ``vidmem worker``, logging to data_dir."""

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        self.settings = settings
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        from vidmem.processes import parent_death_signal

        env = {**os.environ, **self.settings.to_env()}
        for name, args in (("api", ["api"]), ("ingest", ["ingest"]), ("worker", ["worker", "--queues", "chunks"])):
            with open(self.settings.data_dir / f"{name}.log", "ab") as log_file:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "vidmem", *args], env=env, stdout=log_file, stderr=subprocess.STDOUT,
                    preexec_fn=parent_death_signal(),  # noqa: PLW1509 - only a prctl call
                ))
        self._wait_api(120.0)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def _wait_api(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            exited = [name for name, p in zip(("api", "ingest", "worker"), self.procs, strict=True)
                      if p.poll() is not None]
            if exited:  # the folder goes with the run: show the end of the log here
                tail = (self.settings.data_dir / f"{exited[0]}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"vidmem {exited[0]} exited at start; the end of its log:\n{tail}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the API did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


# ------------------------------------------------------------------------------------------ CPU time
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
    """CPU seconds the machine has spent busy since boot (every state of /proc/stat but idle and iowait)."""
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def _process_stat(pid: int) -> tuple[str, float] | None:
    """A process's name and CPU seconds (user and system) now; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            head, tail = stat.read().rsplit(")", 1)
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = tail.split()
    return head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it alive now (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            child_pids = [int(x) for x in children.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return set()
    return {pid}.union(*(descendants(child) for child in child_pids))


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) of a process and its descendants alive now (uvicorn's workers)."""
    return sum(stat[1] for member in descendants(pid) if (stat := _process_stat(member)) is not None)


BENCH_SERVICES = {"postgres", "redis-server"}
"""Processes of the benchmark besides its own tree: the database and the broker it talks to."""


def process_cpu_s() -> dict[int, tuple[str, float]]:
    """Every process's name and CPU seconds (user and system) now."""
    pids = (int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit())
    return {pid: stat for pid in pids if (stat := _process_stat(pid)) is not None}


def outside_cpu_s(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  roots: list[int]) -> float:
    """CPU seconds spent between two ``process_cpu_s`` snapshots by processes outside the benchmark: not in the
    trees of ``roots`` (the deployment and the generator), not PostgreSQL or Redis. Another service of the machine
    taking a core for a moment shows here, beside the latency it caused."""
    ours = set().union(*(descendants(root) for root in roots))
    return sum(cpu - before[pid][1] for pid, (name, cpu) in after.items()
               if pid in before and pid not in ours and name not in BENCH_SERVICES)


# ------------------------------------------------------------------------------------------ load
async def _one(client: aiohttp.ClientSession, endpoint: str, stream_id: str, cfg: ApiBenchConfig, i: int) -> bool:
    if endpoint == "post_question":
        async with client.post(f"/streams/{stream_id}/questions", json={"text": f"what moved at {i}?"}) as response:
            await response.read()
            return response.status == 202
    params = {"limit": cfg.page}
    if endpoint == "history_search":
        params["q"] = cfg.search_term
    async with client.get("/questions", params=params) as response:
        # a page that is not empty, checked without parsing it: the generator shares the cores with the server,
        # and parsing 50 questions cost it half a millisecond a request
        return response.status == 200 and b'"data":[{' in await response.read()


async def _open_loop(base_url: str, key: str, endpoint: str, stream_id: str, rate: int, seconds: float,
                     cfg: ApiBenchConfig) -> tuple[list[float], int, float]:
    """Latencies (s) from each request's scheduled start, the error count and the achieved rate."""
    latencies: list[float] = []
    errors = 0
    # aiohttp, not httpx: the generator shares the machine with the server, and aiohttp's client costs
    # about a third of httpx's CPU per request
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(base_url, headers={"Authorization": f"Bearer {key}"}, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30.0)) as client:
        clock = time.perf_counter  # not loop.time(): uvloop's counts whole milliseconds
        total = int(rate * seconds)
        # the schedule starts once every request's task exists: making thousands of them takes the loop 10-20 ms,
        # and the first requests would otherwise be late before they were sent
        start = clock() + 0.05 + total * 20e-6

        async def fire(i: int) -> None:
            nonlocal errors
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - clock()))
            try:
                ok = await _one(client, endpoint, stream_id, cfg, i)
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            latencies.append(clock() - scheduled)
            errors += not ok

        await asyncio.gather(*(fire(i) for i in range(total)))
        elapsed = clock() - start
    return latencies, errors, total / elapsed


def _healthz_s(base_url: str) -> float:
    start = time.monotonic()
    try:
        httpx.get(f"{base_url}/healthz", timeout=30.0)
    except httpx.HTTPError:
        return float("inf")
    return time.monotonic() - start


def settle(base_url: str, idle_s: float, timeout_s: float = 120.0) -> None:
    """Wait until the server has worked off what an overloaded cell left (requests its clients gave up on
    still run), so that the next cell starts on an idle server: three ``/healthz`` in a row within 3x the
    idle server's time ``idle_s``."""
    deadline, quick = time.monotonic() + timeout_s, 0
    while quick < 3 and time.monotonic() < deadline:
        quick = quick + 1 if _healthz_s(base_url) < 3 * idle_s else 0
        time.sleep(0.2)


def measure(base_url: str, key: str, stream_id: str, database: str, endpoint: str, rate: int,
            cfg: ApiBenchConfig, idle_s: float, deployment_pids: list[int]) -> Cell:
    """One cell; ``deployment_pids``: the API's supervisor first, then the deployment's other processes."""
    settle(base_url, idle_s)
    # the generator's own heap out of the collector's walk: its imports (torch among them, through vidmem) leave
    # about 300,000 objects, and a full collection over them paused every request in flight for ~170 ms,
    # which the open loop counted as server latency
    gc.collect()
    gc.freeze()
    # uvloop (uvicorn[standard] brings it): the generator shares the cores with the server, so its loop should cost
    # as little as the server's does
    uvloop.run(_open_loop(base_url, key, endpoint, stream_id, rate, cfg.warmup_s, cfg))
    api_pid, roots = deployment_pids[0], [*deployment_pids, os.getpid()]
    api_before, machine_before, processes_before = process_tree_cpu_s(api_pid), machine_cpu_s(), process_cpu_s()
    started = time.perf_counter()
    latencies, errors, achieved = uvloop.run(_open_loop(base_url, key, endpoint, stream_id, rate, cfg.seconds, cfg))
    wall = time.perf_counter() - started
    api_cpu, machine_cpu = process_tree_cpu_s(api_pid) - api_before, machine_cpu_s() - machine_before
    outside_cpu = outside_cpu_s(processes_before, process_cpu_s(), roots)
    ms = sorted(x * 1000 for x in latencies)
    return Cell(database=database, endpoint=endpoint, rate=rate, requests=len(ms), errors=errors,
                achieved_rate=round(achieved, 1), p50_ms=round(statistics.median(ms), 2),
                p99_ms=round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2), max_ms=round(ms[-1], 2),
                api_cpu_ms=round(api_cpu * 1000 / len(ms), 2), machine_cpu_ms=round(machine_cpu * 1000 / len(ms), 2),
                outside_cpu_pct=round(100 * outside_cpu / wall, 1))


# ------------------------------------------------------------------------------------------ run
def _chunk_outcomes(settings, stream_id: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(chunks lost, chunks applied): dropped or failed chunk rows plus chunks the ingest never stored."""
    from store import repo
    from store.db import make_engine, make_session_factory

    engine = make_engine(settings.sqlalchemy_url)
    with make_session_factory(engine)() as session:
        counts = repo.chunk_counts(session, stream_id=stream_id)
        stats = repo.get_stream(session, stream_id).stats or {}
    engine.dispose()
    lost = counts.get("dropped", 0) + counts.get("failed", 0) + int(stats.get("chunks_lost", 0))
    return lost, counts.get("applied", 0)


def run_database(cfg: ApiBenchConfig, database: str, folder: Path, report: Report) -> None:
    import redis

    from vidmem.demo import make_clip

    redis.Redis.from_url(cfg.redis_url).flushdb()
    settings = _settings(cfg, folder, database)
    settings.ensure_dirs()
    clip, _ = make_clip(folder, seconds=60.0, seed=7)
    deployment = Deployment(settings)
    try:
        deployment.start()
        key = _create_key(settings)
        headers = {"Authorization": f"Bearer {key}"}
        response = httpx.post(f"{deployment.base_url}/streams", headers=headers,
                              json={"source": clip, "name": "bench", "loop": True}, timeout=30.0)
        response.raise_for_status()
        stream_id = response.json()["id"]
        _seed_questions(settings, stream_id, cfg.stored_questions)
        log.info("%s: %d questions stored, stream %s ingesting", database, cfg.stored_questions, stream_id)
        idle_s = statistics.median(_healthz_s(deployment.base_url) for _ in range(9))
        for endpoint in cfg.endpoints:
            for rate in cfg.rates:
                cell = measure(deployment.base_url, key, stream_id, database, endpoint, rate, cfg, idle_s,
                               [proc.pid for proc in deployment.procs])
                log.info("%s %s @ %d/s: p50 %.1f ms p99 %.1f ms (%d errors), CPU a request: API %.2f ms, machine "
                         "%.2f ms; outside the benchmark %.1f%% of a core", database, endpoint, rate, cell.p50_ms,
                         cell.p99_ms, cell.errors, cell.api_cpu_ms, cell.machine_cpu_ms, cell.outside_cpu_pct)
                report.cells.append(cell)
        lost, applied = _chunk_outcomes(settings, stream_id)
        report.chunks_lost[database], report.chunks_applied[database] = lost, applied
    finally:
        deployment.stop()
        if settings.database_url:
            from bench.workers import _drop_database

            _drop_database(cfg.pg_admin_url, settings.database_url)


def run(cfg: ApiBenchConfig) -> Report:
    report = Report(config=asdict(cfg), machine={
        "cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg(),
    })
    with tempfile.TemporaryDirectory(prefix="vidmem-bench-api-") as folder:
        for database in cfg.databases:
            run_database(cfg, database, Path(folder), report)
    return report


def show(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="API latency, open-loop load (target: p99 < 25 ms at 200 requests/s)")
    for col in ("database", "endpoint", "rate/s", "achieved/s", "requests", "errors", "p50 ms", "p99 ms", "max ms",
                "API CPU ms/req", "machine CPU ms/req", "outside CPU %"):
        table.add_column(col)
    for c in report.cells:
        table.add_row(c.database, c.endpoint, str(c.rate), f"{c.achieved_rate:.0f}", str(c.requests), str(c.errors),
                      f"{c.p50_ms:.1f}", f"{c.p99_ms:.1f}", f"{c.max_ms:.1f}", f"{c.api_cpu_ms:.2f}",
                      f"{c.machine_cpu_ms:.2f}", f"{c.outside_cpu_pct:.1f}")
    console = Console(stderr=True, width=170)
    console.print(table)
    console.print(f"chunks lost during the run: {report.chunks_lost} (applied: {report.chunks_applied})")


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report.config["databases"]), figsize=(5 * len(report.config["databases"]), 4),
                             squeeze=False)
    for ax, database in zip(axes[0], report.config["databases"], strict=True):
        for endpoint in report.config["endpoints"]:
            cells = [c for c in report.cells if c.database == database and c.endpoint == endpoint]
            line, = ax.plot([c.rate for c in cells], [c.p99_ms for c in cells], marker="o", label=f"{endpoint} p99")
            ax.plot([c.rate for c in cells], [c.p50_ms for c in cells], marker=".", linestyle=":",
                    color=line.get_color(), label=f"{endpoint} p50")
        ax.axhline(25, color="grey", linestyle="--", label="target p99")
        ax.set(title=database, xlabel="requests/s", ylabel="ms", yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def cli(
    quick: bool = typer.Option(False, help="1,000 stored questions, 4 s per cell"),
    databases: str = typer.Option("sqlite,postgres", help="comma-separated: sqlite, postgres"),
    rates: str = typer.Option("50,100,200", help="requests/s, comma-separated"),
    seconds: float = typer.Option(10.0, min=1.0, help="measured seconds per cell"),
    stored_questions: int = typer.Option(10_000, min=1),
    model: str = typer.Option("vidmem-tiny", help="the model the chunk worker loads"),
    api_workers: int = typer.Option(3, min=1, help="API processes (VIDMEM_API_WORKERS)"),
    pg_admin_url: str = typer.Option(PG_ADMIN_URL, help="PostgreSQL where a throw-away database is created"),
    redis_url: str = typer.Option(REDIS_URL, help="Redis database used (and FLUSHED) as broker and store"),
    out: Path | None = typer.Option(None, help="folder for bench-api.json and bench-api.png"),
) -> None:
    """p50/p99 of POST question and GET history (with and without search) at several request rates."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would cost the generator time
    cfg = ApiBenchConfig(
        databases=tuple(d.strip() for d in databases.split(",") if d.strip()), rates=_ints(rates),
        seconds=4.0 if quick else seconds, warmup_s=1.0 if quick else 2.0,
        stored_questions=1000 if quick else stored_questions, model=model, api_workers=api_workers,
        pg_admin_url=pg_admin_url,
        redis_url=redis_url,
    )
    report = run(cfg)
    show(report)
    top = max(cfg.rates)
    summary = {
        "machine": report.machine, "config": report.config, "cells": [asdict(c) for c in report.cells],
        "chunks_lost": report.chunks_lost, "chunks_applied": report.chunks_applied,
        "max_p99_ms_at_top_rate": max((c.p99_ms for c in report.cells if c.rate == top), default=None),
        "target_met": all(c.p99_ms < 25 and c.errors == 0 for c in report.cells if c.rate == top)
        and not any(report.chunks_lost.values()),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench-api.json").write_text(json.dumps(summary, indent=2))
        plot(report, out / "bench-api.png")
    print(json.dumps(summary))


if __name__ == "__main__":
    typer.run(cli)
