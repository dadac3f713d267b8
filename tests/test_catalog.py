"""The model catalog: ``models sync`` reads every page into the cache, ``plan``/``run`` validate
offline against it, ``run`` reads the entry of a model it has never seen, ``models`` lists and
shows, and prices per second of duration or per output estimate each model's jobs."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from orchestrator import budget, catalogsync, prices
from orchestrator.cli import cli
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import SpecError
from orchestrator.grid import count_jobs
from orchestrator.models import Model, catalog, get_model
from orchestrator.retry import RetryPolicy
from orchestrator.spec import load_spec
from orchestrator.sweep import Overrides, run_sweep

BASE = "https://model-api.example.com/v1"
WAN3 = "wan-ai/wan-3.0/image-to-video"
AUDIO = "acestep-ai/ace-step-1.5/text-to-audio"
T2I = "google/nano-banana-2-lite/text-to-image"
EDIT = "google/nano-banana-2-lite/edit"
NO_WAIT = RetryPolicy(attempts=3, wait=False)


_ASPECT = {"type": "string", "default": "auto", "enum": ["auto", "16:9", "1:1", "9:16"]}
# Four entries of shared/reference/runcomfy-catalog-sample.json (RunComfy's own schemas), priced.
SAMPLE: list[dict[str, Any]] = [
    {
        "model_id": WAN3,
        "display_name": "Wan 3.0 I2V",
        "output": "video",
        "base_price_usd": 0.1,
        "price_unit": "second",
        "input_schema": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "default": ""},
                "aspect_ratio": {
                    "type": "string",
                    "default": "adaptive",
                    "enum": ["adaptive", "16:9", "9:16", "1:1", "4:3", "3:4"],
                },
                "resolution": {
                    "type": "string",
                    "default": "720p",
                    "enum": ["480p", "720p", "1080p"],
                },
                "duration": {"type": "integer", "default": 5, "minimum": 2, "maximum": 30},
                "enable_audio": {"type": "boolean", "default": True},
                "prompt_extend": {"type": "boolean", "default": True},
                "seed": {"type": "integer", "default": 0, "minimum": 0, "maximum": 2147483647},
                "image_url": {"type": "string", "format": "image_uri"},
                "end_image_url": {"type": "string", "format": "image_uri"},
            },
            "required": ["prompt", "image_url"],
        },
    },
    {
        "model_id": T2I,
        "display_name": "Nano Banana 2 Lite T2I",
        "output": "image",
        "base_price_usd": 0.04,
        "price_unit": "output",
        "input_schema": {
            "type": "object",
            "properties": {"prompt": {"type": "string", "default": ""}, "aspect_ratio": _ASPECT},
            "required": ["prompt"],
        },
    },
    {
        "model_id": EDIT,
        "display_name": "Nano Banana 2 Lite Edit",
        "output": "image",
        "base_price_usd": 0.04,
        "price_unit": "output",
        "input_schema": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "default": ""},
                "aspect_ratio": _ASPECT,
                "image_urls": {
                    "type": "array",
                    "format": "image_uris",
                    "minItems": 1,
                    "maxItems": 10,
                },
            },
            "required": ["prompt", "image_urls"],
        },
    },
    {
        "model_id": AUDIO,
        "display_name": "ACE-Step 1.5 T2A",
        "output": "audio",
        "base_price_usd": 0.0003,
        "price_unit": "second",
        "input_schema": {
            "type": "object",
            "properties": {
                "tags": {"type": "string", "description": "comma-separated style tags"},
                "lyrics": {"type": "string", "default": "[instrumental]"},
                "duration": {"type": "integer", "default": 20, "minimum": 1, "maximum": 240},
                "seed": {"type": "integer", "default": 0, "minimum": 0, "maximum": 2147483647},
            },
            "required": ["tags"],
        },
    },
]


def sample_entries() -> list[dict[str, Any]]:
    return copy.deepcopy(SAMPLE)


def numbered(n: int) -> list[dict[str, Any]]:
    return [
        {
            "model_id": f"acme/model-{i:03d}",
            "display_name": f"Model {i}",
            "categories": ["text-to-image"],
            "input_schema": {"type": "object", "properties": {"prompt": {"type": "string"}}},
            "base_price_usd": 0.01,
            "price_unit": "output",
        }
        for i in range(n)
    ]


class Catalog:
    """A fake ``GET /v1/models``: pages of ``models``, with scripted quirks."""

    def __init__(
        self,
        models: list[dict[str, Any]],
        *,
        cap: int = 500,
        ignore_offset: bool = False,
        total: Callable[[int], int] | None = None,
        fail_first: bool = False,
    ) -> None:
        self.models, self.cap, self.ignore_offset = models, cap, ignore_offset
        self.total = total or (lambda _: len(self.models))
        self.fail_first = fail_first
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_first and len(self.requests) == 1:
            return httpx.Response(503, text="busy")
        assert request.url.path == "/v1/models"
        assert request.url.params["include_schema"] == "true"
        limit = min(int(request.url.params["limit"]), self.cap)
        offset = 0 if self.ignore_offset else int(request.url.params["offset"])
        page = self.models[offset : offset + limit]
        total = self.total(len(self.requests))
        return httpx.Response(
            200, json={"models": page, "total": total, "limit": limit, "offset": offset}
        )


def sync(server: Catalog, **kwargs: Any) -> catalogsync.Synced:
    return catalogsync.sync_catalog(
        base_url=BASE,
        token="test-token-0123",
        retry=NO_WAIT,
        transport=httpx.MockTransport(server),
        **kwargs,
    )


def cached_ids(source: str = "model-api.example.com") -> list[str]:
    cache = catalog.load(source)
    assert cache is not None
    return list(cache.entries)


# -- paging ----------------------------------------------------------------------------------


def test_sync_reads_every_page_of_a_catalog_larger_than_a_page() -> None:
    server = Catalog(numbered(250))
    synced = sync(server, limit=100)
    assert [r.url.params["offset"] for r in server.requests] == ["0", "100", "200"]
    assert (synced.models, synced.total, synced.pages, synced.priced) == (250, 250, 3, 250)
    assert cached_ids() == [f"acme/model-{i:03d}" for i in range(250)]
    data = json.loads(synced.path.read_text())
    assert data["api_base"] == BASE
    assert data["source"] == "model-api.example.com"
    assert data["read_at"] == synced.read_at
    assert prices.last_price("acme/model-007", api_base=BASE) is not None
    assert synced.line().startswith(f"read 250 model(s) from {BASE} in 3 page(s), 250 with a price")


def test_a_page_served_twice_is_not_read_again_nor_duplicated() -> None:
    server = Catalog(numbered(250), ignore_offset=True)  # every page is the first
    synced = sync(server, limit=100)
    assert len(server.requests) == 2  # the second page brought nothing new: stop
    assert synced.models == 100
    assert len(set(cached_ids())) == 100
    assert "(the catalog said 250)" in synced.line()


def test_short_pages_and_a_changing_total_are_read_to_the_end() -> None:
    models = numbered(120)
    server = Catalog(models, cap=30, total=lambda n: 100 if n == 1 else 120)  # it grew
    synced = sync(server, limit=100)
    assert [r.url.params["offset"] for r in server.requests] == ["0", "30", "60", "90"]
    assert synced.models == 120
    assert synced.total == 120


def test_an_empty_page_ends_the_read_whatever_the_total_says() -> None:
    server = Catalog(numbered(150), total=lambda _: 10_000)
    synced = sync(server, limit=100)
    assert len(server.requests) == 3  # 100, 50, then an empty page
    assert synced.models == 150


def test_a_failed_page_is_retried_as_every_read() -> None:
    server = Catalog(numbered(5), fail_first=True)
    assert sync(server).models == 5
    assert len(server.requests) == 2


def test_an_empty_catalog_leaves_the_cache_as_it_was() -> None:
    sync(Catalog(numbered(3)))
    with pytest.raises(Exception, match="listed no models: the cache was left as it was"):
        sync(Catalog([]))
    assert len(cached_ids()) == 3


def test_the_cache_is_written_whole_or_not_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    sync(Catalog(numbered(3)))
    path = catalog.cache_path("model-api.example.com")
    before = path.read_bytes()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(catalog.json, "dump", broken)
    with pytest.raises(OSError, match="No space left"):
        sync(Catalog(numbered(7)))
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


# -- the source in force ---------------------------------------------------------------------


def test_any_model_api_on_this_machine_is_one_source_emulator() -> None:
    assert catalog.source_of("http://127.0.0.1:40123/v1") == catalog.EMULATOR
    assert catalog.source_of("http://localhost:8000/v1") == catalog.EMULATOR
    assert catalog.source_of(BASE) == "model-api.example.com"
    assert catalog.source_of() == "model-api.runcomfy.net"
    with catalog.using(catalog.EMULATOR):
        assert catalog.source_of() == catalog.EMULATOR
    info = budget.Price(0.2, "second")
    prices.remember_price(WAN3, info, api_base="http://127.0.0.1:40123/v1")
    assert prices.last_price(WAN3, api_base="http://127.0.0.1:51234/v1") is not None


# -- validation offline ----------------------------------------------------------------------


@pytest.fixture
def emulated_cache() -> list[dict[str, Any]]:
    """The sample catalog cached for the emulator (as `models sync --emulator` will leave it)."""
    entries = sample_entries()
    catalog.save(catalog.EMULATOR, "http://127.0.0.1:1/v1", entries)
    infos = {e["model_id"]: budget.Price(e["base_price_usd"], e["price_unit"]) for e in entries}
    prices.remember_prices(infos, api_base="http://127.0.0.1:1/v1")
    return entries


def write(tmp_path: Path, body: str, name: str = "s") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body.replace("OUT", str(tmp_path / "results")))
    return path


WAN3_SPEC = f"""\
name: w3
model: {WAN3}
inputs:
  prompt: a fox
  image_url: https://example.com/fox.png
axes:
  duration: [2, 3]
run:
  output: OUT
  poll_interval: 0.02
"""


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any HTTP request fails the test."""

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("plan used the network")

    monkeypatch.setattr(httpx.AsyncClient, "send", refuse)
    monkeypatch.setattr(httpx.Client, "send", refuse)


def test_plan_emulator_validates_and_prices_offline_from_the_cache(
    tmp_path: Path, emulated_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline(monkeypatch)
    spec = write(tmp_path, WAN3_SPEC)
    result = CliRunner().invoke(cli, ["plan", str(spec), "--emulator", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["jobs"] == 2
    assert summary["estimated_cost_usd"] == pytest.approx(0.1 * (2 + 3))


def test_a_model_the_cache_does_not_know_is_one_line_naming_models_sync(
    tmp_path: Path, emulated_cache: Any
) -> None:
    spec = write(tmp_path, WAN3_SPEC.replace(WAN3, "wan-ai/wan-3.0/image-to-vid"))
    result = CliRunner().invoke(cli, ["plan", str(spec), "--emulator"])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line
    assert "unknown model 'wan-ai/wan-3.0/image-to-vid' (did you mean " in line
    assert f"'{WAN3}'" in line
    assert "run `comfysweep models sync --emulator`" in line
    # The emulator's cache is not RunComfy's: without --emulator, it says where the model is.
    result = CliRunner().invoke(cli, ["plan", str(write(tmp_path, WAN3_SPEC, "real"))])
    assert result.exit_code == 1
    assert "no model catalog cached for model-api.runcomfy.net yet" in result.stderr
    assert "it is cached for emulator (add --emulator)" in result.stderr
    assert "run `comfysweep models sync`" in result.stderr


def test_schema_server_needs_no_cache(tmp_path: Path) -> None:
    spec = write(tmp_path, WAN3_SPEC.replace("name: w3", "name: w3\nschema: server"))
    assert load_spec(spec).model == WAN3


def test_the_shipped_model_needs_no_cache() -> None:
    assert get_model("community/wan-2-2/vace-fun", strict=True).friendly_names
    with pytest.raises(SpecError, match="no model catalog cached"):
        get_model(WAN3, strict=True)


def test_a_report_of_a_finished_sweep_finds_any_cached_schema(emulated_cache: Any) -> None:
    assert get_model(AUDIO).output_kind == "audio"  # not strict: any source's entry
    assert get_model("nobody/knows").has_schema is False


# -- run reads what it has never seen --------------------------------------------------------


def test_run_reads_the_entry_of_a_model_it_has_never_seen(tmp_path: Path) -> None:
    entry = next(e for e in sample_entries() if e["model_id"] == WAN3)
    spec = write(tmp_path, WAN3_SPEC)
    with Emulator(EmulatorConfig(speed=2000.0)) as emu:
        assert emu.state is not None
        emu.state.models[WAN3] = Model.from_catalog(entry)
        report = run_sweep(spec, base_url=emu.base_url, token=emu.token)
    assert report.counts["done"] == 2
    assert WAN3 in cached_ids(catalog.EMULATOR)
    assert catalog.lookup(WAN3, catalog.EMULATOR) is not None


def test_a_model_the_api_does_not_know_either_is_the_same_one_line(tmp_path: Path) -> None:
    spec = write(tmp_path, WAN3_SPEC.replace(WAN3, "acme/never-served/image-to-video"))
    with Emulator(EmulatorConfig(speed=2000.0)) as emu:
        with pytest.raises(SpecError, match=r"unknown model .*comfysweep models sync --emulator"):
            run_sweep(spec, base_url=emu.base_url, token=emu.token)
        assert emu.state is not None
        assert emu.ledger()["jobs"] == []


def test_the_spec_model_ids_are_read_in_both_shapes(tmp_path: Path) -> None:
    one = write(tmp_path, "model: a/b\n", "one")
    many = write(tmp_path, "model: [a/b, {id: c/d, map: {image: image_url}}, a/b]\n", "many")
    assert catalogsync.spec_model_ids(one) == ["a/b"]
    assert catalogsync.spec_model_ids(many) == ["a/b", "c/d"]
    assert catalogsync.spec_model_ids(write(tmp_path, "model: [\n", "bad")) == []


# -- models, models show ---------------------------------------------------------------------


def models(*args: str) -> Any:
    return CliRunner().invoke(cli, ["models", *args])


def test_models_lists_the_shipped_models_and_says_how_to_sync() -> None:
    result = models()
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == (
        "no model catalog cached for model-api.runcomfy.net: run `comfysweep models sync` "
        "(listing only the models shipped with comfysweep)"
    )
    name = "Wan 2.2 VACE-Fun A14B image-to-video"
    assert lines[1].split("  ") == ["community/wan-2-2/vace-fun", name, "video", "price unknown"]


def test_models_lists_the_cache_with_prices_and_filters(emulated_cache: Any) -> None:
    result = models("--emulator")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("model catalog of http://127.0.0.1:1/v1, read ")
    assert lines[0].endswith("(cached for emulator)")
    assert len(lines) == 1 + 5 + 1  # vace-fun, shipped, and the four cached
    assert lines[-1] == "5 model(s); `comfysweep models show ID` prints one's inputs"
    audio = models("--emulator", "--output", "audio").output.splitlines()
    assert [line.split()[0] for line in audio[1:-1]] == [AUDIO]
    assert audio[1].split()[-2:] == ["audio", "$0.0003/second"]
    found = models("--emulator", "--search", "NANO", "--json")
    rows = json.loads(found.output)
    assert [r["model_id"] for r in rows] == [EDIT, T2I]
    assert rows[1] | {"display_name": ""} == {
        "model_id": T2I,
        "display_name": "",
        "output": "image",
        "price_usd": 0.04,
        "price_unit": "output",
        "shipped": False,
    }


def test_models_show_prints_each_input(emulated_cache: Any) -> None:
    result = models("show", EDIT, "--emulator")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(EDIT)
    assert lines[1] == "output: image; price: $0.04/output"
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines[3:]}
    assert rows["image_urls"] == "array  image list, at most 10 items  required"
    assert rows["prompt"].startswith("string  required")
    audio = models("--emulator", "show", AUDIO).output.splitlines()
    duration = next(line for line in audio if line.split()[0] == "duration")
    assert duration.split(maxsplit=1)[1] == "integer  optional  1..240  default 20"


def test_models_show_of_an_unknown_id_is_one_line_with_suggestions(emulated_cache: Any) -> None:
    result = models("show", "google/nano-banana-2-lite/edits", "--emulator")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert f"(did you mean '{EDIT}'" in result.stderr
    assert "run `comfysweep models sync --emulator`" in result.stderr


# -- prices per unit -------------------------------------------------------------------------


def test_a_job_is_priced_per_second_of_its_duration_or_per_output(emulated_cache: Any) -> None:
    audio = catalog.lookup(AUDIO, catalog.EMULATOR)
    image = catalog.lookup(T2I, catalog.EMULATOR)
    assert audio is not None
    assert image is not None
    assert budget.per_job(audio, 0.01, "second", {"tags": "x", "duration": 30}) == 0.3
    assert budget.per_job(audio, 0.01, "second", {"tags": "x"}) == pytest.approx(0.2)  # default
    assert budget.per_job(audio, 0.01, "second", {"duration": "5s"}) == pytest.approx(0.05)
    assert budget.per_job(audio, 0.01, "second", {"duration": "auto"}) is None
    assert budget.per_job(image, 0.04, "output", {"prompt": "x"}) == 0.04
    assert budget.per_job(image, 0.04, "second", {"prompt": "x"}) is None


def test_plan_estimates_audio_by_its_durations_and_images_by_the_output(
    tmp_path: Path, emulated_cache: Any
) -> None:
    sound = write(
        tmp_path,
        f"name: a\nmodel: {AUDIO}\ninputs: {{tags: rain}}\naxes:\n  duration: [10, 30]\n"
        "  seed: [1, 2, 3]\nrun: {output: OUT}\n",
        "audio",
    )
    still = write(
        tmp_path,
        f"name: i\nmodel: {T2I}\naxes:\n  prompt: [a, b, c, d]\nrun: {{output: OUT}}\n",
        "image",
    )
    defaulted = write(
        tmp_path, f"name: d\nmodel: {AUDIO}\naxes:\n  tags: [a, b]\nrun: {{output: OUT}}\n", "d"
    )
    with catalog.using(catalog.EMULATOR):
        for path, cost in [(sound, 0.0003 * 40 * 3), (still, 0.04 * 4), (defaulted, 0.0003 * 40)]:
            spec = load_spec(path)
            guess = prices.estimate(spec, count_jobs(spec))
            assert guess.cost_usd == pytest.approx(cost), guess.cost_note


# -- the emulated catalog, whatever it lists ---------------------------------------------------


def _value_for(prop: dict[str, Any]) -> Any:
    """A value that fits a schema field that takes no media."""
    if "enum" in prop:
        return prop["enum"][-1]
    kind = prop.get("type")
    if kind in ("integer", "number", "float"):
        return prop.get("default", prop.get("minimum", 1))
    if kind == "boolean":
        return True
    if kind == "object":
        return {k: _value_for(v) for k, v in prop.get("properties", {}).items()}
    return "a fox"


def test_every_emulated_model_plans_offline_after_models_sync_emulator(tmp_path: Path) -> None:
    """`models sync --emulator`, then `models show` and `plan --emulator` of every model it lists
    (the emulator's catalog grows: this holds whatever it serves)."""
    result = models("sync", "--emulator")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("read ")
    assert "cached for emulator" in result.output
    cache = catalog.load(catalog.EMULATOR)
    assert cache is not None
    assert "community/wan-2-2/vace-fun" in cache.entries
    for n, model_id in enumerate(sorted(cache.entries)):
        shown = models("show", model_id, "--emulator")
        assert shown.exit_code == 0, shown.output
        assert shown.output.startswith(model_id)
        with catalog.using(catalog.EMULATOR):
            model = get_model(model_id, strict=True)
            price = prices.last_price(model_id)
        required = {
            k: ["https://example.com/a.png"]
            if k in model.media_lists
            else "https://example.com/a.png"
            if model.media_kind(k)
            else _value_for(dict(model.properties[k]))
            for k in model.required
        }
        body = {"name": f"m{n}", "model": model_id, "inputs": required, "run": {"output": "OUT"}}
        spec = write(tmp_path, json.dumps(body), f"m{n}")
        planned = CliRunner().invoke(cli, ["plan", str(spec), "--emulator", "--json"])
        assert planned.exit_code == 0, (model_id, planned.output)
        summary = json.loads(planned.output)
        assert summary["jobs"] == 1
        assert price is not None, model_id
        # Known unless priced by the second and the duration is not a number ("auto").
        priced = price.price_unit == "output" or budget.output_seconds(model, model.defaults())
        assert (summary["estimated_cost_usd"] is not None) == bool(priced), (model_id, summary)


def test_run_emulator_reads_an_emulated_model_it_has_never_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --emulator` with no cache: the entry comes from the embedded emulator's catalog
    (here given one more model), is cached for `emulator`, and the sweep runs against it."""
    from orchestrator.emulator import app

    # Before the emulator served its catalog of ten models, it served the shipped ones only.
    shipped = getattr(app, "known_models", None)
    if shipped is not None and WAN3 not in {m.model_id for m in shipped()}:
        extra = Model.from_catalog(sample_entries()[0])
        monkeypatch.setattr(app, "known_models", lambda: [*shipped(), extra])
    report = run_sweep(write(tmp_path, WAN3_SPEC), emulator=EmulatorConfig(speed=2000.0))
    assert report.counts["done"] == 2
    assert catalog.lookup(WAN3, catalog.EMULATOR) is not None
    assert models().output.splitlines()[0].endswith("the emulator's is cached: add --emulator")


def test_the_budget_reserves_each_job_by_its_own_duration(tmp_path: Path) -> None:
    """At $0.1 a second, the 2 s job ($0.20) fits a $0.25 cap and the 3 s one ($0.30) never does:
    the reservation before each submit reads the job's duration (it had no frames/fps)."""
    entry = next(e for e in sample_entries() if e["model_id"] == WAN3)
    spec = write(
        tmp_path, WAN3_SPEC.replace("poll_interval: 0.02", "poll_interval: 0.02\n  concurrency: 1")
    )
    with Emulator(EmulatorConfig(speed=2000.0)) as emu:
        assert emu.state is not None
        emu.state.models[WAN3] = Model.from_catalog(entry)
        report = run_sweep(
            spec,
            base_url=emu.base_url,
            token=emu.token,
            price="0.1/second",
            overrides=Overrides(max_cost=0.25),
        )
        billed = emu.ledger()["jobs"]
    assert report.counts["done"] == 1
    assert report.counts["pending"] == 1
    assert len(billed) == 1
    assert report.stop_kind == "budget"
