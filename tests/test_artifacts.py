from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.api.stored import stored_headers
from foreman.artifacts import (
    ArtifactStore,
    is_text,
    output_bytes,
    output_refs,
    outputs,
    valid_name,
)
from foreman.ids import new_ulid

JOB = new_ulid()
OTHER = new_ulid()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_stores_the_bytes_under_their_job_and_sha256(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    data = b"hello, world\n"
    digest = hashlib.sha256(data).hexdigest()

    ref = store.put(JOB, "content.txt", "text/plain; charset=utf-8", data)

    assert (ref.name, ref.media_type, ref.size, ref.sha256) == (
        "content.txt",
        "text/plain; charset=utf-8",
        len(data),
        digest,
    )
    assert store.path(JOB, digest) == tmp_path / "artifacts" / JOB / digest
    assert store.path(JOB, digest).read_bytes() == data
    assert files_under(tmp_path) == [store.path(JOB, digest)]
    assert store.jobs() == [JOB]


def test_putting_identical_bytes_twice_keeps_one_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    first = store.put(JOB, "a.json", "application/json", b"{}")
    second = store.put(JOB, "b.json", "application/json", b"{}")

    assert first.sha256 == second.sha256
    assert second.name == "b.json"
    assert files_under(tmp_path) == [store.path(JOB, first.sha256)]


BAD_NAMES = [
    "",
    ".",
    "..",
    ".hidden",
    "../x",
    "a/b",
    "a\\b",
    "%2e%2e",
    "a..b",
    "x" * 129,
    "é",
    "a\n",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_rejected(tmp_path: Path, name: str) -> None:
    assert not valid_name(name)
    with pytest.raises(ValueError, match="invalid artifact name"):
        ArtifactStore(tmp_path).put(JOB, name, "text/plain", b"")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("name", ["a", "response.json", "image-12.png", "a_b-c.", "x" * 128])
def test_good_names_are_accepted(name: str) -> None:
    assert valid_name(name)


@pytest.mark.parametrize(
    ("job_id", "sha256"),
    [
        (JOB, "../../etc/passwd"),
        (JOB, "AB" * 32),
        (JOB, "a" * 63),
        (JOB, "a" * 64 + "\n"),
        (JOB, "g" * 64),
        ("..", "a" * 64),
        (JOB.lower(), "a" * 64),
        ("../" + JOB[3:], "a" * 64),
    ],
)
def test_paths_never_leave_the_root(tmp_path: Path, job_id: str, sha256: str) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        ArtifactStore(tmp_path).path(job_id, sha256)


def test_remove_takes_a_jobs_outputs_and_only_them(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.put(JOB, "a.bin", "application/octet-stream", b"data")
    kept = store.put(OTHER, "a.bin", "application/octet-stream", b"data")

    assert store.remove(JOB)
    assert not store.remove(JOB)
    assert files_under(tmp_path) == [store.path(OTHER, kept.sha256)]


def test_jobs_lists_the_stored_jobs_and_nothing_else(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    assert store.jobs() == []  # no root yet
    store.put(OTHER, "a.bin", "application/octet-stream", b"b")
    store.put(JOB, "a.bin", "application/octet-stream", b"a")
    (store.root / "not-a-job").mkdir()
    assert store.jobs() == sorted([JOB, OTHER])


def test_chat_outputs_with_images() -> None:
    png = b"\x89PNG\r\n\x1a\n fake"
    result = {
        "model": "llava",
        "message": {
            "role": "assistant",
            "content": "voilà",
            "images": [base64.b64encode(png).decode(), "not base64!", 7],
        },
        "done": True,
    }

    assert outputs("chat", result) == [
        (
            "response.json",
            "application/json",
            json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode(),
        ),
        ("content.txt", "text/plain; charset=utf-8", "voilà".encode()),
        ("image-1.png", "image/png", png),
    ]


def test_generate_outputs() -> None:
    result = {"model": "llama3", "response": "hi", "images": [base64.b64encode(b"i").decode()]}

    names = [(name, data) for name, _, data in outputs("generate", result)]

    assert names == [
        ("response.json", b'{"model":"llama3","response":"hi","images":["aQ=="]}'),
        ("content.txt", b"hi"),
        ("image-1.png", b"i"),
    ]


def test_missing_content_is_an_empty_text() -> None:
    assert outputs("chat", {"done": True})[1] == ("content.txt", "text/plain; charset=utf-8", b"")
    assert outputs("generate", {"response": None})[1][2] == b""


def test_embed_outputs_the_whole_result() -> None:
    result = {"model": "all-minilm", "embeddings": [[0.5, -1.0]]}

    assert outputs("embed", result) == [
        ("embeddings.json", "application/json", json.dumps(result, separators=(",", ":")).encode())
    ]


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown job kind"):
        outputs("pull", {})


@pytest.mark.parametrize(
    ("media_type", "text"),
    [
        ("text/plain; charset=utf-8", True),
        ("text/markdown", True),
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/ld+json", True),
        ("image/png", False),
        ("application/octet-stream", False),
        ("application/jsonx", False),
    ],
)
def test_is_text(media_type: str, text: bool) -> None:
    assert is_text(media_type) is text


@given(data=st.binary(max_size=4096))
def test_put_then_read_round_trips_any_bytes(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    store = ArtifactStore(tmp_path_factory.getbasetemp() / "property")
    ref = store.put(JOB, "blob", "application/octet-stream", data)

    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.size == len(data)
    assert store.path(JOB, ref.sha256).read_bytes() == data


@pytest.mark.parametrize(
    ("media_type", "download"),
    [
        ("text/plain; charset=utf-8", False),
        ("application/json", False),
        ("image/png", False),
        ("text/html", True),
        ("image/svg+xml", True),
        ("application/xhtml+xml", True),
        ("TEXT/HTML; charset=utf-8", True),
    ],
)
def test_stored_bytes_are_never_run_and_active_types_are_downloads(
    media_type: str, download: bool
) -> None:
    headers = stored_headers('a "b".html', media_type)
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    disposition = headers.get("Content-Disposition")
    assert (disposition is not None) == download
    if disposition is not None:
        assert disposition == "attachment; filename*=UTF-8''a%20%22b%22.html"


def test_output_refs_name_what_output_bytes_make_again() -> None:
    result = {"model": "llama3", "message": {"role": "assistant", "content": "hi"}, "done": True}
    refs = output_refs("chat", result)
    assert [ref.name for ref in refs] == ["response.json", "content.txt"]
    for ref in refs:
        data = output_bytes("chat", result, ref)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (ref.size, ref.sha256)
    other = {**result, "message": {"role": "assistant", "content": "bye"}}
    with pytest.raises(LookupError):  # a response that does not make these bytes
        output_bytes("chat", other, refs[1])


def test_an_output_file_is_written_once_from_the_response(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    result = {"model": "llama3", "response": "words", "done": True}
    ref = output_refs("generate", result)[1]
    path = store.output(JOB, "generate", result, ref)
    assert (path, path.read_bytes()) == (store.path(JOB, ref.sha256), b"words")
    assert files_under(tmp_path) == [path]  # no temporary file left
