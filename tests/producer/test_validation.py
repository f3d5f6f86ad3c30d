"""Invalid requests, generated for every endpoint: each one raises ``ValidationError``
naming the bad field, and Redis receives nothing at all (no record, no message:
Celery queues are Redis lists, so a sent message would leave a key).

And the producer agrees with the registry (``worker.models.validate_request``, what the
worker trusts) on every request, valid or not, hostile image URLs included: what the
registry rejects is rejected before enqueue, what it accepts is enqueued unchanged."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from producer import Edit, JobClient, TextToImage, ValidationError
from producer.options import MAX_IDEMPOTENCY_KEY_LENGTH, MAX_METADATA_BYTES
from tests.support.images import image_data_uri
from tests.support.url_strategies import never_v4, private_v4, public_v4, urls
from worker import errors as worker_errors
from worker.inline_images import marker_ids, with_images
from worker.models import ENDPOINTS, Endpoint, EndpointKind, validate_request
from worker.settings import Settings

URL = "https://example.com/cat.png"
METHOD_FOR_KIND = {
    EndpointKind.TEXT_TO_IMAGE: "text_to_image",
    EndpointKind.EDIT: "edit",
    EndpointKind.MULTI: "multi_edit",
}
VALID_ARGUMENTS: dict[EndpointKind, dict[str, Any]] = {
    EndpointKind.TEXT_TO_IMAGE: {"prompt": "a lighthouse"},
    EndpointKind.EDIT: {"image": URL, "prompt": "make it blue"},
    EndpointKind.MULTI: {"images": [URL], "prompt": "combine them"},
}
#: Keyword arguments each method takes besides the request's own fields.
METHOD_FIELDS = {
    "text_to_image": {"seed", "guidance_scale", "aspect_ratio", "num_images", "safety_tolerance"},
    "edit": {"seed", "guidance_scale", "aspect_ratio", "safety_tolerance"},
    "multi_edit": {"seed", "guidance_scale", "aspect_ratio"},
}
#: A valid value of each optional field, to send to a model that does not take it.
VALID_VALUES: dict[str, Any] = {
    "seed": 5,
    "guidance_scale": 3.0,
    "aspect_ratio": "16:9",
    "num_images": 2,
    "safety_tolerance": "3",
}

not_a_number = st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2))
INVALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.one_of(
        st.just(""),
        st.text(alphabet=" \t\n", min_size=1, max_size=5),
        st.text(min_size=4001, max_size=4100).filter(lambda text: bool(text.strip())),
        st.integers(),
    ),
    "seed": st.one_of(
        st.integers(max_value=-2),
        st.integers(min_value=2_147_483_648),
        st.floats(allow_nan=False).filter(lambda x: not x.is_integer()),
        not_a_number,
    ),
    "guidance_scale": st.one_of(
        st.floats(max_value=0.999),
        st.floats(min_value=20.001),
        st.just(math.nan),
        not_a_number,
    ),
    "aspect_ratio": st.one_of(
        st.text(max_size=8).filter(
            lambda text: (
                text not in {"21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"}
            )
        ),
        st.integers(),
    ),
    "num_images": st.one_of(
        st.integers(max_value=0), st.integers(min_value=5), st.floats(), not_a_number
    ),
    "safety_tolerance": st.one_of(
        st.text(max_size=3).filter(lambda text: text not in {"1", "2", "3", "4", "5"}),
        st.integers().filter(lambda n: not 1 <= n <= 5),
    ),
    # Neither an allowed URL nor a data URI nor an existing file: private and
    # never-allowed hosts in every spelling (the client does not allow private ones).
    "image": st.one_of(
        st.just(""),
        st.just("ftp://example.com/a.png"),
        st.just("data:text/plain;base64,aGk="),
        st.text(min_size=1, max_size=20).map(lambda text: f"missing-{text}.png"),
        st.integers(),
        urls(private_v4),
        urls(never_v4),
    ),
    "images": st.one_of(
        st.just([]),
        st.lists(st.just(URL), min_size=6, max_size=8),
        st.lists(st.just("no-such-file.png"), min_size=1, max_size=3),
        st.just(URL),
        st.lists(urls(private_v4), min_size=1, max_size=3),
    ),
}
INVALID_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "priority": st.text(max_size=8).filter(lambda text: text not in {"high", "normal"}),
    "deadline": st.one_of(
        st.floats(max_value=0),
        st.just(math.inf),
        st.just(math.nan),
        st.floats(min_value=7 * 24 * 3600 + 1, allow_infinity=False),
        st.text(max_size=4),
        st.booleans(),
    ),
    "metadata": st.one_of(
        st.lists(st.integers(), max_size=2),
        st.text(max_size=4),
        st.just({"big": "x" * MAX_METADATA_BYTES}),
        st.just({"not_json": object()}),
        st.just({1: "integer key"}),
    ),
    "idempotency_key": st.one_of(
        st.just(""),
        st.just("   "),
        st.just("k" * (MAX_IDEMPOTENCY_KEY_LENGTH + 1)),
        st.integers(),
    ),
}


def _accepted(endpoint: Endpoint) -> set[str]:
    return set(endpoint.request.model_fields)


@st.composite
def invalid_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    """(method, keyword arguments, the field that must be named) for any endpoint."""
    model = draw(st.sampled_from(sorted(ENDPOINTS)))
    endpoint = ENDPOINTS[model]
    method = METHOD_FOR_KIND[endpoint.kind]
    arguments: dict[str, Any] = {**VALID_ARGUMENTS[endpoint.kind], "model": model}
    takes = METHOD_FIELDS[method]
    how = draw(st.sampled_from(["bad value", "field the model lacks", "bad option", "bad model"]))
    if how == "field the model lacks" and takes - _accepted(endpoint):
        field = draw(st.sampled_from(sorted(takes - _accepted(endpoint))))
        arguments[field] = VALID_VALUES[field]
    elif how == "bad option":
        field = draw(st.sampled_from(sorted(INVALID_OPTIONS)))
        arguments[field] = draw(INVALID_OPTIONS[field])
    elif how == "bad model":
        field = "model"
        others = [name for name, e in ENDPOINTS.items() if e.kind is not endpoint.kind]
        arguments["model"] = draw(
            st.one_of(st.sampled_from(others), st.text(max_size=12).filter(_unknown_model))
        )
    else:
        fields = sorted(_accepted(endpoint) & set(INVALID_VALUES))
        field = draw(st.sampled_from(fields))
        if field == "guidance_scale" and model == "flux-kontext-pro":
            value = draw(st.one_of(INVALID_VALUES[field], st.floats(10.001, 20.0)))
        else:
            value = draw(INVALID_VALUES[field])
        arguments[field] = value
    return method, arguments, field


def _unknown_model(name: str) -> bool:
    return name.removeprefix("wavespeed-ai/") not in ENDPOINTS


def _names(problems: dict[str, str], field: str) -> bool:
    return any(key == field or key.startswith(field + "[") for key in problems)


@pytest.fixture
def empty_redis(redis_url: str) -> Iterator[tuple[JobClient, redis.Redis]]:
    raw = redis.Redis.from_url(redis_url)
    with JobClient(redis_url=redis_url) as client:
        yield client, raw
    raw.close()


def test_the_producer_raises_the_workers_validation_error() -> None:
    assert ValidationError is worker_errors.ValidationError


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(call=invalid_calls())
def test_invalid_requests_name_the_field_and_enqueue_nothing(
    empty_redis: tuple[JobClient, redis.Redis], call: tuple[str, dict[str, Any], str]
) -> None:
    client, raw = empty_redis
    method, arguments, field = call
    with pytest.raises(ValidationError) as raised:
        getattr(client, method)(**arguments)
    assert _names(raised.value.problems, field), (field, raised.value.problems)
    assert raw.dbsize() == 0


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bad_step=st.integers(min_value=0, max_value=2),
    field=st.sampled_from(["guidance_scale", "prompt", "model", "image"]),
    value=st.data(),
)
def test_a_chain_with_one_bad_step_names_it_and_enqueues_nothing(
    empty_redis: tuple[JobClient, redis.Redis], bad_step: int, field: str, value: st.DataObject
) -> None:
    client, raw = empty_redis
    edits: list[dict[str, Any]] = [{"prompt": f"edit {n}"} for n in range(3)]
    if field == "model":
        edits[bad_step]["model"] = value.draw(st.sampled_from(["flux-kontext-pro/multi", "nope"]))
    elif field == "image":
        edits[bad_step]["image"] = URL  # comes from the previous step: not allowed
    else:
        edits[bad_step][field] = value.draw(INVALID_VALUES[field])
    with pytest.raises(ValidationError) as raised:
        client.chain(TextToImage("first picture"), edits)
    assert f"step{bad_step + 2}.{field}" in raised.value.problems, raised.value.problems
    assert raw.dbsize() == 0


def test_every_problem_of_a_request_is_named_at_once(
    empty_redis: tuple[JobClient, redis.Redis],
) -> None:
    client, raw = empty_redis
    with pytest.raises(ValidationError) as raised:
        client.text_to_image(
            "",
            seed=-5,
            guidance_scale=99.0,
            aspect_ratio="5:4",
            priority="urgent",
            deadline=-1,
            metadata={"x": object()},
        )
    assert set(raised.value.problems) == {
        "prompt",
        "seed",
        "guidance_scale",
        "aspect_ratio",
        "priority",
        "deadline",
        "metadata",
    }
    with pytest.raises(ValidationError) as raised:
        client.chain("no-such-file.png", [Edit("ok", guidance_scale=0.5), Edit("", seed=3)])
    assert {"step1.image", "step1.guidance_scale", "step2.prompt", "step2.seed"} <= set(
        raised.value.problems
    )
    assert raw.dbsize() == 0


# the producer and the registry agree --------------------------------------------------

#: Image references the rule accepts (private ones only with the setting) ...
good_images = st.one_of(
    st.sampled_from(
        [
            URL,
            "https://cdn.example.org/a/b.webp?sig=abc&x=1",
            "https://[2606:4700:4700::1111]/x.png",
            image_data_uri(),
        ]
    ),
    urls(public_v4),
    urls(private_v4),
    st.sampled_from(["http://localhost:8765/media/a.png", "http://minio:9000/bucket/a.png"]),
)
#: ... and ones it never accepts, or that are not image references at all.
bad_images = st.one_of(
    st.sampled_from(
        [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
            "http://user@example.com/a.png",
            "http://example.com/a\nb.png",
            "file:///etc/passwd",
            "ftp://example.com/a.png",
            "data:image/svg+xml;base64,PHN2Zz4=",
            "data:image/png;base64,not base64!",
            "data:image/png;base64,iVBORw0KGgo=",  # a PNG signature and nothing more
            "http:///no-host.png",
            "https://",
        ]
    ),
    urls(never_v4),
    st.text(max_size=12),
    st.integers(),
)
STRAY_FIELDS = ["enable_sync_mode", "webhook", "bogus"]


@st.composite
def any_requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(model, fields): each part spoiled one time in five, so about half are valid."""

    def spoil() -> bool:
        return draw(st.integers(0, 4)) == 0

    model = draw(st.sampled_from(sorted(ENDPOINTS)))
    endpoint = ENDPOINTS[model]
    good_prompt = st.text(min_size=1, max_size=40).filter(str.strip)
    fields: dict[str, Any] = {"prompt": draw(INVALID_VALUES["prompt"] if spoil() else good_prompt)}
    takes = set(endpoint.request.model_fields)
    if "image" in takes:
        fields["image"] = draw(bad_images if spoil() else good_images)
    if "images" in takes:
        count = draw(st.sampled_from([0, 6]) if spoil() else st.integers(1, 5))
        fields["images"] = [draw(bad_images if spoil() else good_images) for _ in range(count)]
    options = sorted(takes - {"prompt", "image", "images"})
    for name in draw(st.sets(st.sampled_from(options), max_size=2)):
        fields[name] = draw(INVALID_VALUES[name]) if spoil() else VALID_VALUES[name]
    if spoil():
        fields[draw(st.sampled_from(STRAY_FIELDS))] = True
    return model, fields


@pytest.fixture
def clients(redis_url: str) -> Iterator[tuple[dict[bool, JobClient], redis.Redis]]:
    """One client per value of ``allow_private_image_urls``, on an empty Redis."""
    raw = redis.Redis.from_url(redis_url)
    strict = JobClient(redis_url=redis_url)
    lenient = JobClient(Settings(allow_private_image_urls=True), redis_url=redis_url)
    yield {False: strict, True: lenient}, raw
    strict.close()
    lenient.close()
    raw.close()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=any_requests(), allow_private=st.booleans())
def test_the_producer_enqueues_exactly_what_the_registry_accepts(
    clients: tuple[dict[bool, JobClient], redis.Redis],
    request: tuple[str, dict[str, Any]],
    allow_private: bool,
) -> None:
    by_setting, raw = clients
    client = by_setting[allow_private]
    model, fields = request
    raw.flushdb()
    try:
        expected: dict[str, Any] | None = validate_request(
            model, fields, allow_private_image_urls=allow_private
        )
    except ValidationError:
        expected = None
    mapping = {"kind": ENDPOINTS[model].kind.value, "model": model, **fields}
    event("registry accepts" if expected is not None else "registry rejects")
    if expected is None:
        with pytest.raises(ValidationError):
            client.submit(client.prepare(mapping))
        assert raw.dbsize() == 0
    else:
        job_id = client.submit(client.prepare(mapping))
        # Inline images are kept apart from the record (worker.inline_images).
        stored = client.get(job_id).input
        assert with_images(stored, client.store.inline_images(marker_ids(stored))) == expected
