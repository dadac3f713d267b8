from __future__ import annotations

import pytest

from orchestrator import canonical_json, get_model, job_key
from orchestrator.errors import InputError, SpecError
from orchestrator.models import Model, output_kind_of

WAN = "community/wan-2-2/vace-fun"
BASE = {"prompt": "a fox", "image": "https://example.com/a.png"}


def test_complete_applies_defaults_and_friendly_names() -> None:
    full = get_model(WAN).complete({**BASE, "cfg": 4, "steps": 8})
    assert full["56_text"] == "a fox"
    assert full["108_cfg"] == 4.0
    assert isinstance(full["108_cfg"], float)
    assert full["47_value"] == 8
    assert full["41_value"] == 8.0  # the schema's integer default of a float field is normalised
    assert full["4_valuex3_value"] == "1024x576 (16:9)"


def test_float_field_int_and_float_are_one_job() -> None:
    model = get_model(WAN)
    a = model.complete({**BASE, "cfg": 4})
    b = model.complete({**BASE, "108_cfg": 4.0})
    assert canonical_json(a) == canonical_json(b)
    assert job_key(WAN, a) == job_key(WAN, b)
    assert job_key(WAN, a) != job_key(WAN, a, repeat=1)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"cfg": 12}, "cfg: must be between 0 and 10, got 12"),
        ({"steps": 4.0}, "steps: must be a whole number, got 4.0"),
        ({"steps": True}, "steps: must be a whole number, got true"),
        ({"frames": 80}, "frames: 80 is not allowed; allowed: 81, 141"),
        ({"resolution": "480x480"}, "did you mean '480x480 (1:1)'?"),
        ({"sead": 1}, "sead: unknown input (did you mean 'seed'?)"),
        ({"prompt": 3}, "prompt: must be a string, got 3"),
        ({"cfg": float("nan")}, "cfg: must be a finite number"),
    ],
)
def test_bad_values_name_the_friendly_field(bad: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=None) as info:
        get_model(WAN).complete({**BASE, **bad})
    assert message in str(info.value)


def test_required_inputs() -> None:
    with pytest.raises(InputError, match="image: required input missing"):
        get_model(WAN).complete({"prompt": "x"})


def test_problems_lists_every_bad_raw_key() -> None:
    problems = get_model(WAN).problems({"56_text": 3, "25_value": 80})
    assert {(p.key, p.kind) for p in problems} == {
        ("56_text", "type"),
        ("25_value", "enum"),
        ("118_image", "missing"),
    }


def test_unknown_model_is_schema_less_unless_strict() -> None:
    model = get_model("someone/else")
    assert not model.has_schema
    assert model.complete({"anything": 1.5}) == {"anything": 1.5}
    with pytest.raises(SpecError, match="unknown model 'community/wan-2-2/vace-fan'"):
        get_model("community/wan-2-2/vace-fan", strict=True)


def test_canonical_json_is_compact_sorted_utf8() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def test_a_catalog_entry_becomes_a_model_with_its_media_inputs_and_output_kind() -> None:
    entry = {
        "model_id": "google/nano-banana-2-lite/edit",
        "display_name": "Nano Banana 2 Lite Edit",
        "categories": ["image-to-image", "image"],
        "input_schema": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string"},
                "strength": {"type": "float", "minimum": 0, "maximum": 1},
                "image_urls": {"type": "array", "format": "image_uris", "maxItems": 10},
                "voice": {"type": "string", "format": "audio_uri"},
            },
            "required": ["prompt", "image_urls"],
        },
    }
    model = Model.from_catalog(entry)
    assert model.output_kind == "image"
    assert model.media_inputs == {"image_urls", "voice"}
    assert model.media_lists == {"image_urls"}
    assert (model.media_kind("image_urls"), model.media_kind("voice")) == ("image", "audio")
    assert model.media_kind("prompt") is None
    assert model.max_items("image_urls") == 10
    assert model.normalise("strength", 1) == 1.0
    assert model.check("image_urls", ["a"] * 11) is not None
    assert output_kind_of({"categories": ["text-to-audio"]}) == "audio"
    assert output_kind_of({"output": "image", "categories": ["video"]}) == "image"
