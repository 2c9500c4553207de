"""``exe-stream data pull`` (exe_stream.data.pull, .http, .sources, .recipe) against a loopback
fake of the Pexels and Pixabay APIs serving real face photos (tests/fake_stock_api.py).

Rate-limit pauses and backoff run on an injected clock, so no test waits for real.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image
from typer.testing import CliRunner

import exe_stream.data.pull as pull_module
from exe_stream.cli import app
from exe_stream.data.http import HttpClient, HttpError, HttpOptions, redact, retry_after_seconds
from exe_stream.data.pull import (
    DUPLICATE_SCHEMA, EXHAUSTED, FEW_NEW, LABEL_FULL, RAW_SCHEMA, PullError, PullOptions, api_keys_from_env, pull,
    read_raw, with_overrides,
)
from exe_stream.data.recipe import RecipeError, load_recipe
from exe_stream.data.sources import SOURCES, SourceOptions, get_source, pexels, pixabay
from exe_stream.shards import read_table, write_table
from fake_stock_api import Catalog, FakePhoto, FakeStockAPI, face_photos, write_recipe

EMOTIONS = {"happy": ["happy", "smiling"], "sad": ["sad", "crying"]}
runner = CliRunner()


class FakeClock:
    """time() and sleep() for the pull and the fake API: sleeping advances the time at once."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def time(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


@pytest.fixture(autouse=True)
def _loopback_without_proxy(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def api(clock):
    with FakeStockAPI(Catalog.for_emotions(EMOTIONS, per_query=4), clock=clock.time) as fake:
        yield fake


def options(tmp_path: Path, api: FakeStockAPI | None, emotions=EMOTIONS, **pull_keys) -> PullOptions:
    """PullOptions through a recipe file (so the recipe parser is exercised too)."""
    path = write_recipe(tmp_path / "recipe.toml", emotions, api, **{"per_page": 3, "max_retries": 2, "backoff": 1.0,
                                                                   **pull_keys})
    return PullOptions.from_recipe(load_recipe(path))


def run(opts, data, api, clock, **kw):
    return pull(opts, data, keys=api.keys, sleep=clock.sleep, clock=clock.time, **kw)


def expected_rows(api: FakeStockAPI, sources=("pexels", "pixabay")) -> set[str]:
    """sha256 of every distinct photo the catalog serves through ``sources``."""
    return {api.catalog.photos[i].sha256 for i in api.catalog.distinct_photos(sources)}


def scan_files_for(root: Path, secrets) -> list[str]:
    return [str(f) for f in root.rglob("*") if f.is_file() and any(s.encode() in f.read_bytes() for s in secrets)]


# -- the pull ---------------------------------------------------------------------------------


def test_pull_downloads_every_distinct_photo_once_with_labels_and_credits(tmp_path, api, clock):
    data = tmp_path / "data"
    res = run(options(tmp_path, api), data, api, clock)
    assert res.ok, res.errors
    raw = read_raw(data)
    assert raw.schema.remove_metadata() == RAW_SCHEMA
    rows = raw.to_pylist()
    # One row per distinct photo, whatever the number of queries and sites that found it.
    assert {r["sha256"] for r in rows} == expected_rows(api)
    assert len(rows) == len(expected_rows(api)) == res.images == res.new
    # Every image was fetched from the image host exactly once.
    assert max(api.image_downloads.values()) == 1
    assert sum(api.image_downloads.values()) == res.downloads
    keyword_label = {kw: label for label, kws in EMOTIONS.items() for kw in kws}
    for r in rows:
        f = data / r["path"]
        assert r["path"] == f"raw/{r['source']}-{r['id']}.jpg" and f.is_file()
        body = f.read_bytes()
        assert hashlib.sha256(body).hexdigest() == r["sha256"]
        assert Image.open(io.BytesIO(body)).size == (r["width"], r["height"])
        assert r["query"] == f"{r['keyword']} face" and r["label"] == keyword_label[r["keyword"]]
        # The weak label is the emotion of the query that found it first.
        index = api.photo_index(r["source"], r["id"])
        assert index in api.catalog.results[r["source"]][r["query"]]
        assert r["url"].startswith(api.cdn_url) and r["page_url"].startswith("https://")
        assert r["photographer"] and r["photographer_url"].startswith("https://")
        assert r["license"] == get_source(r["source"]).license
        assert r["fetched_at"] is not None
    pb = [r for r in rows if r["source"] == "pixabay"][0]
    assert pb["photographer_url"] == f"https://pixabay.com/users/{pb['photographer']}-{7000 + api.photo_index('pixabay', pb['id'])}/"
    # Nothing else lies in raw/: duplicates' files are gone.
    assert sorted(p.name for p in (data / "raw").iterdir()) == sorted(Path(r["path"]).name for r in rows)
    # Each (source, query) searched until the API had no further page (4 results, 3 per page).
    assert all(s.stop == EXHAUSTED and s.pages == 2 for s in res.streams)
    assert api.search_requests == {"pexels": 8, "pixabay": 8} == res.requests


def test_duplicates_by_id_and_by_content_are_recorded_not_kept(tmp_path, api, clock):
    data = tmp_path / "data"
    res = run(options(tmp_path, api), data, api, clock)
    rows = {(r["source"], r["id"]): r for r in read_raw(data).to_pylist()}
    dups = read_table(data / "raw_duplicates.arrow")
    assert dups.schema.remove_metadata() == DUPLICATE_SCHEMA
    dups = dups.to_pylist()
    assert len(dups) == res.duplicates > 0
    assert {d["reason"] for d in dups} == {"same_id", "same_content"}
    for d in dups:
        kept = rows[(d["duplicate_of_source"], d["duplicate_of_id"])]
        assert d["sha256"] == kept["sha256"]
        assert (d["source"], d["id"]) != (kept["source"], kept["id"]) or d["query"] != kept["query"]
        if d["reason"] == "same_content":  # the same bytes under another id
            assert (d["source"], d["id"]) not in rows
            assert not list((data / "raw").glob(f"{d['source']}-{d['id']}.*"))
    # Catalog photo 0 (Pexels "happy face") is Pixabay's "happy face" #0 too: same bytes, other id.
    content = [d for d in dups if d["reason"] == "same_content" and d["source"] == "pixabay"
               and d["id"] == api.photo_id("pixabay", 0)]
    assert content and content[0]["duplicate_of_id"] == api.photo_id("pexels", 0)
    assert len({(d["source"], d["id"], d["query"]) for d in dups}) == len(dups)


def test_a_photo_found_under_two_emotions_keeps_the_first_label_and_records_the_other(tmp_path, clock):
    photos = face_photos(4)
    cat = Catalog(photos=photos)
    cat.results["pexels"] = {"happy face": [0, 1], "sad face": [2, 3]}
    cat.results["pixabay"] = {"happy face": [], "sad face": [0]}  # photo 0 again, under "sad"
    em = {"happy": ["happy"], "sad": ["sad"]}
    with FakeStockAPI(cat, clock=clock.time) as api:
        run(options(tmp_path, api, em), tmp_path / "d", api, clock)
    kept = {r["sha256"]: r for r in read_raw(tmp_path / "d").to_pylist()}
    assert kept[photos[0].sha256]["label"] == "happy" and len(kept) == 4
    (dup,) = read_table(tmp_path / "d" / "raw_duplicates.arrow").to_pylist()
    assert (dup["label"], dup["reason"], dup["duplicate_of_source"]) == ("sad", "same_content", "pexels")


def test_rerun_fetches_nothing_new(tmp_path, api, clock):
    data = tmp_path / "data"
    first = run(options(tmp_path, api), data, api, clock)
    searches, downloads = sum(api.search_requests.values()), sum(api.image_downloads.values())
    again = run(options(tmp_path, api), data, api, clock)
    assert again.new == again.downloads == again.duplicates == 0 and again.images == first.images
    assert sum(api.search_requests.values()) == searches  # finished streams are not searched again
    assert sum(api.image_downloads.values()) == downloads
    assert read_table(data / "raw_duplicates.arrow").num_rows == first.duplicates


# -- limits and stopping ------------------------------------------------------------------------


def test_few_new_results_stop_a_keyword(tmp_path, clock):
    cat = Catalog(photos=face_photos(13))
    cat.results["pexels"] = {"happy face": list(range(6)), "smiling face": [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]}
    em = {"happy": ["happy", "smiling"]}
    with FakeStockAPI(cat, clock=clock.time) as api:
        opts = options(tmp_path, api, em, sources=["pexels"], per_page=6, min_new_fraction=0.5)
        res = run(opts, tmp_path / "d", api, clock)
        smiling = [s for s in res.streams if s.keyword == "smiling"][0]
        # Page 1 of "smiling face" brought 1 new photo of 6 (< 50%): its page 2 is never asked for.
        assert smiling.stop == FEW_NEW and smiling.pages == 1 and smiling.new == 1
        assert [r.params.get("page") for r in api.received if r.params.get("query") == "smiling face"] == ["1"]
        for i in range(7, 13):
            assert api.image_path("pexels", i) not in api.image_downloads
        # The decision is kept: a later run does not search that keyword again.
        before = api.search_requests["pexels"]
        run(opts, tmp_path / "d", api, clock)
        assert api.search_requests["pexels"] == before
    state = json.loads((tmp_path / "d" / "pull_state.json").read_text())
    assert state["streams"]["pexels\tsmiling face"]["done"] == FEW_NEW


def test_limit_per_label_then_raising_it_continues_without_downloading_again(tmp_path, api, clock):
    data = tmp_path / "data"
    opts = with_overrides(options(tmp_path, api), limit=3)
    res = run(opts, data, api, clock)
    counts = {label: after for label, (_, after) in res.per_label.items()}
    assert counts == {"happy": 3, "sad": 3}
    assert {s.stop for s in res.streams if not s.pages} == {LABEL_FULL}
    downloaded = set(api.image_downloads)
    res2 = run(with_overrides(opts, limit=0), data, api, clock)
    assert {r["sha256"] for r in read_raw(data).to_pylist()} == expected_rows(api)
    assert max(api.image_downloads.values()) == 1 and downloaded <= set(api.image_downloads)
    assert res2.per_label["happy"][0] == 3


def test_max_per_keyword_and_source_subset(tmp_path, api, clock):
    opts = with_overrides(options(tmp_path, api, max_per_keyword=2), sources=["pixabay"])
    run(opts, tmp_path / "d", api, clock)
    rows = read_raw(tmp_path / "d").to_pylist()
    assert {r["source"] for r in rows} == {"pixabay"} and api.search_requests["pexels"] == 0
    per_kw = {}
    for r in rows:
        per_kw[r["keyword"]] = per_kw.get(r["keyword"], 0) + 1
    assert per_kw == {"happy": 2, "smiling": 2, "sad": 2, "crying": 2}


def test_per_page_is_clamped_to_each_api_range(tmp_path):
    assert options(tmp_path, None, per_page=500).page_size("pexels") == 80
    assert options(tmp_path, None, per_page=500).page_size("pixabay") == 200
    assert options(tmp_path, None, per_page=1).page_size("pixabay") == 3


# -- rate limits, retries, failures -------------------------------------------------------------


@pytest.mark.parametrize("source", ["pexels", "pixabay"])
def test_rate_limit_headers_pause_until_the_window_resets(tmp_path, api, clock, source):
    api.set_rate_limit(source, limit=3, window=60)
    res = run(options(tmp_path, api, sources=[source], min_remaining=1), tmp_path / "d", api, clock)
    assert res.ok, res.errors
    statuses = [r.status for r in api.received if r.api == source]
    assert statuses == [200] * 8  # paused before the quota ran out: never a 429
    pauses = [s for s in clock.sleeps if s > 10]
    assert len(pauses) == 3 and all(58 <= s <= 62 for s in pauses), clock.sleeps
    assert {r["sha256"] for r in read_raw(tmp_path / "d").to_pylist()} == expected_rows(api, [source])


def test_a_429_without_retry_after_waits_for_the_known_reset(tmp_path, api, clock):
    api.set_rate_limit("pexels", limit=1000, window=100)
    api.fail("pexels", 429, times=1, after=1)  # Pexels' 429 has no headers; the first answer told the reset
    res = run(options(tmp_path, api, sources=["pexels"]), tmp_path / "d", api, clock)
    assert res.ok, res.errors
    assert [r.status for r in api.received if r.api == "pexels"].count(429) == 1
    assert clock.sleeps == [101.0]  # until the reset (100 s) plus a second, not the 1 s backoff


def test_429_and_5xx_are_retried_with_backoff_then_succeed(tmp_path, api, clock):
    api.fail("pexels", 429, times=1, retry_after="7")
    api.fail("pixabay", 503, times=2)
    res = run(options(tmp_path, api), tmp_path / "d", api, clock)
    assert res.ok, res.errors
    assert clock.sleeps[:1] == [7.0]                 # Retry-After honoured
    assert [s for s in clock.sleeps[1:3]] == [1.0, 2.0]  # then backoff 1 s, doubled
    assert api.search_requests == {"pexels": 9, "pixabay": 10}
    assert {r["sha256"] for r in read_raw(tmp_path / "d").to_pylist()} == expected_rows(api)


def test_a_permanently_failing_api_stops_that_source_and_the_others_go_on(tmp_path, api, clock):
    api.fail("pixabay", 500, times=None)
    res = run(options(tmp_path, api), tmp_path / "d", api, clock)
    assert not res.ok and list(res.failed_sources) == ["pixabay"]
    assert "pixabay: HTTP 500 from http://127.0.0.1" in res.errors[0]
    assert "still failing after 2 retries" in res.errors[0] and "stopped this source" in res.errors[0]
    assert api.search_requests["pixabay"] == 3      # one page: a try and 2 retries, then the source stops
    assert {r["sha256"] for r in read_raw(tmp_path / "d").to_pylist()} == expected_rows(api, ["pexels"])
    # Fixed, run again: the stopped source resumes.
    api.clear_failures()
    res = run(options(tmp_path, api), tmp_path / "d", api, clock)
    assert res.ok and {r["sha256"] for r in read_raw(tmp_path / "d").to_pylist()} == expected_rows(api)


def test_a_monthly_quota_wait_longer_than_max_wait_stops_the_source_until_a_later_run(tmp_path, api, clock):
    api.set_rate_limit("pexels", limit=5, window=20 * 86400)
    opts = options(tmp_path, api, max_wait=600.0)
    res = run(opts, tmp_path / "d", api, clock)
    assert list(res.failed_sources) == ["pexels"]
    msg = res.failed_sources["pexels"]
    assert "rate limit" in msg and "longer than max_wait (600 s)" in msg and "run again later" in msg
    assert not [s for s in clock.sleeps if s > 600]
    assert {r["sha256"] for r in read_raw(tmp_path / "d").to_pylist()} >= expected_rows(api, ["pixabay"])
    clock.sleep(21 * 86400)  # the next month
    res = run(opts, tmp_path / "d", api, clock)
    assert res.ok and {r["sha256"] for r in read_raw(tmp_path / "d").to_pylist()} == expected_rows(api)


def test_pixabay_page_out_of_range_ends_the_keyword_quietly(tmp_path, api, clock):
    api.fail("pixabay", 400, times=1, body='[ERROR 400] "page" is out of valid range.')
    res = run(options(tmp_path, api, sources=["pixabay"]), tmp_path / "d", api, clock)
    assert res.ok
    assert res.streams[0].stop == EXHAUSTED and res.streams[0].pages == 0


def test_bad_keys_stop_each_source_with_the_variable_named(tmp_path, api, clock, caplog):
    wrong = {"pexels": "wrong-pexels-key-123", "pixabay": "wrong-pixabay-key-456"}
    with caplog.at_level(logging.DEBUG):
        res = pull(options(tmp_path, api), tmp_path / "d", keys=wrong, sleep=clock.sleep, clock=clock.time)
    assert set(res.failed_sources) == {"pexels", "pixabay"}
    assert "refused the key in PEXELS_API_KEY (HTTP 401)" in res.failed_sources["pexels"]
    assert "refused the key in PIXABAY_API_KEY (HTTP 400): [ERROR 400] Invalid API key" in res.failed_sources["pixabay"]
    assert api.search_requests == {"pexels": 1, "pixabay": 1}  # not retried
    blob = caplog.text + " ".join(res.errors)
    assert wrong["pexels"] not in blob and wrong["pixabay"] not in blob


def test_an_image_that_fails_is_skipped_and_fetched_on_the_next_run(tmp_path, api, clock):
    api.fail_images(404, times=1)
    opts = options(tmp_path, api, sources=["pexels"])
    res = run(opts, tmp_path / "d", api, clock)
    assert len(res.errors) == 1 and "HTTP 404" in res.errors[0] and "tried again next run" in res.errors[0]
    assert res.images == len(expected_rows(api, ["pexels"])) - 1
    searches = sum(api.search_requests.values())
    res = run(opts, tmp_path / "d", api, clock)
    assert res.ok and res.new == 1 and res.downloads == 1
    assert sum(api.search_requests.values()) == searches  # fetched from the state file, no search needed
    assert {r["sha256"] for r in read_raw(tmp_path / "d").to_pylist()} == expected_rows(api, ["pexels"])
    assert json.loads((tmp_path / "d" / "pull_state.json").read_text())["failed"] == {}


def test_an_image_that_keeps_failing_is_given_up_after_three_runs(tmp_path, clock):
    cat = Catalog(photos=face_photos(2))
    cat.results["pexels"] = {"happy face": [0, 1]}
    with FakeStockAPI(cat, clock=clock.time) as api:
        opts = options(tmp_path, api, {"happy": ["happy"]}, sources=["pexels"], max_retries=0)
        api.fail_images(500, times=None)
        msgs = [run(opts, tmp_path / "d", api, clock).errors for _ in range(4)]
    assert [len(m) for m in msgs] == [2, 2, 2, 0]
    assert all("tried again next run" in m for m in msgs[0] + msgs[1])
    assert all("gave up after 3 runs" in m for m in msgs[2])


def test_a_download_that_is_not_an_image_is_skipped(tmp_path, clock):
    photos = list(face_photos(2)) + [FakePhoto(b"<html>not an image</html>", 1, 1, "x", "html")]
    cat = Catalog(photos=photos)
    cat.results["pexels"] = {"happy face": [0, 1, 2]}
    with FakeStockAPI(cat, clock=clock.time) as api:
        res = run(options(tmp_path, api, {"happy": ["happy"]}, sources=["pexels"]), tmp_path / "d", api, clock)
    assert res.images == 2 and len(res.errors) == 1
    assert f"pexels image {api.photo_id('pexels', 2)}: not a readable image" in res.errors[0]
    assert not list((tmp_path / "d" / "raw").glob(f"*{api.photo_id('pexels', 2)}*"))


def test_slow_answers_time_out_and_are_retried(tmp_path, api, clock):
    api.delay("pexels", 0.4)
    opts = options(tmp_path, api, sources=["pexels"], timeout=0.1, max_retries=1)
    res = run(opts, tmp_path / "d", api, clock)
    assert list(res.failed_sources) == ["pexels"]
    assert "network error" in res.errors[0] and "still failing after 1 retries" in res.errors[0]


# -- resume -------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def _kill_after(n: int):
    seen = []

    def on_image(row):
        seen.append(row)
        if len(seen) == n:
            raise Killed

    return on_image


def test_interrupted_pull_resumes_without_downloading_twice_or_duplicate_rows(tmp_path, api, clock):
    data = tmp_path / "data"
    with pytest.raises(Killed):
        run(options(tmp_path, api), data, api, clock, on_image=_kill_after(4))
    saved = read_raw(data).num_rows
    assert saved == 4  # what was done before the interruption is on disk
    res = run(options(tmp_path, api), data, api, clock)
    rows = read_raw(data).to_pylist()
    assert len(rows) == len({(r["source"], r["id"]) for r in rows}) == len({r["sha256"] for r in rows})
    assert {r["sha256"] for r in rows} == expected_rows(api)
    assert max(api.image_downloads.values()) == 1
    dups = read_table(data / "raw_duplicates.arrow").to_pylist()
    assert len({(d["source"], d["id"], d["query"]) for d in dups}) == len(dups)
    # Same outcome as an uninterrupted pull.
    run(options(tmp_path, api), tmp_path / "ref", api, clock)
    ref_rows = read_raw(tmp_path / "ref").to_pylist()
    assert {(r["source"], r["id"], r["label"]) for r in ref_rows} == {(r["source"], r["id"], r["label"]) for r in rows}
    assert res.new + saved == len(rows)


def test_hard_kill_before_any_checkpoint_adopts_the_files_on_disk(tmp_path, api, clock):
    data = tmp_path / "data"
    with pytest.raises(Killed):
        run(options(tmp_path, api), data, api, clock, on_image=_kill_after(2))
    # As if killed before anything but the image files was written; plus a half-written file.
    for name in ("raw.arrow", "raw_duplicates.arrow", "pull_state.json"):
        (data / name).unlink()
    (data / "raw" / ".pexels-1.jpg.tmp-12345").write_bytes(b"half")
    on_disk = len(list((data / "raw").glob("*.jpg")))
    downloads = sum(api.image_downloads.values())
    res = run(options(tmp_path, api), data, api, clock)
    assert res.adopted == on_disk > 0
    assert sum(api.image_downloads.values()) - downloads == res.downloads
    assert max(api.image_downloads.values()) == 1
    assert {r["sha256"] for r in read_raw(data).to_pylist()} == expected_rows(api)
    assert not list((data / "raw").glob(".*.tmp-*"))


# -- keys ---------------------------------------------------------------------------------------


def test_keys_never_leak_into_logs_errors_or_files(tmp_path, api, clock, caplog):
    api.fail("pixabay", 500, times=None, echo_url=True)  # a server that echoes the URL, key and all
    with caplog.at_level(logging.DEBUG):
        res = run(options(tmp_path, api), tmp_path / "d", api, clock)
    secrets = list(api.keys.values())
    assert "key=***" in res.failed_sources["pixabay"]  # the URL is shown, the key is not
    blob = caplog.text + "\n".join(res.errors) + repr(res)
    assert all(s not in blob for s in secrets)
    assert scan_files_for(tmp_path / "d", secrets) == []
    # The key went where it belongs and nowhere else.
    px = [r for r in api.received if r.api == "pexels"]
    assert px and all(r.headers.get("Authorization") == api.keys["pexels"] for r in px)
    assert all("key" not in r.params for r in px)
    cdn = [r for r in api.received if r.api == "cdn"]
    assert cdn and all("Authorization" not in r.headers and "key" not in r.params for r in cdn)


def test_a_redirect_to_another_host_drops_the_authorization_header(tmp_path, api, clock):
    api.redirect_searches("pexels")
    res = run(options(tmp_path, api, sources=["pexels"]), tmp_path / "d", api, clock)
    (hop,) = [r for r in api.received if r.path.startswith("/redirected")]
    assert "Authorization" not in hop.headers and hop.api == "cdn"
    assert "refused the key" in res.failed_sources["pexels"]


def test_http_client_redacts_raw_and_url_encoded_secrets(clock):
    key = "a b/c+d"
    text = "url?key=a+b%2Fc%2Bd and a%20b%2Fc%2Bd and a b/c+d"
    assert redact(text, [key]) == "url?key=*** and *** and ***"
    client = HttpClient(HttpOptions(max_retries=0), name="t", secrets=[key], sleep=clock.sleep, clock=clock.time)
    with pytest.raises(HttpError) as e:
        client.get("no-scheme?key=a+b%2Fc%2Bd")  # urllib's ValueError quotes the whole URL
    assert key not in str(e.value) and "a+b%2Fc%2Bd" not in str(e.value) and e.value.__cause__ is None


def test_retry_after_accepts_seconds_and_http_dates():
    assert retry_after_seconds("12", 0.0) == 12.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon", 0.0) is None and retry_after_seconds(None, 0.0) is None


def test_missing_key_names_the_variable():
    with pytest.raises(PullError, match=r"PEXELS_API_KEY is not set: the pexels source needs an API key "
                                        r"\(get one at https://www.pexels.com/api/\); export PEXELS_API_KEY=\.\.\., "
                                        r"or pull from the others only with --source pixabay"):
        api_keys_from_env(("pexels", "pixabay"), env={"PIXABAY_API_KEY": "x"})
    assert api_keys_from_env(("pixabay",), env={"PIXABAY_API_KEY": " k "}) == {"pixabay": "k"}


# -- sources ------------------------------------------------------------------------------------


def test_sources_build_the_documented_requests():
    so = SourceOptions(base_url="https://api.pexels.com/v1/", image="large", params=(("orientation", "square"),))
    req = pexels.search_request(so, "K", "happy face", 2, 80)
    assert req.url == "https://api.pexels.com/v1/search?query=happy+face&page=2&per_page=80&orientation=square"
    assert req.headers == {"Authorization": "K"} and req.secret == "K"
    so = SourceOptions(base_url="https://pixabay.com/api/", image="webformat", params=(("safesearch", "false"),))
    req = pixabay.search_request(so, "K", "sad face", 1, 200)
    assert req.url == ("https://pixabay.com/api/?key=K&q=sad+face&page=1&per_page=200&image_type=photo"
                       "&safesearch=false")
    assert set(SOURCES) == {"pexels", "pixabay"}
    with pytest.raises(ValueError, match="unknown source 'flickr'; allowed: pexels, pixabay"):
        get_source("flickr")


def test_sources_parse_the_documented_answers():
    # The examples of the APIs' documentation pages, trimmed.
    px = {"total_results": 10000, "page": 1, "per_page": 1, "next_page": "https://api.pexels.com/v1/search/?page=2",
          "photos": [{"id": 3031075, "width": 3686, "height": 4607,
                      "url": "https://www.pexels.com/photo/grey-cliff-3031075/", "photographer": "Simon Clayton",
                      "photographer_url": "https://www.pexels.com/@sglc", "photographer_id": 790423,
                      "src": {"original": "https://images.pexels.com/photos/3031075/pexels-photo-3031075.jpeg",
                              "large": "https://images.pexels.com/photos/3031075/pexels-photo-3031075.jpeg?h=650&w=940"}}]}
    page = pexels.parse_search(px, SourceOptions("https://x/", "large"), 1, 1)
    (h,) = page.hits
    assert (h.id, h.photographer, h.width, h.height) == ("3031075", "Simon Clayton", 3686, 4607)
    assert h.image_url.endswith("?h=650&w=940") and page.has_next and page.total == 10000
    assert not pexels.parse_search({**px, "next_page": None}, SourceOptions("https://x/", "large"), 1, 1).has_next
    pb = {"total": 4692, "totalHits": 500, "hits": [{
        "id": 195893, "pageURL": "https://pixabay.com/en/blossom-bloom-flower-195893/",
        "webformatURL": "https://pixabay.com/get/35bbf209e13e39d2_640.jpg",
        "largeImageURL": "https://pixabay.com/get/ed6a99fd0a76647_1280.jpg",
        "imageWidth": 4000, "imageHeight": 2250, "user_id": 48777, "user": "Josch13"}]}
    page = pixabay.parse_search(pb, SourceOptions("https://x/", "large"), 1, 200)
    (h,) = page.hits
    assert h.image_url.endswith("_1280.jpg") and h.photographer_url == "https://pixabay.com/users/Josch13-48777/"
    assert page.has_next and not pixabay.parse_search(pb, SourceOptions("https://x/", "large"), 3, 200).has_next
    assert pixabay.parse_search(pb, SourceOptions("https://x/", "webformat"), 1, 200).hits[0].image_url.endswith("_640.jpg")
    with pytest.raises(ValueError, match="pixabay: unexpected search answer"):
        pixabay.parse_search({"hits": [{"pageURL": "x"}]}, SourceOptions("https://x/", "large"), 1, 3)
    with pytest.raises(ValueError, match="pexels: unexpected search answer"):
        pexels.parse_search({"photos": "nope"}, SourceOptions("https://x/", "large"), 1, 3)


def test_sources_classify_errors():
    assert pixabay.classify_error(400, '[ERROR 400] "page" is out of valid range.') == "end"
    assert pixabay.classify_error(400, "[ERROR 400] Invalid API key. Note: This value is case-sensitive.") == "auth"
    assert pixabay.classify_error(400, '[ERROR 400] "key" is missing.') == "auth"
    assert pixabay.classify_error(400, '[ERROR 400] "per_page" is out of valid range.') == "other"
    assert pexels.classify_error(401, "") == "auth" and pexels.classify_error(500, "") == "other"
    assert pexels.reset_at("1750000000", 0.0) == 1750000000.0 and pixabay.reset_at("42", 100.0) == 142.0
    assert pexels.reset_at("soon", 0.0) is None


# -- recipes ------------------------------------------------------------------------------------

GOOD_PULL = '[pull]\n[pull.emotions]\nhappy = ["happy"]\n'


@pytest.mark.parametrize(
    "text, message",
    [
        ('colour = "red"\n' + GOOD_PULL, "unknown key 'colour'; allowed: name, description, data_dir, pull, extract"),
        ("[pull]\nsources = [\"pexels\"]\n", "[pull]: missing required key 'emotions'"),
        ("[pull]\n[pull.emotions]\n", "[pull.emotions]: no emotions"),
        ("[pull]\nper_pages = 3\n[pull.emotions]\nhappy = [\"x\"]\n", "[pull]: unknown key 'per_pages'; allowed: emotions"),
        ('[pull]\nper_page = "80"\n[pull.emotions]\nhappy = ["x"]\n', "[pull]: per_page must be an integer >= 1, got '80'"),
        ("[pull]\nmin_new_fraction = 2\n[pull.emotions]\nhappy = [\"x\"]\n", "min_new_fraction must be a number in [0, 1], got 2"),
        ('[pull]\nsources = ["flickr"]\n[pull.emotions]\nhappy = ["x"]\n', "sources has unknown value 'flickr'; allowed: pexels, pixabay"),
        ('[pull]\n[pull.emotions]\nhappy = []\n', "[pull.emotions]: happy must be a non-empty array of strings, got []"),
        ('[pull]\n[pull.emotions]\nangry = ["mad"]\nsad = ["Mad"]\n', "keyword 'Mad' is listed under both angry and sad"),
        ('[pull]\n[pull.emotions]\nHappy = ["x"]\n', "emotion label 'Happy' must be lower-case"),
        ('[pull]\nquery_template = "{kw} face"\n[pull.emotions]\nhappy = ["x"]\n', "query_template must be a string containing {keyword}"),
        ('[pull]\nquery_template = "{keyword} {mood}"\n[pull.emotions]\nhappy = ["x"]\n', "may only use {keyword} and {label}"),
        ('[pull]\n[pull.emotions]\nhappy = ["' + "x" * 101 + '"]\n', "is longer than pixabay's limit of 100 characters"),
        ('[pull.pexels]\nimage = "huge"\n[pull.emotions]\nhappy = ["x"]\n', "[pull.pexels]: image must be one of large, large2x, medium, original, got 'huge'"),
        ('[pull.pixabay]\nparams = { colour = "red" }\n[pull.emotions]\nhappy = ["x"]\n', "[pull.pixabay.params]: unknown key 'colour'; allowed: image_type"),
        ('[pull.pixabay]\nparams = { safesearch = "maybe" }\n[pull.emotions]\nhappy = ["x"]\n', "safesearch must be one of true, false, got 'maybe'"),
        ('[pull.pixabay]\nbase_url = "ftp://x"\n[pull.emotions]\nhappy = ["x"]\n', "base_url must be an http:// or https:// URL, got 'ftp://x'"),
        ('[pull.pixabay]\nkey = "abc"\n[pull.emotions]\nhappy = ["x"]\n', "[pull.pixabay]: unknown key 'key'; allowed: base_url, image, params"),
        ("pull = 3\n", "pull must be a table ([pull]), got 3"),
        ('name = "x"\n[extract]\n', "no [pull] table"),
        ("[pull\n", "is not valid TOML"),
    ],
)
def test_recipe_errors_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        PullOptions.from_recipe(load_recipe(path))
    assert message in str(e.value) and str(path) in str(e.value)


def test_recipe_basics(tmp_path):
    with pytest.raises(RecipeError, match="recipe .*nope.toml does not exist"):
        load_recipe(tmp_path / "nope.toml")
    path = tmp_path / "r.toml"
    path.write_text(GOOD_PULL)
    r = load_recipe(path)
    assert r.name == "r" and r.section("train") == {} and r.section("pull")["emotions"] == {"happy": ["happy"]}
    with pytest.raises(RecipeError, match=r"r.toml: no data_dir; add data_dir = \"DIR\" or give --data DIR"):
        r.data_dir()
    assert r.data_dir(tmp_path / "x") == tmp_path / "x"
    with pytest.raises(ValueError, match="unknown recipe section 'trian'"):
        r.section("trian")
    opts = PullOptions.from_recipe(r)
    assert opts.sources == ("pexels", "pixabay") and opts.query("happy", "happy") == "happy face"
    assert opts.source_opts("pixabay") == SourceOptions("https://pixabay.com/api/", "large")


def test_the_shipped_recipe_loads():
    path = Path(__file__).parent.parent / "training" / "recipes" / "emotions-stock.toml"
    r = load_recipe(path)
    opts = PullOptions.from_recipe(r)
    assert opts.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert all(len(kws) >= 4 for _, kws in opts.emotions)
    assert r.data_dir() == Path("data/emotions-stock")
    assert opts.source_opts("pexels").base_url == "https://api.pexels.com/v1/"


def test_with_overrides_checks_its_values(tmp_path):
    opts = options(tmp_path, None)
    with pytest.raises(ValueError, match="--limit must be >= 0"):
        with_overrides(opts, limit=-1)
    with pytest.raises(ValueError, match="unknown source 'bing'"):
        with_overrides(opts, sources=["bing"])


# -- command line -------------------------------------------------------------------------------


def test_cli_pull_against_the_fake(tmp_path, api, monkeypatch):
    for k, v in api.env().items():
        monkeypatch.setenv(k, v)
    data = tmp_path / "data"
    recipe = write_recipe(tmp_path / "r.toml", EMOTIONS, api, data_dir=data, per_page=3)
    r = runner.invoke(app, ["data", "pull", str(recipe), "--source", "pixabay", "--limit", "2"])
    assert r.exit_code == 0, r.output
    assert "happy" in r.output and "search requests: pixabay" in r.output
    rows = read_raw(data).to_pylist()
    assert {x["source"] for x in rows} == {"pixabay"} and len(rows) == 4
    r = runner.invoke(app, ["data", "pull", str(recipe), "--data", str(tmp_path / "other"), "-v"])
    assert r.exit_code == 0, r.output
    assert read_raw(tmp_path / "other").num_rows == len(expected_rows(api))
    assert all(k not in r.output for k in api.keys.values())


def test_cli_exit_codes_and_messages(tmp_path, api, monkeypatch):
    recipe = write_recipe(tmp_path / "r.toml", EMOTIONS, api, data_dir=tmp_path / "data", per_page=3, max_retries=0)
    monkeypatch.delenv("PEXELS_API_KEY", raising=False)
    monkeypatch.delenv("PIXABAY_API_KEY", raising=False)
    # Dry run: no keys needed, nothing fetched or written.
    r = runner.invoke(app, ["data", "pull", str(recipe), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "dry run: 8 of 8" in " ".join(r.output.split()) and "PEXELS_API_KEY NOT SET" in r.output
    assert not (tmp_path / "data").exists() and sum(api.search_requests.values()) == 0
    # A missing key: exit 2 naming the variable.
    monkeypatch.setenv("PIXABAY_API_KEY", api.keys["pixabay"])
    r = runner.invoke(app, ["data", "pull", str(recipe)])
    assert r.exit_code == 2 and "PEXELS_API_KEY is not set" in " ".join(r.output.split())
    # A failing source: exit 1, the rest is saved.
    monkeypatch.setenv("PEXELS_API_KEY", api.keys["pexels"])
    api.fail("pexels", 500, times=None)
    r = runner.invoke(app, ["data", "pull", str(recipe)])
    assert r.exit_code == 1, r.output
    out = " ".join(r.output.split())
    assert "pexels: HTTP 500" in out and "run the same command again to resume" in out
    assert read_raw(tmp_path / "data").num_rows == len(expected_rows(api, ["pixabay"]))
    assert all(k not in r.output for k in api.keys.values())
    # Bad arguments: exit 2 with the message, brackets and all.
    r = runner.invoke(app, ["data", "pull", str(recipe), "--source", "bing"])
    assert r.exit_code == 2 and "unknown source 'bing'" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[pull]\nper_pages = 1\n")
    r = runner.invoke(app, ["data", "pull", str(bad)])
    assert r.exit_code == 2 and "[pull]: unknown key 'per_pages'" in " ".join(r.output.split())


def test_fake_photos_are_distinct_pictures_of_real_faces():
    import numpy as np
    import torch

    from exe_stream.detect import DetectorOptions, detect_faces_rgb

    photos = face_photos(33)
    assert len({p.sha256 for p in photos}) == 33
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs: one thread is fastest and immune to a busy machine
    try:
        for p in photos:  # three rounds of variants of the 11 base pictures
            im = Image.open(io.BytesIO(p.data))
            assert im.format == "JPEG" and im.size == (p.width, p.height) and min(im.size) >= 100
            rgb = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
            assert len(detect_faces_rgb(rgb, DetectorOptions())) >= 1, p.origin  # what data extract needs
    finally:
        torch.set_num_threads(threads)


def test_cli_interrupt_exits_130_with_how_to_resume(tmp_path, api, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for k, v in api.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(pull_module, "pull", interrupted)
    recipe = write_recipe(tmp_path / "r.toml", EMOTIONS, api, data_dir=tmp_path / "data")
    r = runner.invoke(app, ["data", "pull", str(recipe)])
    assert r.exit_code == 130 and "run the same command again to resume" in " ".join(r.output.split())


def test_damaged_state_or_tables_are_refused_with_what_to_do(tmp_path, api, clock):
    data = tmp_path / "data"
    data.mkdir()
    (data / "pull_state.json").write_text("{not json")
    with pytest.raises(PullError, match=r"pull_state.json is not a pull state file .*; delete it to start the "
                                        r"streams afresh"):
        run(options(tmp_path, api), data, api, clock)
    (data / "pull_state.json").unlink()
    write_table(data / "raw.arrow", pa.table({"source": ["pexels"]}))
    with pytest.raises(PullError, match=r"raw.arrow lacks columns id, url, .*; it was not written by exe-stream data pull"):
        run(options(tmp_path, api), data, api, clock)
