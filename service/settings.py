"""Service configuration: one typed settings class read from the environment.

Every field maps to an upper-case environment variable of the same name (`MODEL_DIR`,
`REDIS_URL`, `ADMIN_TOKEN`, `MAX_HISTORY`, ...). `get_settings()` is cached; tests build
`Settings(...)` directly and hand it to `create_app`.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import (
    Field,
    RedisDsn,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

# Tokens that show up in templates and tutorials; refused in production.
WEAK_TOKENS = frozenset({"changethis", "changeme", "secret", "admin", "token", "password"})
MIN_PRODUCTION_TOKEN_LENGTH = 24


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # "json": one JSON object per line, for log collectors; "text": readable, for a terminal.
    log_format: Literal["json", "text"] = "json"
    # Serving processes on this host, all on PORT (uvicorn workers). They share MODEL_DIR;
    # without REDIS_URL they follow each other's admin changes through the embedded store's
    # files (polled every FLEET_POLL_S), with REDIS_URL each is a replica of the fleet.
    workers: int = Field(default=1, ge=1)
    # The storefront demo page at /demo (`service.routes.demo`); off hides it (404).
    demo_enabled: bool = True

    # Each installed version lives in <model_dir>/<version>/.
    model_dir: Path = Path("var/models")
    # A bundle directory or .tar.gz installed and activated at start when no version is active.
    bootstrap_bundle: Path | None = None

    # None: the embedded in-process store (single process, quick start).
    redis_url: RedisDsn | None = None
    redis_key_prefix: str = Field(default="recsys:v1", pattern=r"^[A-Za-z0-9:._-]+$")
    redis_timeout_s: float = Field(default=2.0, gt=0)

    # The fleet (service.fleet; only with REDIS_URL): this replica's name in swap events and
    # /admin/status (None: a random one per process), and the fleet-wide admin lock: how
    # long an admin call waits for it (then 409) and when a crashed holder's lock expires.
    replica_id: str | None = Field(default=None, max_length=128)
    fleet_lock_wait_s: float = Field(default=10.0, ge=0)
    fleet_lock_ttl_s: float = Field(default=300.0, gt=0)
    # How often each replica re-reads the fleet state between change messages: what no
    # message announces (a FLUSHALL, a Redis restarted empty) is noticed within this time.
    fleet_poll_s: float = Field(default=1.0, gt=0)

    # None (or empty) disables the admin API: its routes answer 404.
    admin_token: SecretStr | None = None

    # Request limits.
    max_history: int = Field(default=200, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_k: int = Field(default=1000, ge=1)
    max_candidates: int = Field(default=1000, ge=1)
    max_exclude: int = Field(default=1000, ge=0)
    max_item_id_length: int = Field(default=256, ge=1)
    # Admin uploads: compressed body, and bytes after decompression.
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    max_unpacked_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)
    # The live catalog's admin calls (/admin/catalog): item IDs and item vectors per call,
    # and the body size that fits them.
    catalog_max_ids: int = Field(default=100_000, ge=1)
    catalog_max_vectors: int = Field(default=10_000, ge=1)
    catalog_max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)

    # onnxruntime threads per session; one keeps latency predictable under many workers.
    onnx_intra_op_threads: int = Field(default=1, ge=1)

    # Approximate nearest-neighbour search (`service.ann`): catalogs of at least
    # `ann_min_items` items are served from a faiss IVF index instead of exact scoring.
    # Below that, exact scoring of every item is fast enough and exact.
    ann_min_items: int = Field(default=200_000, ge=1)
    # Inverted lists of the index; 0 = round(sqrt(n_items)) (1,000 lists for 1M items).
    ann_nlist: int = Field(default=0, ge=0)
    # Lists scanned per query: the recall / latency knob (cost ~ nprobe / nlist of the catalog;
    # docs/decisions/2026-12-06-ann-settings.md; `python -m benchmarks.catalog ann --nprobe
    # 16 32 64` measures the trade-off for a bundle).
    ann_nprobe: int = Field(default=64, ge=1)
    # faiss OpenMP threads, process-wide; one keeps latency predictable, like onnxruntime's.
    ann_threads: int = Field(default=1, ge=1)

    # Full-catalog scoring of int8 bundles: "int8" (int8 items x 7-bit users, fastest) or
    # "fp32" (the dequantized matrix, exactly the scores the pipeline evaluated).
    scoring_precision: Literal["int8", "fp32"] = "int8"
    # Niceness added to the thread that loads and validates models, so that on a busy core a
    # swap yields to the requests being served (0 = same priority as serving).
    model_loader_nice: int = Field(default=10, ge=0, le=19)
    # Keep the previously active version in memory (one more model's RAM) so a rollback, or
    # re-activating it, swaps instantly on every replica instead of loading from disk.
    model_keep_previous: bool = True

    # Dynamic micro-batching (service.batcher): at most this many requests per encoder call
    # (1 = no batching), waiting at most this long after the first one for more to arrive,
    # and only while other requests are on their way (docs/decisions/2026-12-06-batching-
    # waits-only-for-requests-in-flight.md).
    batch_max_size: int = Field(default=32, ge=1)
    batch_max_delay_ms: float = Field(default=8.0, ge=0)

    # The garbage collector's thresholds (`gc.set_threshold`), set when the app starts. With
    # Python's (700, 10, 10) a young-generation collection runs whenever ~700 more objects
    # are alive than at the last one, which the requests in flight alone keep crossing: each
    # collection walks them all, holding the GIL (docs/decisions/2026-12-06-gc-thresholds.md).
    # Reference cycles are still collected, after 10,000 objects at most.
    gc_threshold: tuple[int, int, int] = (10_000, 20, 100)

    # Answers cached in Redis for this many seconds (service.answer_cache); 0 = off.
    answer_cache_ttl_s: float = Field(default=0.0, ge=0)

    # Optional promotion gates (`service.gates`); unset = off.
    # Accuracy: a candidate's `gate_metric` (in its manifest's metrics) may be at most this
    # fraction below the serving version's (0.02 = 2% relative).
    gate_max_ndcg_drop: float | None = Field(default=None, ge=0, le=1)
    gate_metric: str = Field(default="test_ndcg@10", min_length=1)
    # Latency: the candidate's batch-1 request time (encoder + scoring) after warm-up, in ms.
    gate_max_latency_ms: float | None = Field(default=None, gt=0)

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_disables_admin(cls, v: object) -> object:
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        return v

    @field_validator(
        "bootstrap_bundle",
        "redis_url",
        "replica_id",
        "gate_max_ndcg_drop",
        "gate_max_latency_ms",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("gc_threshold")
    @classmethod
    def _gc_threshold_positive(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 1:
            raise ValueError(f"GC_THRESHOLD needs three positive counts, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _enforce_strong_admin_token(self) -> Self:
        if self.admin_token is None:
            return self
        token = self.admin_token.get_secret_value()
        weak = token.lower() in WEAK_TOKENS or len(token) < MIN_PRODUCTION_TOKEN_LENGTH
        if weak and self.environment == "production":
            raise ValueError(
                "ADMIN_TOKEN is too weak for ENVIRONMENT=production: use at least "
                f"{MIN_PRODUCTION_TOKEN_LENGTH} random characters (e.g. `openssl rand -hex 32`), "
                "or unset it to disable the admin API"
            )
        if weak:
            log.warning("ADMIN_TOKEN is weak; acceptable only in development")
        return self

    @model_validator(mode="after")
    def _answer_cache_needs_redis(self) -> Self:
        if self.answer_cache_ttl_s > 0 and self.redis_url is None:
            raise ValueError(
                f"ANSWER_CACHE_TTL_S={self.answer_cache_ttl_s:g} needs REDIS_URL: the answer "
                "cache lives in Redis; set REDIS_URL, or ANSWER_CACHE_TTL_S=0 to turn it off"
            )
        return self

    @property
    def admin_enabled(self) -> bool:
        return self.admin_token is not None


class SettingsError(SystemExit):
    """Settings the service refuses to start with. One line per problem, naming the
    variable and the rule, never the value: a refused value may be a secret (ADMIN_TOKEN),
    and pydantic's own error (and its traceback) prints the inputs. A SystemExit, so the
    process ends with this message and no traceback, under `python -m service` and under
    `uvicorn --factory service.main:create_app` alike."""

    def __init__(self, error: ValidationError) -> None:
        lines = [
            _variable(e["loc"]) + e["msg"].removeprefix("Value error, ")
            for e in error.errors(include_url=False, include_input=False, include_context=False)
        ]
        super().__init__("invalid settings: " + "; ".join(lines))


def _variable(loc: tuple[int | str, ...]) -> str:
    """`PORT: ` for a field's error; nothing for a rule over several (its message names them)."""
    return "_".join(str(part) for part in loc).upper() + ": " if loc else ""


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        raise SettingsError(e) from None
