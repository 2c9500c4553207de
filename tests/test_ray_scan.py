"""Ray scans on a real multi-node cluster on this machine (ray.cluster_utils.Cluster, as Ray's
own tests do): same output as a local scan, exactly once under faults, resume, broken films."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

import media

from exe_stream.errors import ModelError
from exe_stream.pipeline import ScanOptions, scan
from exe_stream.ray_scan import RayOptions, RayScanError, scan_ray
from exe_stream.sampling import SamplingOptions
from exe_stream.shards import faces_path, frames_path, read_table

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
from ray.cluster_utils import Cluster  # noqa: E402

FER = "fer2013-minixception"
DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.slow

# Fast failure detection for the node-removal test (Ray's defaults wait tens of seconds).
_SYSTEM = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
           "health_check_failure_threshold": 2}


def _opts(**kw) -> ScanOptions:
    kw.setdefault("sampling", SamplingOptions(every=10))
    kw.setdefault("device", "cpu")
    return ScanOptions(**kw)


@pytest.fixture(scope="module")
def s3():
    """An S3 server (moto) on loopback, with the environment that points boto3 and pyarrow at
    it; set before the cluster starts, so the Ray workers inherit it as a node's would."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield f"http://{host}:{port}"
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(scope="module")
def cluster(s3):
    """Two nodes of one CPU each (the head and a worker), shared by the tests of this module;
    every Ray process is gone after them."""
    c = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 << 20, "_system_config": _SYSTEM,
        "include_dashboard": False})
    c.add_node(num_cpus=1, object_store_memory=80 << 20)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def library(tmp_path_factory, clips) -> Path:
    """Three real clips under unique names."""
    d = tmp_path_factory.mktemp("library")
    for name in ("carphone_pristine", "bikes", "bigbuckbunny"):
        shutil.copy(clips / f"{name}.mp4", d / f"{name}.mp4")
    return d


@pytest.fixture(scope="module")
def long_library(tmp_path_factory, clips) -> Path:
    """Two 360-frame films (real footage looped) and one short clip: films that take long enough
    to be interrupted mid-film."""
    d = tmp_path_factory.mktemp("long")
    for name in ("long_a", "long_b"):
        media.write_benchmark_film(d / f"{name}.mp4", clips / "carphone_pristine.mp4", 360, preset="ultrafast")
    shutil.copy(clips / "bikes.mp4", d / "bikes.mp4")
    return d


def _entries(out: Path) -> dict[str, dict]:
    return json.loads((out / "manifest.json").read_text())["films"]


def _tables(out: Path, film_id: str) -> list[pa.Table]:
    return [read_table(frames_path(out, film_id)), read_table(faces_path(out, film_id, FER))]


def _no_temporaries(out: Path) -> bool:
    return not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_cli_scan_on_ray_same_shards_and_manifest_as_a_local_scan(cluster, library, tmp_path):
    from typer.testing import CliRunner

    from exe_stream.cli import app

    local = scan([library], tmp_path / "local", _opts(sampling=SamplingOptions(every=20)))
    r = CliRunner().invoke(app, ["scan", str(library), "-o", str(tmp_path / "ray"), "--every", "20",
                                 "--device", "cpu", "--ray", cluster.address])
    assert r.exit_code == 0, r.output
    lm, rm = _entries(tmp_path / "local"), _entries(tmp_path / "ray")
    assert set(lm) == set(rm) == {"carphone_pristine", "bikes", "bigbuckbunny"}
    same = ("path", "status", "reason", "frames_sampled", "faces", "options_key", "models", "fingerprint", "info")
    for fid in lm:
        assert {k: rm[fid][k] for k in same} == {k: lm[fid][k] for k in same}
        assert rm[fid]["worker"]["pid"] != os.getpid()  # scanned in a Ray worker, not here
        for a, b in zip(_tables(tmp_path / "local", fid), _tables(tmp_path / "ray", fid)):
            assert b.equals(a, check_metadata=False)
            drop = {b"exe_stream.version"}
            assert {k: v for k, v in b.schema.metadata.items() if k not in drop} == \
                {k: v for k, v in a.schema.metadata.items() if k not in drop}
    # One summary, as a local scan prints it.
    sampled = sum(f.frames for f in local.films)
    assert f"films: 3  frames sampled: {sampled}" in r.output
    scan_record = json.loads((tmp_path / "ray" / "manifest.json").read_text())["scans"][-1]
    assert scan_record["ray"]["address"] == cluster.address
    assert scan_record["failsafe"], "no worker reported its accelerated components"
    # (Resume on Ray: test_driver_killed_and_started_again_resumes, and the s3 test.)


def _expected_rows(n_frames: int, every: int) -> int:
    return -(-n_frames // every)


def test_worker_killed_mid_film_is_retried_and_a_broken_film_is_not(cluster, long_library, films, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    for name in ("long_a.mp4", "bikes.mp4"):
        shutil.copy(long_library / name, d / name)
    shutil.copy(films.text_as_mp4, d / "broken.mp4")
    pids: dict[str, int] = {}
    killed: list[tuple[str, int]] = []

    def kill_mid_film(film_id: str, done: int, total: int) -> None:
        # The long film, seen before half its frames: its worker process dies (SIGKILL).
        if not killed and film_id == "long_a" and film_id in pids and done < total // 2:
            os.kill(pids[film_id], signal.SIGKILL)
            killed.append((film_id, pids[film_id]))

    # Every 2nd frame in batches of 4: a film reports frames many times before it ends.
    opts = _opts(sampling=SamplingOptions(every=2), batch_size=4)
    res = scan_ray([d], tmp_path / "out", opts, RayOptions(address=cluster.address, max_attempts=3),
                   on_film_worker=lambda film_id, node, pid: pids.__setitem__(film_id, pid),
                   on_film_frames=kill_mid_film)
    assert killed, "the long film reported no frames before half of them"
    by_id = {f.film_id: f for f in res.films}
    assert by_id["long_a"].status == by_id["bikes"].status == "done"
    entries = _entries(tmp_path / "out")
    (attempt,) = entries["long_a"]["attempts"]  # lost once, recorded, then scanned elsewhere
    assert "ActorDiedError" in attempt["error"]
    assert entries["long_a"]["worker"]["pid"] != killed[0][1]
    # The broken film failed once with its reason and was not retried.
    assert by_id["broken"].status == "failed" and "broken.mp4" in by_id["broken"].reason
    assert entries["broken"]["status"] == "failed" and "broken.mp4" in entries["broken"]["reason"]
    assert "attempts" not in entries["broken"] and "attempts" not in entries["bikes"]
    assert not frames_path(tmp_path / "out", "broken").exists()
    # Each film written once: one row per sampled frame, none twice, no temporary files left.
    for fid in ("long_a", "bikes"):
        t = read_table(frames_path(tmp_path / "out", fid))
        assert t.num_rows == _expected_rows(entries[fid]["info"]["num_frames"], 2) == entries[fid]["frames_sampled"]
        assert len(set(t.column("frame_index").to_pylist())) == t.num_rows
    assert _no_temporaries(tmp_path / "out")


def test_node_removed_mid_scan_films_finish_elsewhere(cluster, long_library, tmp_path):
    cluster.add_node(num_cpus=1, object_store_memory=80 << 20)  # three nodes, three films at once
    cluster.wait_for_nodes()
    workers = {n.node_id: n for n in cluster.worker_nodes}  # the nodes the driver is not connected to
    on_node: dict[str, object] = {}
    removed: list[tuple[str, str]] = []

    def remove_mid_film(film_id: str, done: int, total: int) -> None:
        # The first long film seen on a worker node before half its frames: that node goes.
        if not removed and film_id.startswith("long") and film_id in on_node and done < total // 2:
            node = on_node[film_id]
            removed.append((film_id, node.node_id))
            threading.Thread(target=cluster.remove_node, args=(node, False), daemon=True).start()

    def placed(film_id: str, node_id: str, pid: int) -> None:
        if node_id in workers:
            on_node[film_id] = workers[node_id]

    # Every frame, one per batch: a long film reports progress after each of its 360 frames, so
    # the driver (polling twice a second) sees it on its node well before half its frames, even
    # on an idle machine where a film with fewer, larger batches is half done at its first report.
    opts = _opts(sampling=SamplingOptions(every=1), batch_size=1)
    # Where the scheduler puts each film, and when progress reports arrive, depend on timing: a
    # try may still see no long film on a worker node. Up to three tries (each a whole,
    # independent scan into its own output) until the fault has been injected once.
    for attempt in range(3):
        on_node.clear()
        out = tmp_path / f"out{attempt}"
        res = scan_ray([long_library], out, opts, RayOptions(address=cluster.address),
                       on_film_worker=placed, on_film_frames=remove_mid_film)
        if removed:
            break
    assert removed, "no long film ran on a worker node"
    film_id, node_id = removed[0]
    assert [f.status for f in res.films] == ["done"] * 3
    entries = _entries(out)
    assert len(entries[film_id]["attempts"]) == 1
    assert entries[film_id]["worker"]["node"] != node_id
    for fid, e in entries.items():
        t = read_table(frames_path(out, fid))
        assert t.num_rows == e["frames_sampled"] == len(set(t.column("frame_index").to_pylist()))
    assert _no_temporaries(out)


_DRIVER = textwrap.dedent("""
    import sys
    from exe_stream.pipeline import ScanOptions
    from exe_stream.ray_scan import RayOptions, scan_ray
    from exe_stream.sampling import SamplingOptions
    res = scan_ray(sys.argv[3:], sys.argv[2], ScanOptions(sampling=SamplingOptions(every=3), device="cpu"),
                   RayOptions(address=sys.argv[1]))
    print(" ".join(f"{f.film_id}={f.status}" for f in res.films))
""")


def test_driver_killed_and_started_again_resumes(cluster, library, tmp_path):
    out = tmp_path / "out"
    films = [str(library / f"{n}.mp4") for n in ("carphone_pristine", "bikes", "bigbuckbunny")]
    cmd = [sys.executable, "-c", _DRIVER, cluster.address, str(out), *films]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done: dict[str, float] = {}
    while time.monotonic() < deadline and not done:
        time.sleep(0.2)
        try:
            entries = _entries(out)
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        done = {fid: frames_path(out, fid).stat().st_mtime for fid, e in entries.items() if e["status"] == "done"}
    assert done, "the driver finished no film in time"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert len(done) < 3, "the driver finished every film before it was killed"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    statuses = dict(s.split("=") for s in again.stdout.split())
    assert {fid for fid, s in statuses.items() if s == "skipped"} == set(done)
    assert {fid for fid, s in statuses.items() if s == "done"} == set(statuses) - set(done)
    for fid, mtime in done.items():
        assert frames_path(out, fid).stat().st_mtime == mtime  # not written again
    assert {e["status"] for e in _entries(out).values()} == {"done"}


def test_bad_ray_options_name_the_value():
    with pytest.raises(ValueError, match="max_attempts must be >= 1, got 0"):
        RayOptions(max_attempts=0)
    with pytest.raises(ValueError, match="cpus_per_film must be > 0, got -1"):
        RayOptions(cpus_per_film=-1)


def test_a_model_that_does_not_load_fails_before_any_film(cluster, library, tmp_path):
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        scan_ray([library], tmp_path / "out", _opts(models=("no-such-model",)),
                 RayOptions(address=cluster.address))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_bad_ray_option_exits_2_naming_it(tmp_path, library):
    from typer.testing import CliRunner

    from exe_stream.cli import app

    r = CliRunner().invoke(app, ["scan", str(library), "-o", str(tmp_path / "o"), "--ray", "auto",
                                 "--ray-max-attempts", "0"])
    assert r.exit_code == 2 and "--ray-max-attempts must be >= 1, got 0" in r.output


def test_s3_in_and_out_same_as_local_and_stats_read_it(cluster, s3, library, tmp_path):
    import boto3
    from typer.testing import CliRunner

    from exe_stream.cli import app
    from exe_stream.storage import local_copy

    client = boto3.client("s3")
    for bucket in ("films", "scans"):
        client.create_bucket(Bucket=bucket)
    for name in ("carphone_pristine", "bikes"):
        client.upload_file(str(library / f"{name}.mp4"), "films", f"lib/{name}.mp4")
    opts = _opts(models=(FER, "facex"), sampling=SamplingOptions(every=20))
    res = scan_ray(["s3://films/lib"], "s3://scans/run1", opts, RayOptions(address=cluster.address))
    assert [(f.film_id, f.status) for f in res.films] == [("bikes", "done"), ("carphone_pristine", "done")]
    local = scan([library / "bikes.mp4", library / "carphone_pristine.mp4"], tmp_path / "local", opts)
    with local_copy("s3://scans/run1") as copy:
        entries = _entries(copy)
        assert entries["bikes"]["path"] == "s3://films/lib/bikes.mp4"
        lm = _entries(tmp_path / "local")
        for fid in ("bikes", "carphone_pristine"):
            assert entries[fid]["fingerprint"] == lm[fid]["fingerprint"]  # of the object = of the file
            assert entries[fid]["frames_sampled"] == lm[fid]["frames_sampled"] > 0
            for model in (FER, "facex"):
                a = read_table(faces_path(tmp_path / "local", fid, model))
                assert read_table(faces_path(copy, fid, model)).equals(a, check_metadata=False)
        assert sorted(p.name for p in copy.rglob("*") if ".tmp-" in p.name) == []
    # Resume against object storage: nothing is scanned again.
    again = scan_ray(["s3://films/lib"], "s3://scans/run1", opts, RayOptions(address=cluster.address))
    assert [f.status for f in again.films] == ["skipped", "skipped"]
    # stats reads the scan in the bucket and agrees with stats on the local scan.
    r_s3 = CliRunner().invoke(app, ["stats", "s3://scans/run1", "--a", FER, "--b", "facex", "--format", "json",
                                    "--bootstrap", "0"])
    r_local = CliRunner().invoke(app, ["stats", str(tmp_path / "local"), "--a", FER, "--b", "facex",
                                       "--format", "json", "--bootstrap", "0"])
    assert r_s3.exit_code == 0, r_s3.output
    assert json.loads(r_s3.stdout) == json.loads(r_local.stdout) and json.loads(r_s3.stdout)
    # A local scan refuses object storage, naming it and the way out.
    r = CliRunner().invoke(app, ["scan", "s3://films/lib", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "s3://films/lib" in r.output and "--ray" in r.output


def _output_files(out: Path) -> dict[str, object]:
    """Every file of a scan output but the manifest, by relative path: a Parquet shard's table
    and schema metadata (less the package version), a union schema (_common_metadata) as is."""
    import pyarrow.parquet as pq

    files: dict[str, object] = {}
    for p in sorted(q for q in out.rglob("*") if q.is_file() and q.name != "manifest.json"):
        rel = p.relative_to(out).as_posix()
        if p.name == "_common_metadata":
            files[rel] = pq.read_schema(p)
        else:
            t = read_table(p)
            files[rel] = (t.replace_schema_metadata(None),
                          {k: v for k, v in t.schema.metadata.items() if k != b"exe_stream.version"})
    return files


def test_cli_scan_on_ray_with_shots_tracks_characters_and_a_cast_same_as_local(cluster, s3, films, clips, tmp_path,
                                                                               monkeypatch):
    """--shots with --skip-cuts, --track-every, --characters and a --cast CSV named by a path
    relative to the driver's directory (not the workers'): into a directory and into s3://, the
    same shards, shots shards, union schemas, resume keys and recorded options as a local scan;
    a second run skips every done film; a broken film fails once with its reason; a rescan
    without shots leaves no shots object behind (as a local rescan leaves no shots file)."""
    import boto3
    from edits import make_two_faces
    from typer.testing import CliRunner

    from exe_stream import storage
    from exe_stream.cli import app
    from exe_stream.shots import shots_path

    lib = tmp_path / "lib"
    lib.mkdir()
    make_two_faces(lib / "two.mp4", clips, DATA / "grace_hopper_512x512.jpg", shots=2)  # a cut at frame 40
    shutil.copy(films.text_as_mp4, lib / "broken.mp4")
    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    shutil.copy(DATA / "grace_hopper_512x512.jpg", work / "photos" / "hopper.jpg")
    (work / "cast.csv").write_text("name,photo\nGrace Hopper,photos/hopper.jpg\n")
    monkeypatch.chdir(work)  # the Ray workers run elsewhere: they get the cast's content from the driver
    args = [str(lib), "--shots", "content", "--every", "10", "--skip-cuts", "--track-every", "4", "--characters",
            "--cast", "cast.csv", "--device", "cpu", "-q"]
    runner = CliRunner()
    r = runner.invoke(app, ["scan", *args, "-o", str(tmp_path / "local")])
    assert r.exit_code == 1 and "broken.mp4" in r.output, r.output  # the broken film fails, the other is done
    local = _output_files(tmp_path / "local")
    assert {"frames/_common_metadata", "faces/_common_metadata", "shots/_common_metadata", "shots/two.parquet",
            "frames/two.parquet"} <= set(local)
    faces = local[f"faces/{FER}/two.parquet"][0]
    assert set(faces["character_name"].to_pylist()) == {"Grace Hopper", None}  # the carphone man has no photo
    assert faces["track_id"].null_count == faces["character_id"].null_count == 0
    lm = json.loads((tmp_path / "local" / "manifest.json").read_text())
    same = ("path", "status", "reason", "frames_sampled", "faces", "options_key", "models", "fingerprint", "info")

    boto3.client("s3").create_bucket(Bucket="shots")
    for out in (str(tmp_path / "ray"), "s3://shots/run1"):
        r = runner.invoke(app, ["scan", *args, "-o", out, "--ray", cluster.address])
        assert r.exit_code == 1 and "broken.mp4" in r.output, r.output
        with storage.local_copy(out) as copy:
            assert _output_files(copy) == local, out
            rm = json.loads((copy / "manifest.json").read_text())
        assert {f: {k: e[k] for k in same} for f, e in rm["films"].items()} == \
            {f: {k: e[k] for k in same} for f, e in lm["films"].items()}
        assert rm["scans"][-1]["options"] == lm["scans"][-1]["options"]
        assert rm["scans"][-1]["options"]["cast"] == "cast.csv"
        assert rm["films"]["two"]["worker"]["pid"] != os.getpid()
        assert "attempts" not in rm["films"]["broken"]  # failed once, not retried
        # Resume: the done film is skipped (its entry, worker and timings, stays as it was), or
        # scanned again when its shots shard is gone (here from the bucket); the broken one is
        # tried again and fails again.
        lost = storage.is_uri(out) and storage.remove(storage.join(out, shots_path(Path(), "two").as_posix()))
        r = runner.invoke(app, ["scan", *args, "-o", out, "--ray", cluster.address])
        assert r.exit_code == 1, r.output
        with storage.local_copy(out) as copy:
            again = json.loads((copy / "manifest.json").read_text())
            assert _output_files(copy) == local, out
        assert len(again["scans"]) == 2 and again["films"]["broken"]["status"] == "failed"
        assert (again["films"]["two"] != rm["films"]["two"]) == lost
    # A rescan of the film without shots into object storage: no shots object stays beside its
    # new shards (a local rescan removes the file: tests/test_shots.py).
    res = scan_ray([lib / "two.mp4"], "s3://shots/run1", _opts(sampling=SamplingOptions(every=40)),
                   RayOptions(address=cluster.address))
    assert [f.status for f in res.films] == ["done"]
    assert not storage.exists(storage.join("s3://shots/run1", shots_path(Path(), "two").as_posix()))
    assert storage.exists(storage.join("s3://shots/run1", frames_path(Path(), "two").as_posix()))


def test_a_bad_cast_file_fails_before_the_cluster_is_used(tmp_path, library):
    from exe_stream.shots import ShotOptions

    cast = tmp_path / "cast.csv"
    cast.write_text("name,photo\nAda,missing.png\n")
    opts = _opts(shots=ShotOptions("content"), characters=True, cast=str(cast))
    with pytest.raises(ValueError, match=r"cast.csv: line 2: photo 'missing.png' not found"):
        scan_ray([library], tmp_path / "out", opts, RayOptions(address="no-such-host:1"))
    assert not (tmp_path / "out").exists()
