"""Manifest schema and signatures: round trips, field-naming errors, tamper detection."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.protocols.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    ProfileChoice,
    TensorSpec,
    Variant,
    parse_version,
)
from tandem.protocols.signing import (
    SignatureError,
    generate_private_key,
    load_private_key,
    load_public_key,
    public_key_pem,
    save_private_key,
    sign_manifest,
    verify_manifest,
)

SHA = "ab" * 32


def make_manifest(**overrides) -> dict:
    spec = TensorSpec("input", "float32", [-1, 64])
    variant = Variant(
        id="onnxruntime-fp32",
        runtime="onnxruntime",
        precision="fp32",
        files=[FileEntry("variants/onnxruntime-fp32/model.onnx", SHA, 1234)],
        inputs=[spec],
        outputs=[TensorSpec("probabilities", "float32", [-1, 10])],
    )
    m = Manifest(
        name="digits-edge",
        version="1.2.3",
        created_at="2026-11-22T00:00:00+00:00",
        expires_at=None,
        task={"kind": "classification", "output": "probabilities"},
        inputs=[spec],
        outputs=variant.outputs,
        variants=[variant],
        profiles={"cpu-x86": ProfileChoice(chosen="onnxruntime-fp32", reason="fastest")},
        target_profiles=["cpu-x86"],
    )
    data = m.to_dict()
    data.update(overrides)
    return data


def test_round_trip_and_lookup():
    data = make_manifest()
    m = Manifest.from_dict(data)
    assert Manifest.from_json(m.to_json()).to_dict() == data
    assert m.variant_for_profile("cpu-x86").runtime == "onnxruntime"
    with pytest.raises(ManifestError, match="not compiled for profile 'npu-litert'"):
        m.variant_for_profile("npu-litert")


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("name"), "name"),
        (lambda d: d.update(version="1.2"), "version"),
        (lambda d: d["variants"][0].update(runtime="tensorrt"), "variants[0].runtime"),
        (lambda d: d["variants"][0]["files"][0].update(path="../../etc/passwd"), "variants[0].files[0].path"),
        (lambda d: d["variants"][0]["files"][0].update(sha256="xyz"), "variants[0].files[0].sha256"),
        (lambda d: d["variants"][0]["inputs"][0].update(shape=[1, "a"]), "variants[0].inputs[0].shape"),
        (lambda d: d["profiles"]["cpu-x86"].update(chosen="ghost"), "profiles.cpu-x86.chosen"),
        (lambda d: d.update(schema_version=99), "schema_version"),
    ],
)
def test_invalid_manifest_names_the_field(mutate, field):
    data = make_manifest()
    mutate(data)
    with pytest.raises(ManifestError) as err:
        Manifest.from_dict(data)
    assert str(err.value).startswith(field) or f"{field}:" in str(err.value)


def test_not_json():
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json(b"\xff{")


def test_versions_order_numerically():
    assert parse_version("1.10.0") > parse_version("1.9.9")


def test_signature_verifies_and_detects_tampering(tmp_path):
    key = generate_private_key()
    save_private_key(key, tmp_path / "k.pem")
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    signed = sign_manifest(make_manifest(), load_private_key(tmp_path / "k.pem"))
    public = load_public_key(public_key_pem(key))
    verify_manifest(signed, public)
    verify_manifest(Manifest.from_dict(signed).to_dict(), public)  # survives a round trip
    tampered = copy.deepcopy(signed)
    tampered["variants"][0]["files"][0]["sha256"] = "cd" * 32
    with pytest.raises(SignatureError, match="altered or signed by another key"):
        verify_manifest(tampered, public)
    with pytest.raises(SignatureError):
        verify_manifest(signed, generate_private_key().public_key())
    with pytest.raises(SignatureError, match="not signed"):
        verify_manifest(make_manifest(), public)


def _paths(node, prefix=()) -> list[tuple]:
    """Every key or index path inside a manifest dict, parents before children."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out = []
    for key, value in items:
        out.append(prefix + (key,))
        out.extend(_paths(value, prefix + (key,)))
    return out


VALID_PATHS = _paths(make_manifest())
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_PATHS), st.one_of(st.just("delete"), JUNK))
def test_any_field_of_a_valid_manifest_deleted_or_replaced_is_accepted_or_named(path, junk):
    """Start from a valid manifest (schema_version first) so every check is reached, not just the first."""
    data = make_manifest()
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if junk == "delete":
        if isinstance(parent, list):
            parent.pop(path[-1])
        else:
            del parent[path[-1]]
    else:
        parent[path[-1]] = junk
    try:
        Manifest.from_dict(data)
    except ManifestError as exc:
        assert str(exc), path
    # anything else (TypeError, KeyError, AttributeError ...) propagates and fails the test


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(sorted(make_manifest())), st.text(min_size=1, max_size=8)),
        st.one_of(st.integers(), st.text(max_size=8), st.none()),
        max_size=5,
    )
)
def test_arbitrary_objects_never_crash_the_loader(junk):
    try:
        Manifest.from_dict(junk)
    except ManifestError:
        pass
