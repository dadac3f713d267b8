"""A hostile review of the model catalog and of several models in one sweep: each test failed
before the fix it names."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from orchestrator import catalogsync
from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.models import catalog
from orchestrator.retry import RetryPolicy
from orchestrator.sweep import run_sweep

BASE = "https://model-api.example.com/v1"
SOURCE = "model-api.example.com"


def served(entries: list[dict[str, Any]]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        page = entries[offset:]
        return httpx.Response(200, json={"models": page, "total": len(entries)})

    return httpx.MockTransport(answer)


def sync(entries: list[dict[str, Any]]) -> catalogsync.Synced:
    return catalogsync.sync_catalog(
        base_url=BASE,
        token="test-token-0123",
        retry=RetryPolicy(attempts=1, wait=False),
        transport=served(entries),
    )


def cli_run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env)


def test_a_malformed_catalog_entry_breaks_neither_models_nor_models_show() -> None:
    good = {
        "model_id": "acme/good",
        "input_schema": {"properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
    }
    hostile = [
        {"model_id": "acme/schema-list", "input_schema": [1, 2]},
        {"model_id": "acme/props-list", "input_schema": {"properties": [1]}},
        {"model_id": "acme/prop-text", "input_schema": {"properties": {"a": "text"}}},
        {"model_id": "acme/enum-int", "input_schema": {"properties": {"a": {"enum": 5}}}},
        {"model_id": "acme/req-text", "input_schema": {"properties": {}, "required": 7}},
    ]
    sync([good, *hostile])
    env = {"RUNCOMFY_MODEL_API_BASE": BASE}
    listed = cli_run("models", env=env)
    assert listed.exit_code == 0, listed.output
    assert "acme/good" in listed.output
    assert "acme/enum-int" in listed.output
    for entry in hostile:
        shown = cli_run("models", "show", entry["model_id"], env=env)
        assert shown.exit_code == 0, shown.output
        assert shown.output.startswith(entry["model_id"])
    assert catalog.lookup("acme/good", SOURCE) is not None


def test_two_models_never_share_a_short_label() -> None:
    from orchestrator.naming import model_labels

    for ids in (["p/a:b", "p/a?b"], ["acme/v 1", "acme/v\x001"], ["a/x*y", "a/x|y", "a/x<y"]):
        labels = model_labels(ids)
        assert len(set(labels)) == len(ids), (ids, labels)
        assert all("/" not in label and "\x00" not in label for label in labels)
    assert model_labels(["wan-ai/wan-3.0/image-to-video", "acme/x/y"]) == ["wan-3.0", "x"]


def test_the_unknown_model_line_of_a_user_without_a_token_says_what_works(tmp_path: Any) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("model: wan-ai/wan-3.0/image-to-video\ninputs: {prompt: hi}\n")
    result = cli_run("plan", str(spec))
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line
    # `models sync` alone would fail at once with "no API token": the line says the token.
    assert "set RUNCOMFY_API_TOKEN and run `comfysweep models sync`" in line
    # and that the model is one the emulator serves, offline.
    assert (
        "the emulator serves it (`comfysweep models sync --emulator`, then add --emulator)" in line
    )
    with_token = cli_run("plan", str(spec), env={"RUNCOMFY_API_TOKEN": "tok-0123456789"})
    assert "; run `comfysweep models sync`" in with_token.stderr


T2I = "google/nano-banana-2-lite/text-to-image"
T2V = "bytedance/seedance-2.5/text-to-video/1080p"
AUDIO = "acestep-ai/ace-step-1.5/text-to-audio"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        catalogsync.sync_catalog(base_url=emu.base_url, token=emu.token)
        yield emu


def billed(emu: Emulator) -> tuple[Counter[str], float]:
    ledger = emu.ledger()
    assert set(ledger["submissions_by_input"].values()) <= {1}  # nothing paid twice
    jobs = ledger["jobs"]
    return Counter(j["model_id"] for j in jobs), float(ledger["billed_usd"])


def capped(tmp_path: Path) -> Path:
    spec = tmp_path / "cap.yaml"
    spec.write_text(
        f"name: cap\nmodel:\n  - {T2I}\n  - {{id: {T2V}, inputs: {{duration: 4}}}}\n"
        "axes:\n  prompt: [a fox, a cat, a dog]\n"
        f"run: {{output: {tmp_path / 'out'}, poll_interval: 0.02, order: grid, max_cost: 0.10}}\n"
    )
    return spec


def test_a_capped_sweep_of_several_models_reserves_each_job_at_its_own_model_price(
    tmp_path: Path, emulator: Emulator
) -> None:
    # A text-to-image job ($0.02 an output) has inputs that fit the text-to-video schema too:
    # it was reserved at the video's price ($0.12 x 5 s), so a $0.10 cap ran nothing at all.
    spec = capped(tmp_path)
    report = run_sweep(spec, base_url=emulator.base_url, token=emulator.token)
    assert report.stop_kind == "budget", report
    models, total = billed(emulator)
    assert models == {T2I: 3}
    assert total <= 0.10 + 1e-9
    assert "about $1.44" in (report.stop_reason or "")  # the three video jobs left, at $0.48


def test_a_sweep_run_on_the_emulator_is_read_by_commands_without_an_emulator_flag(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = tmp_path / "img.yaml"
    spec.write_text(
        f"name: img\nmodel:\n  - {T2I}\n  - {{id: {AUDIO}, map: {{prompt: tags}}}}\n"
        f"inputs: {{prompt: a fox}}\nrun: {{output: {tmp_path / 'out'}, poll_interval: 0.02}}\n"
    )
    assert run_sweep(spec, base_url=emulator.base_url, token=emulator.token).complete
    # status, failures, runs, report, export have no --emulator: they said "add --emulator".
    for args in (
        ["status", str(spec)],
        ["failures", str(spec)],
        ["runs", str(spec)],
        ["report", str(spec)],
        ["export", str(spec), str(tmp_path / "ex"), "--format", "csv"],
    ):
        result = cli_run(*args)
        assert result.exit_code == 0, (args, result.output)
    shown = cli_run("status", str(spec))
    assert f"  {T2I}: 1 done" in shown.output.splitlines()


def test_cancel_and_retry_where_name_a_model(tmp_path: Path, emulator: Emulator) -> None:
    spec = capped(tmp_path)
    run_sweep(spec, base_url=emulator.base_url, token=emulator.token)
    where = f"model == '{T2V}'"
    result = cli_run("cancel", str(spec), "--emulator", "--where", where)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("3 pending cancelled")
    result = cli_run("retry", str(spec), "--cancelled", "--where", where)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("3 job(s) back to pending")
    typo = cli_run("cancel", str(spec), "--where", "modl == 'x'")
    assert "no input named 'modl' (did you mean 'model'?)" in typo.stderr


def test_a_model_id_that_is_no_id_never_reaches_a_url_the_cache_or_a_submit(
    tmp_path: Path, emulator: Emulator
) -> None:
    # "../../v2/balance" was POSTed (normalised to /v2/balance, with the token) under schema:
    # server, and GET before the spec loaded; a catalog's NUL, 10 kB or ".." ids were cached.
    spec = tmp_path / "dd.yaml"
    spec.write_text(
        'name: dd\nmodel: "../../v2/balance"\nschema: server\ninputs: {prompt: hi}\n'
        f"run: {{output: {tmp_path / 'out'}, poll_interval: 0.02}}\n"
    )
    result = cli_run("run", str(spec), "--emulator")
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(
        "model: '../../v2/balance' is not a model id (segments of letters, digits, '.', '_' "
        "and '-' separated by '/', such as owner/model)"
    )
    assert catalogsync.refresh_unseen(spec, base_url=emulator.base_url, token=emulator.token) == []
    good = {"model_id": "acme/good", "input_schema": {"properties": {}}}
    bad = ["../../etc/passwd", "acme/n\x00ul", "acme/" + "L" * 10_000, "acme//x", "/acme/x"]
    sync([good, *({"model_id": b, "input_schema": {"properties": {}}} for b in bad)])
    cache = catalog.load(SOURCE)
    assert cache is not None
    assert list(cache.entries) == ["acme/good"]


def test_plan_after_an_axis_is_added_says_what_is_left_of_the_new_sweep(
    tmp_path: Path, emulator: Emulator
) -> None:
    # plan said "left: 0 of 1 job(s); estimated cost: $0.00" for a spec of three jobs, one done:
    # it read the store only, which holds no job of the axis added since the run.
    spec = tmp_path / "grow.yaml"
    head = f"name: grow\nmodel: {T2I}\ninputs: {{prompt: a fox}}\n"
    run = f"run: {{output: {tmp_path / 'out'}, poll_interval: 0.02}}\n"
    spec.write_text(head + run)
    assert run_sweep(spec, base_url=emulator.base_url, token=emulator.token).complete
    spec.write_text(head + 'axes: {aspect_ratio: [auto, "1:1", "4:3"]}\n' + run)
    result = cli_run("plan", str(spec), "--emulator", "--json")
    assert result.exit_code == 0, result.output
    left = json.loads(result.output)["left"]
    assert (left["total"], left["done"], left["pending"]) == (3, 1, 2)
    assert left["cost_usd"] == pytest.approx(0.04)
    assert run_sweep(spec, base_url=emulator.base_url, token=emulator.token).complete
    assert billed(emulator)[0] == {T2I: 3}  # the done job was kept: two more paid


def test_show_of_a_job_of_a_sweep_of_several_models_names_its_model(
    tmp_path: Path, emulator: Emulator
) -> None:
    from orchestrator.store import Store

    spec = capped(tmp_path)
    run_sweep(spec, base_url=emulator.base_url, token=emulator.token)
    with Store.open(tmp_path / "out" / "cap" / "comfysweep.db", readonly=True) as db:
        job = next(j for j in db.jobs() if j.model_id == T2V)
    result = cli_run("show", job.key[:10], str(spec))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[2] == f"  model      {T2V}"


def test_export_hf_of_outputs_of_several_kinds_is_refused_not_a_dataset_without_files(
    tmp_path: Path, emulator: Emulator
) -> None:
    # An image and an audio model in one sweep: `export` wrote an image folder holding .wav files
    # too, and `datasets.load_dataset` gave every row, the images' too, no file.
    spec = tmp_path / "mix.yaml"
    spec.write_text(
        f"name: mix\nmodel:\n  - {T2I}\n  - {{id: {AUDIO}, map: {{prompt: tags}}}}\n"
        f"inputs: {{prompt: a fox}}\nrun: {{output: {tmp_path / 'out'}, poll_interval: 0.02}}\n"
    )
    assert run_sweep(spec, base_url=emulator.base_url, token=emulator.token).complete
    dest = tmp_path / "hf"
    result = cli_run("export", str(spec), str(dest))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: an hf folder holds outputs of one kind; this sweep made audio and image: "
        "export with --format parquet, csv or webdataset"
    )
    assert not dest.exists()
    result = cli_run("export", str(spec), str(tmp_path / "csv"), "--format", "csv")
    assert result.exit_code == 0, result.output


def test_a_kept_price_is_never_another_models(tmp_path: Path, emulator: Emulator) -> None:
    # The store kept the first model's price ($0.02 an image) without its model: with the model
    # list reordered, plan priced the video jobs, now first, at $0.02 each (a run without a
    # catalog price would have reserved them so, and paid past its cap).
    spec = capped(tmp_path)
    run_sweep(spec, base_url=emulator.base_url, token=emulator.token)
    text = spec.read_text()
    first, second = f"  - {T2I}\n", f"  - {{id: {T2V}, inputs: {{duration: 4}}}}\n"
    spec.write_text(text.replace(first + second, second + first))
    result = cli_run("plan", str(spec), "--emulator", "--json")
    assert result.exit_code == 0, result.output
    left = json.loads(result.output)["left"]
    assert left["pending"] == 3
    assert left["cost_usd"] == pytest.approx(1.44)


def test_a_cache_another_process_rewrote_in_the_same_tick_is_read_again() -> None:
    # The parsed cache was kept by (mtime, size): another process's sync renaming a cache of the
    # same size in the same clock tick (a coarse file system clock) went unseen.
    import os

    first = [{"model_id": "acme/aaaa", "input_schema": {"properties": {}}}]
    cache = catalog.save(SOURCE, BASE, first, read_at="2026-01-01T00:00:00+00:00")
    assert catalog.lookup("acme/aaaa", SOURCE) is not None
    stat = cache.path.stat()
    other = cache.path.with_suffix(".other")
    text = cache.path.read_text().replace("acme/aaaa", "acme/bbbb")
    other.write_text(text)
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, cache.path)  # what a second process's sync does
    assert catalog.lookup("acme/bbbb", SOURCE) is not None
    assert catalog.lookup("acme/aaaa", SOURCE) is None


def test_a_sync_while_a_run_adds_a_model_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    # `run` adding a model (read the cache, add, write) while `models sync` wrote the whole
    # catalog: the add wrote back the cache it had read, and the sync's new catalog was lost.
    import threading

    entry = {"model_id": "acme/old", "input_schema": {"properties": {}}}
    catalog.save(SOURCE, BASE, [entry])
    synced = [entry | {"model_id": f"acme/new-{i}"} for i in range(3)]
    sync_done = threading.Event()
    real_load = catalog.load

    def load_then_sync(source: str | None = None) -> Any:
        found = real_load(source)
        if not sync_done.is_set() and threading.current_thread() is threading.main_thread():
            other = threading.Thread(
                target=lambda: (catalog.save(SOURCE, BASE, synced), sync_done.set())
            )
            other.start()
            sync_done.wait(0.5)  # without the lock the sync finishes now; with it, it waits
            load_then_sync.thread = other  # type: ignore[attr-defined]
        return found

    monkeypatch.setattr(catalog, "load", load_then_sync)
    catalog.add(SOURCE, BASE, entry | {"model_id": "acme/added"})
    load_then_sync.thread.join(10)  # type: ignore[attr-defined]
    monkeypatch.setattr(catalog, "load", real_load)
    cache = catalog.load(SOURCE)
    assert cache is not None
    assert {"acme/new-0", "acme/new-1", "acme/new-2"} <= set(cache.entries)


def test_a_price_per_second_that_cannot_price_an_image_job_says_so(
    tmp_path: Path, emulator: Emulator
) -> None:
    # The stop told a user who gave --price 0.05/second to "give one: ... --price 0.05/second".
    spec = capped(tmp_path)
    report = run_sweep(spec, base_url=emulator.base_url, token=emulator.token, price="0.05/second")
    reason = report.stop_reason or ""
    assert reason.startswith("no price known for the next job, so the budget cannot be kept")
    assert "the --price given does not price it" in reason
    assert "give one" not in reason
    assert billed(emulator) == (Counter(), 0.0)


def test_a_catalog_s_text_cannot_forge_lines_or_drive_the_terminal() -> None:
    entry = {
        "model_id": "acme/esc",
        "display_name": "Nice\x1b]0;pwned\x07\nFAKE LINE",
        "input_schema": {"properties": {"p\x1b[31m": {"type": "string", "default": "x\ny"}}},
    }
    sync([entry])
    env = {"RUNCOMFY_MODEL_API_BASE": BASE}
    for args in (["models"], ["models", "show", "acme/esc"]):
        result = cli_run(*args, env=env)
        assert result.exit_code == 0, result.output
        assert "FAKE LINE" not in result.output.splitlines()
        assert not any(line.startswith("FAKE") for line in result.output.splitlines())
        assert "\x1b" not in result.output
        assert "\x07" not in result.output
