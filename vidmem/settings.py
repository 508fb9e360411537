"""The one settings object of vidmem.

Built once by the CLI (``Settings()`` reads ``VIDMEM_*`` variables and an optional ``.env``) and
passed down; nothing else in the code base reads the environment. ``to_env()`` turns a settings
object back into variables so that child processes (the embedded worker) see the same values.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.destinations import DEFAULT_DENIED_NETWORKS, parse_networks

EMBEDDED = "embedded"
DEFAULT_MODEL = "vidmem-tiny"


class Settings(BaseSettings):
    """Every knob of vidmem. Defaults give the embedded mode: no server to install, no network."""

    model_config = SettingsConfigDict(env_prefix="VIDMEM_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("vidmem-data"), description="SQLite file, memory, blobs and queues live here")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under data_dir")
    broker_url: str = Field(EMBEDDED, description="'embedded' (file queue under data_dir) or redis://...")
    redis_url: str | None = Field(None, description="memory/blob store; default: the broker URL if redis")

    model: str = Field(DEFAULT_MODEL, description="'vidmem-tiny', 'tiny-random', a hub id or a local folder")
    device: str = "auto"
    dtype: str = "auto"
    torch_threads: int | None = Field(None, ge=1, description="CPU threads per worker; unset: torch's default")
    worker_concurrency: int = Field(
        1, ge=1, description="tasks one worker process runs at once (threads); above 1, chunks of several streams "
        "can share an encode batch"
    )
    worker_nice: int = Field(
        10, ge=0, le=19, description="CPU priority of `vidmem worker` (nice): on a machine shared with the API and "
        "ingest, a chunk's encode (a burst of a core) waits for them, not they for it; alone on a machine it changes "
        "nothing"
    )
    max_new_tokens: int = Field(16, ge=1, le=512)
    encode_batch: int = Field(
        8, ge=1, description="a worker encodes up to this many waiting chunks (of any streams) in one forward pass"
    )
    encode_wait_ms: float = Field(
        20.0, ge=0, description="how long an encode waits for chunks already on their way to join its batch"
    )

    stage1: str = Field("uniform:ratio=0.5", description="query-agnostic compression at ingest")
    stage2: str = Field("uniform", description="query-aware selection at question time")
    memory_budget: int = Field(4096, ge=1, description="visual tokens kept per stream")
    llm_budget: int = Field(1024, ge=1, description="visual tokens the LLM sees per question")

    chunk_seconds: float = Field(4.0, gt=0)
    sample_fps: float = Field(1.0, gt=0)
    frame_size: int = Field(384, ge=16, description="ingest resizes frames once to this square side")
    stall_seconds: float = Field(10.0, gt=0, description="no frame for this long: reconnect")
    first_connect_retries: int | None = Field(
        5, ge=1, description="a source that never delivered a frame fails after this many tries; unset: never"
    )
    max_pending_chunks: int = Field(8, ge=1, description="per stream; older unprocessed chunks are dropped")
    blob_ttl_seconds: int = Field(3600, ge=1)
    submit_retry_s: float = Field(
        10.0, ge=0, description="a chunk whose store fails (database busy, blob store down) is retried this long"
    )
    housekeeping_s: float = Field(60.0, gt=0, description="how often orphaned frame blobs and old chunk rows go")
    chunk_retention_s: float = Field(
        86400.0, ge=0, description="finished chunk rows older than this are deleted (never pending ones, never "
        "a stream's newest); 0: kept for ever"
    )
    log_max_bytes: int = Field(10_000_000, ge=10_000, description="worker.log is rotated at this size")
    log_backups: int = Field(3, ge=0, description="rotated worker logs kept (worker.log.1 ...)")

    rtsp_transport: str = Field("tcp", pattern="^(tcp|udp)$")
    open_timeout_s: float = Field(10.0, gt=0)
    decode_skip: str = Field("auto", pattern="^(auto|keyframes|none)$", description="decode only what sampling needs")
    ice_hosts: list[str] = Field(default_factory=list, description="WebRTC ICE host addresses; empty: all")
    ice_servers: list[str] = Field(
        default_factory=list, description="WebRTC STUN/TURN URLs (first stun: and first turn: used), e.g. "
        '["stun:stun.example.org:3478"]; empty: none, the browser must reach a host address directly'
    )
    ice_username: str | None = Field(None, description="WebRTC TURN username")
    ice_credential: str | None = Field(None, description="WebRTC TURN password")
    allowed_schemes: list[str] = Field(default_factory=lambda: ["rtsp", "rtsps", "http", "https", "file"])
    allow_files: bool = Field(True, description="file sources at all; they also need file_dir")
    allow_devices: bool = False
    file_dir: Path | None = Field(
        None, description="file sources must be under this folder (symlinks and '..' resolved); unset: no files"
    )
    allowed_networks: list[str] = Field(
        default_factory=list, description="networks sources may reach although denied (most specific match wins)"
    )
    denied_networks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DENIED_NETWORKS),
        description="networks sources may not reach: loopback, link-local, private, multicast, reserved",
    )
    secret_key: str | None = Field(
        None, repr=False,
        description="Fernet key encrypting camera credentials in the database; embedded default: data_dir/secret.key",
    )

    api_host: str = "127.0.0.1"
    access_log: bool = Field(
        False, description="log a line per HTTP request (uvicorn's access log); off: at hundreds of requests/s the "
        "lines cost more than the requests"
    )
    api_port: int = 8000
    api_workers: int = Field(
        1, ge=1, le=64, description="API processes sharing the port (uvicorn workers); one process serves about "
        "100 requests/s; on 2 cores 3 processes measured best (`vidmem bench api --api-workers`)"
    )
    auth: Literal["keys", "open"] = Field(
        "keys", description="'keys': every request for tenant data needs 'Authorization: Bearer <API key>' "
        "(`vidmem keys create`); 'open': no keys, everything in the default tenant, refused unless api_host is "
        "a loopback address"
    )
    question_max_chars: int = 2000
    answer_tokens_limit: int = Field(
        512, ge=1, description="the largest max_answer_tokens one question may ask for (its answer's length in tokens)"
    )
    long_poll_max_s: float = Field(60.0, gt=0, description="GET /questions/{id}?wait= waits at most this long")
    events_poll_s: float = Field(
        0.25, gt=0, description="how often a long-poll or event stream reads the database for changes (the delay "
        "between a worker's commit and the client seeing it is at most this)"
    )
    events_lag_s: float = Field(
        2.0, ge=0, description="a stream's feed looks this far behind its cursor for changes whose commit was slow"
    )
    events_batch: int = Field(200, ge=1, description="rows one feed read takes from each source at most")
    sse_heartbeat_s: float = Field(15.0, gt=0, description="an idle event stream sends a comment this often")
    sse_max_s: float = Field(
        300.0, gt=0, description="an event stream ends after this long; the client reconnects with Last-Event-ID"
    )
    max_body_bytes: int = Field(65_536, ge=1024, description="request bodies above this get 413")
    max_sdp_body_bytes: int = Field(
        262_144, ge=1024, description="request body limit of WebRTC offers (an SDP offer may be ~200 KB)"
    )
    max_streams: int = Field(64, ge=1, description="streams one deployment may register; more get 409")
    metrics_max_streams: int = Field(100, ge=0, description="/metrics has per-stream series for the newest N")
    task_time_limit_s: int = 600
    heartbeat_s: float = Field(5.0, gt=0, description="how often each worker writes its heartbeat row")
    worker_dead_after_s: float = Field(
        20.0, gt=0, description="a worker whose last heartbeat is older than this is dead; its work is re-queued"
    )
    recovery_check_s: float = Field(
        10.0, gt=0, description="how often every worker re-queues the work of dead workers and stalled chains"
    )
    max_attempts: int = Field(
        3, ge=1, description="a question or chunk delivered this often without finishing (it killed its worker) fails"
    )
    test_fault_dir: Path | None = Field(
        None, description="tests only: files named crash-<key> / hold-<key> here make a worker die / wait at <key>"
    )
    api_pool_size: int = Field(8, ge=1, description="database connections of the API (ingest has its own)")
    api_pool_timeout_s: float = Field(2.0, gt=0, description="an API request waits this long for a connection")
    snapshot_every: int = Field(
        1, ge=0, description="distributed mode: every this many applied chunks a stream's memory is copied to the "
        "database, and restored from there when Redis loses it (the chunks applied after the copy become a "
        "recorded gap); 0: never (a lost memory starts afresh). Embedded mode keeps memories on disk and never copies"
    )
    alerts_max_per_stream: int = Field(
        16, ge=1, description="standing questions one stream may have (each costs up to one answer per period)"
    )
    alert_webhook_attempts: int = Field(
        6, ge=1, le=30, description="tries of one webhook delivery before it is given up (each recorded)"
    )
    alert_webhook_backoff_s: float = Field(
        2.0, gt=0, description="wait before the second webhook try; doubled after every further failure"
    )
    alert_webhook_backoff_max_s: float = Field(600.0, gt=0, description="longest wait between two webhook tries")
    alert_webhook_timeout_s: float = Field(10.0, gt=0, description="a webhook receiver must answer within this")

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("ice_servers")
    @classmethod
    def _ice_urls(cls, value: list[str]) -> list[str]:
        """A typo here would otherwise surface only as a browser that never connects."""
        bad = [url for url in value if url.split(":", 1)[0] not in ("stun", "stuns", "turn", "turns")]
        if bad:
            raise ValueError(f"ICE servers must be stun:, stuns:, turn: or turns: URLs, not {bad}")
        return value

    @field_validator("allowed_networks", "denied_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # a typo in a network must stop the start, not open or close it silently
        return value

    @property
    def wants_motion(self) -> bool:
        """Motion-based merging needs the codec's motion vectors from ingest."""
        return "target=motion" in self.stage1.replace(" ", "")

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url == EMBEDDED

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'vidmem.sqlite3'}"

    @property
    def is_embedded_db(self) -> bool:
        return self.database_url is None

    @property
    def store_redis_url(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        return self.broker_url if self.broker_url.startswith("redis") else None

    def to_env(self) -> dict[str, str]:
        """VIDMEM_* variables that rebuild these settings in a child process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            key = f"VIDMEM_{name.upper()}"
            if isinstance(value, list):
                env[key] = json.dumps(value)
            else:
                env[key] = str(value)
        return env

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def check_auth_binding(self) -> None:
        """Refuse the open mode (no API keys) unless the API listens on loopback only: checked at start."""
        if self.auth == "open" and not is_loopback_host(self.api_host):
            raise ValueError(
                f"VIDMEM_AUTH=open serves every stream without a key, so it is allowed only on a loopback address "
                f"(127.0.0.1, ::1, localhost), not on VIDMEM_API_HOST={self.api_host!r}: bind to loopback or use "
                "API keys (`vidmem keys create --tenant NAME`)"
            )


def is_loopback_host(host: str) -> bool:
    """A literal loopback address or ``localhost``; any other name could resolve to a public address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
