"""End to end, real at every step: synthetic data -> compress (tiny settings) -> the real
service process on a real Redis -> recommend -> upload and activate a second bundle ->
recommend answers with the new version -> roll back. And a fleet of two real service
processes on one Redis following each other's swaps (test bundles, no training)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from models.compress import CompressConfig, CompressResult, run_compress
from models.synthetic import SyntheticConfig, write_synthetic
from tests.conftest import ADMIN_TOKEN, service_process
from tests.factories import poll_until

pytestmark = pytest.mark.slow

# A correctness wait's limit: generous for a busy 2-core machine. How fast the fleet follows a
# swap is measured by bench-swap (benchmarks/swap.py), not asserted here.
WAIT_S = 30.0

TINY = dict(
    max_len=20,
    teacher_dim=32,
    teacher_heads=2,
    teacher_head_dim=16,
    teacher_ffn=64,
    teacher_epochs=4,
    student_dim=16,
    student_heads=2,
    student_head_dim=8,
    student_ffn=32,
    student_epochs=4,
    finetune_epochs=1,
    batch_size=64,
    lr=5e-3,
    progress=False,
)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompressResult, CompressResult]:
    work = tmp_path_factory.mktemp("e2e")
    data = work / "interactions.txt"
    write_synthetic(data, SyntheticConfig(n_users=600, n_items=150, n_topics=6, seed=3))
    first = run_compress(
        CompressConfig(data=str(data), out=str(work / "out"), version="e2e-a", seed=0, **TINY)  # type: ignore[arg-type]
    )
    second = run_compress(
        CompressConfig(data=str(data), out=str(work / "out"), version="e2e-b", seed=1, **TINY)  # type: ignore[arg-type]
    )
    return first, second


@pytest.fixture
def service(
    bundles: tuple[CompressResult, CompressResult], redis_url: str, tmp_path: Path
) -> Iterator[str]:
    """`python -m service` as a real process on Redis, bootstrapped with the first bundle."""
    env = {
        "MODEL_DIR": str(tmp_path / "models"),
        "BOOTSTRAP_BUNDLE": str(bundles[0].archive),
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"e2e:{tmp_path.name}",
        "ADMIN_TOKEN": ADMIN_TOKEN,
    }
    with service_process(env) as url:
        yield url


def test_compress_upload_activate_recommend_rollback(
    bundles: tuple[CompressResult, CompressResult], service: str
) -> None:
    _, second = bundles
    for result in bundles:
        served = result.report["stages"][-1]
        assert served["stage"] == "pruned+int8"
        assert served["metrics"]["ndcg@10"] > 2 * result.report["popularity"]["ndcg@10"]

    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=service, timeout=30) as http:
        body = {"history": ["i12", "i7", "i99"], "k": 10}
        r = http.post("/recommend", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model_version"] == "e2e-a"
        assert answer["strategy"] == "model"
        assert len(answer["items"]) == 10
        assert not {"i12", "i7", "i99"} & {it["item_id"] for it in answer["items"]}
        scores = [it["score"] for it in answer["items"]]
        assert scores == sorted(scores, reverse=True)

        up = http.post(
            "/admin/bundles",
            content=second.archive.read_bytes(),
            headers={**auth, "Content-Type": "application/gzip"},
        )
        assert up.status_code == 201, up.text
        assert http.post("/recommend", json=body).json()["model_version"] == "e2e-a"

        act = http.post("/admin/bundles/e2e-b/activate", headers=auth)
        assert act.status_code == 200, act.text
        assert http.post("/recommend", json=body).json()["model_version"] == "e2e-b"

        listed = http.get("/admin/bundles", headers=auth).json()
        assert {"e2e-a", "e2e-b"} <= {v["version"] for v in listed["versions"]}

        back = http.post("/admin/rollback", headers=auth)
        assert back.status_code == 200, back.text
        assert http.post("/recommend", json=body).json()["model_version"] == "e2e-a"


def _served(url: str) -> str:
    r = httpx.post(f"{url}/recommend", json={"history": ["i1", "i2"], "k": 3}, timeout=10)
    assert r.status_code == 200, r.text
    version: str = r.json()["model_version"]
    return version


def test_two_replica_processes_follow_each_others_swaps(
    tmp_path: Path, redis_url: str, v1_archive: bytes, v2_archive: bytes
) -> None:
    bootstrap = tmp_path / "v1.tar.gz"
    bootstrap.write_bytes(v1_archive)
    common = {
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"fleet:{tmp_path.name}",
        "ADMIN_TOKEN": ADMIN_TOKEN,
    }
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with ExitStack() as stack:
        a = stack.enter_context(
            service_process(
                {
                    **common,
                    "MODEL_DIR": str(tmp_path / "a"),
                    "BOOTSTRAP_BUNDLE": str(bootstrap),
                    "REPLICA_ID": "a",
                }
            )
        )
        # b has no bundle of its own: it comes up on the fleet's version, from Redis.
        b = stack.enter_context(
            service_process({**common, "MODEL_DIR": str(tmp_path / "b"), "REPLICA_ID": "b"})
        )
        assert _served(a) == _served(b) == "v1"

        up = httpx.post(
            f"{a}/admin/bundles",
            content=v2_archive,
            headers={**auth, "Content-Type": "application/gzip"},
            timeout=30,
        )
        assert up.status_code == 201, up.text
        act = httpx.post(f"{a}/admin/bundles/v2/activate", headers=auth, timeout=30)
        assert act.status_code == 200, act.text
        assert poll_until(lambda: _served(b) == "v2", timeout_s=WAIT_S), "b did not follow a"

        back = httpx.post(f"{b}/admin/rollback", headers=auth, timeout=30)
        assert back.status_code == 200, back.text
        assert poll_until(lambda: _served(a) == "v1", timeout_s=WAIT_S), "a did not follow b"
        status = httpx.get(f"{a}/admin/status", headers=auth, timeout=10).json()
        assert status["replica"] == "a" and status["error"] is None
        assert status["serving"] == status["fleet_active"] == "v1"
