"""rt-score --engine ray: a local Ray with 2 CPU workers writes the bytes the local engine writes,
and stops at a bad record with the same ``file:line`` error and exit status.

One Ray per module (starting Ray takes seconds): the runs join it with --ray-address, as a run
joins a real cluster. Skipped when Ray (the ``rtools[ray]`` extra) is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from model_data import raw_rows

pytest_plugins = ["model_fixtures"]

ray = pytest.importorskip("ray", reason="the rtools[ray] extra is not installed")

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CPU = ["--device", "cpu", "--dtype", "fp32", "-q"]


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray with 2 CPUs (so 2 workers of 1 CPU each) for the whole module."""
    # Ray's memory monitor kills workers when the whole machine's memory is 95% used; on a shared CI
    # machine that is other jobs' doing, and the tiny model's actors need ~0.4 GB each: switch it off
    # Ray waits a fixed 30 s for its raylet to register; on an overloaded machine that can pass: a
    # second try, then the error (Ray that cannot start here is a failure, not a skip)
    for attempt in (1, 2):
        try:
            context = ray.init(
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                _system_config={"memory_monitor_refresh_ms": 0},
            )
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def rt_score(script, path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [script("rt-score"), path, *CPU, *args],
        capture_output=True,
        # now, not at import: the fixture's ray.init exports RAY_AUTH_MODE=token (Ray >= 2.5x makes a
        # local cluster with token authentication), without which a run cannot join the cluster
        env={**os.environ, **THREADS},
        timeout=600,
        check=False,
    )


def error_lines(p: subprocess.CompletedProcess) -> list[str]:
    """rt-score's own lines on stderr. Ray's C++ core logs there too, whatever -q says, from its own
    threads: a line of theirs without its newline yet can come right before rt-score's."""
    lines = p.stderr.decode().splitlines()
    return [x[x.index("rt-score: ") :] for x in lines if "rt-score: " in x]


class Local:
    """The local engine's run, in-process (faster than a second subprocess), as a CompletedProcess."""

    def __init__(self, invoke, path: str, *args: str):
        r = invoke("rt-score", [path, *CPU, *args])
        self.returncode, self.stdout, self.stderr = r.exit_code, r.stdout_bytes, r.stderr_bytes


def write_lines(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def good_lines(n: int) -> list[str]:
    rows = raw_rows(1)  # 10 prompts of different lengths
    return [
        json.dumps({"id": i, "prompt": rows[i % len(rows)]["prompt"], "keep": [i, "x"]}) for i in range(n)
    ]


def bad_file(tmp_path, kind: str) -> tuple[str, int]:
    """Eleven records with a blank line (so line numbers are not record numbers) and, at line 6 (the
    second record of the second window of 4), a record the scorer rejects or one the reader rejects."""
    lines = good_lines(10)
    lines.insert(2, "")
    bad = {
        "scorer": json.dumps({"id": "bad", "text": "no prompt here"}),
        "reader": '{"id": "bad", "prompt": ',
    }
    lines.insert(5, bad[kind])
    return write_lines(tmp_path / f"{kind}.jsonl", lines), 6


@pytest.mark.parametrize("kind", ["scorer", "reader"])
def test_bad_record_same_bytes_and_error(invoke, script, trained_tied, ray_address, tmp_path, kind):
    path, line = bad_file(tmp_path, kind)
    model = ["--model", trained_tied.out, "--window", "4"]
    local = Local(invoke, path, *model)
    remote = rt_score(
        script, path, *model, "--engine", "ray", "--ray-address", ray_address, "--ray-workers", "2"
    )
    assert local.returncode == 1, local.stderr.decode()
    assert remote.returncode == local.returncode, remote.stderr.decode()
    assert error_lines(remote) == error_lines(local) == [local.stderr.decode().rstrip("\n")]
    assert f"rt-score: {path}:{line}: ".encode() in remote.stderr
    # the records before the bad one: the first window whole and the one record of the second before it
    assert [json.loads(x)["id"] for x in local.stdout.splitlines()] == [0, 1, 2, 3]
    assert remote.stdout == local.stdout


def test_whole_file_same_bytes_in_order(invoke, script, trained_tied, ray_address, tmp_path):
    """Nine windows of 3 on 2 workers (so they finish out of order): the bytes and order of the local engine."""
    path = write_lines(tmp_path / "good.jsonl", good_lines(25))
    model = ["--model", trained_tied.out, "--window", "3"]
    local = Local(invoke, path, *model)
    remote = rt_score(
        script, path, *model, "--engine", "ray", "--ray-address", ray_address, "--ray-workers", "2"
    )
    assert local.returncode == 0, local.stderr.decode()
    assert remote.returncode == 0, remote.stderr.decode()
    assert error_lines(remote) == []
    assert [json.loads(x)["id"] for x in remote.stdout.splitlines()] == list(range(25))
    assert remote.stdout == local.stdout


def test_model_error_is_reported(invoke, script, ray_address, tmp_path):
    """A model the actors cannot load is the local engine's error, not a Ray traceback."""
    path = write_lines(tmp_path / "in.jsonl", good_lines(2))
    missing = str(tmp_path / "no-such-model")
    local = Local(invoke, path, "--model", missing)
    remote = rt_score(script, path, "--model", missing, "--engine", "ray", "--ray-address", ray_address)
    assert local.returncode == remote.returncode == 1
    assert error_lines(remote) == error_lines(local), remote.stderr.decode()[-3000:]
    assert missing.encode() in remote.stderr


def test_ray_options_need_the_ray_engine(invoke, monkeypatch):
    r = invoke("rt-score", ["--ray-workers", "2", "-"], input="")
    assert r.exit_code == 2 and "--ray-workers is for --engine ray" in r.stderr
    r = invoke("rt-score", ["--ray-address", "host:6379", "-"], input="")
    assert r.exit_code == 2 and "--ray-address is for --engine ray" in r.stderr


def test_missing_ray_names_the_extra(invoke, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    r = invoke("rt-score", ["--engine", "ray", "--model", str(tmp_path), "-"], input="")
    assert r.exit_code == 1
    assert "pip install 'rtools[ray]'" in r.stderr and r.stdout == ""
    assert "the ray engine needs ray" in r.stderr
