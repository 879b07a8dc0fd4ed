"""The idempotency key, content fingerprint and intent validation (sendonce.keys)."""

from __future__ import annotations

import copy
import hashlib
import json
import unicodedata
from pathlib import Path
from typing import Any

import idna
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sendonce.keys import (
    IdempotencyKey,
    InvalidAddressError,
    InvalidIntentError,
    OversizeIntentError,
    canonical_domain,
    canonical_json,
    content_digest,
    content_fingerprint,
    derive_key,
    fingerprint_for,
    idempotency_key_for,
    identify_intent,
    mailbox_address,
    mask_address,
    normalize_address,
    supplied_key,
    validate_intent,
    validate_tenant_id,
)

VECTORS_PATH = Path(__file__).resolve().parents[2] / "data" / "key_vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="ascii"))
BY_NAME = {vector["name"]: vector for vector in VECTORS}

BASE: dict[str, Any] = copy.deepcopy(BY_NAME["plain_text_body"]["intent"])
SECRET = "SECRET-BODY-never-in-messages"


def intent(**changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(BASE)
    result.update(changes)
    return result


# ---- golden vectors ----------------------------------------------------------------------


def test_vector_file_is_well_formed() -> None:
    assert len(VECTORS) >= 12
    assert len(BY_NAME) == len(VECTORS), "vector names must be unique"
    relations = ("same_key_as", "different_key_from", "same_fingerprint_as")
    for vector in VECTORS:
        for relation in (*relations, "different_fingerprint_from"):
            for other in vector.get(relation, []):
                assert other in BY_NAME, f"{vector['name']}.{relation} names unknown {other}"


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_vector_reproduces(vector: dict[str, Any]) -> None:
    validate_intent(vector["intent"])
    key = idempotency_key_for(vector["intent"])
    assert str(key) == vector["key"]
    assert key.tenant_id == vector["intent"]["tenant_id"]
    assert key.supplied == (vector["intent"]["idempotency_key"] is not None)
    assert fingerprint_for(vector["intent"]) == vector["content_fingerprint"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_vector_relations_hold(vector: dict[str, Any]) -> None:
    for other in vector.get("same_key_as", []):
        assert vector["key"] == BY_NAME[other]["key"]
    for other in vector.get("different_key_from", []):
        assert vector["key"] != BY_NAME[other]["key"]
    for other in vector.get("same_fingerprint_as", []):
        assert vector["content_fingerprint"] == BY_NAME[other]["content_fingerprint"]
    for other in vector.get("different_fingerprint_from", []):
        assert vector["content_fingerprint"] != BY_NAME[other]["content_fingerprint"]


def test_nfd_vector_really_is_nfd() -> None:
    # Guards against an editor normalising the file and making the NFD vector pointless.
    nfd = BY_NAME["unicode_nfd"]["intent"]
    nfc = BY_NAME["unicode_nfc"]["intent"]
    assert nfd["subject"] != nfc["subject"]
    assert unicodedata.normalize("NFC", nfd["subject"]) == nfc["subject"]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_plain_vector_recomputed_from_the_spec_by_hand() -> None:
    """Rebuilds key and fingerprint from literal strings, without sendonce.keys."""
    vector = BY_NAME["plain_text_body"]
    assert vector["intent"]["to"] == ["bob@example.com"]
    assert vector["intent"]["text_body"] == "Hi Bob, your order is on its way."
    digest = "body:" + sha256(
        '{"html":null,"subject":"Your order 1001 has shipped",'
        '"text":"Hi Bob, your order is on its way."}'
    )
    key_input = (
        '{"action_type":"receipt","content":"' + digest + '",'
        '"recipients":["bob@example.com"],"source_event_id":"order-1001:shipped",'
        '"tenant":"acme","v":1}'
    )
    assert vector["key"] == "acme:" + sha256(key_input)[:32]
    fingerprint_input = (
        '{"action_type":"receipt","bcc":[],"cc":[],"content":"' + digest + '",'
        '"headers":{},"sender":"orders@acme.example","to":["bob@example.com"]}'
    )
    assert vector["content_fingerprint"] == sha256(fingerprint_input)


def test_template_vector_recomputed_from_the_spec_by_hand() -> None:
    vector = BY_NAME["template_with_params"]
    digest = "tmpl:" + sha256(
        '{"params":{"carrier":"DHL","first_name":"Bob","order_id":"1001"},'
        '"template_id":"order-shipped-v2"}'
    )
    key_input = (
        '{"action_type":"receipt","content":"' + digest + '",'
        '"recipients":["bob@example.com"],"source_event_id":"order-1001:shipped",'
        '"tenant":"acme","v":1}'
    )
    assert vector["key"] == "acme:" + sha256(key_input)[:32]


def test_supplied_key_vector_by_hand() -> None:
    assert BY_NAME["producer_supplied_key"]["key"] == "acme:p:checkout-7f3a9c/receipt"


# ---- canonical JSON ----------------------------------------------------------------------


def test_canonical_json_exact_bytes() -> None:
    value = {"b": 1, "a": [None, True, "e\u0301", '\x1f\n"\\'], "\u00e9": {}}
    assert canonical_json(value) == (
        '{"a":[null,true,"\u00e9","\\u001f\\n\\"\\\\"],"b":1,"\u00e9":{}}'.encode()
    )


def test_canonical_json_sorts_keys_by_code_point() -> None:
    assert canonical_json({"\U0001f600": 1, "\uffff": 2, "Z": 3, "a": 4}) == (
        '{"Z":3,"a":4,"\uffff":2,"\U0001f600":1}'.encode()
    )


@pytest.mark.parametrize("bad", [1.5, {1: "x"}, {"e\u0301": 1, "\u00e9": 2}, b"x"])
def test_canonical_json_rejects_non_portable_input(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json(bad)


# ---- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("bob@example.com", "bob@example.com"),
        ("  BOB@Example.COM\t", "bob@example.com"),
        ("Bob Example <Bob@Example.com>", "bob@example.com"),
        ('"Example, Bob" < bob@example.com >', "bob@example.com"),
        ("<bob@example.com>", "bob@example.com"),
        ("user+tag@sub.example.co.uk", "user+tag@sub.example.co.uk"),
        ("zoe\u0308@exa\u0308mple.de", "zo\u00eb@ex\u00e4mple.de"),
        ("ZO\u00cb@B\u00dcCHER.example", "zo\u00eb@b\u00fccher.example"),
    ],
)
def test_normalize_address(raw: str, normalized: str) -> None:
    assert normalize_address(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "empty"),
        ("bob", "exactly one '@'"),
        ("bob@@example.com", "exactly one '@'"),
        ("b ob@example.com", "whitespace"),
        ("bob@exa\u200bmple.com", "whitespace or control"),
        ("bob@example", "with a dot"),
        ("bob@-example.com", "starts or ends with '-'"),
        ("bob@exa_mple.com", "invalid character in the domain"),
        ("bob@example..com", "label must be 1 to 63"),
        (".bob@example.com", "misplaced dot"),
        ("bo..b@example.com", "misplaced dot"),
        ('"bob"@example.com', "special character"),
        ("x" * 65 + "@example.com", "local part must be 1 to 64"),
        ("bob@" + "a" * 64 + ".com", "label must be 1 to 63"),
        ("bob@" + ".".join(["abcdefghi"] * 26) + ".com", "longer than 254"),
        ("Bob <evil> <bob@example.com>", "angle brackets in the display name"),
        ("bob@example.com>", "unbalanced"),
        ("<bob@example.com> Bob", "misplaced angle bracket"),
        ("bob@example.com (Bob)", "whitespace"),
    ],
)
def test_invalid_addresses(raw: str, problem: str) -> None:
    with pytest.raises(InvalidAddressError, match=problem) as caught:
        normalize_address(raw)
    local = raw.strip().split("@")[0]
    if len(local) > 3:
        assert local not in str(caught.value)
    assert isinstance(caught.value, InvalidIntentError)
    assert isinstance(caught.value, ValueError)


def test_address_errors_are_masked() -> None:
    with pytest.raises(InvalidAddressError) as caught:
        normalize_address("Jonathan Doe <jonathan doe@example.com>", field="to[3]")
    message = str(caught.value)
    assert message.startswith("to[3]: invalid address j***@example.com: ")
    assert "jonathan" not in message.lower().replace("j***", "")
    assert mask_address("jonathan@example.com") == "j***@example.com"
    assert mask_address("nobody") == "n***"
    assert mask_address("x@example.com (Jonathan Doe)") == "x***@example.com"


# ---- tenant, supplied key, parse -----------------------------------------------------------


@pytest.mark.parametrize("tenant", ["a", "acme", "Acme-2.eu_west", "a" * 64, "0"])
def test_valid_tenants(tenant: str) -> None:
    assert validate_tenant_id(tenant) == tenant


@pytest.mark.parametrize("tenant", ["", "-acme", ".acme", "a" * 65, "ac:me", "acme\n", "ac me", 7])
def test_invalid_tenants(tenant: Any) -> None:
    with pytest.raises(InvalidIntentError, match=r"^tenant_id: "):
        validate_tenant_id(tenant)


@pytest.mark.parametrize("supplied", ["", "a b", "x" * 201, "tab\there", "zero\u200bwidth"])
def test_invalid_supplied_keys(supplied: str) -> None:
    with pytest.raises(InvalidIntentError, match=r"^idempotency_key: "):
        supplied_key("acme", supplied)
    with pytest.raises(InvalidIntentError, match=r"^idempotency_key: "):
        validate_intent(intent(idempotency_key=supplied))


def test_supplied_key_is_namespaced_and_not_normalised() -> None:
    assert supplied_key("acme", "x" * 200) == "acme:p:" + "x" * 200
    assert supplied_key("acme", "Caf\u00e9") != supplied_key("acme", "Cafe\u0301")


def test_parse_round_trips() -> None:
    for vector in VECTORS:
        key = idempotency_key_for(vector["intent"])
        assert IdempotencyKey.parse(str(key)) == key
    for bad in ["acme", "acme:XYZ", "acme:p:", ":p:x", "acme:" + "0" * 31]:
        with pytest.raises(InvalidIntentError):
            IdempotencyKey.parse(bad)


# ---- content digest ------------------------------------------------------------------------


def test_template_ignores_bodies_and_subject() -> None:
    kwargs: dict[str, Any] = {"template_id": "t", "template_params": {"a": "1"}}
    assert content_digest(subject="x", text_body="y", html_body=None, **kwargs) == (
        content_digest(subject="z", text_body=None, html_body="w", **kwargs)
    )


def test_digest_requires_a_body_or_template() -> None:
    for text, html in [(None, None), ("", None), ("", "")]:
        with pytest.raises(InvalidIntentError, match="text_body"):
            content_digest(
                subject="s", text_body=text, html_body=html, template_id=None, template_params={}
            )
    with pytest.raises(InvalidIntentError, match="template_id"):
        content_digest(
            subject="s", text_body="x", html_body=None, template_id="", template_params={}
        )


def test_derive_key_requires_recipients_and_event() -> None:
    with pytest.raises(InvalidIntentError, match="recipient"):
        derive_key("acme", "e", "reply", [], "body:x")
    with pytest.raises(InvalidIntentError, match="source_event_id"):
        derive_key("acme", "  ", "reply", ["a@b.example"], "body:x")
    with pytest.raises(InvalidIntentError, match="action_type"):
        derive_key("acme", "e", " \t", ["a@b.example"], "body:x")


def test_fingerprint_errors_name_the_address_list() -> None:
    kwargs: dict[str, Any] = {
        "sender": "s@example.com",
        "to": ["t@example.com"],
        "cc": [],
        "bcc": [],
        "action_type": "reply",
        "content_digest": "body:x",
        "headers": {},
    }
    assert content_fingerprint(**kwargs)
    for field in ("sender", "to", "cc", "bcc"):
        bad = "nobody" if field == "sender" else ["nobody"]
        with pytest.raises(InvalidAddressError, match=f"^{field}: "):
            content_fingerprint(**{**kwargs, field: bad})


# ---- intent validation ---------------------------------------------------------------------


def test_base_intent_is_valid() -> None:
    validate_intent(intent())


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tenant_id": None}, "tenant_id"),
        ({"source_event_id": ""}, "source_event_id"),
        ({"action_type": " "}, "action_type"),
        ({"sender": None}, "sender"),
        ({"sender": f"{SECRET}@"}, "sender"),
        ({"to": None}, "to"),
        ({"to": [], "cc": [], "bcc": []}, "to"),
        ({"to": ["ok@example.com", 5]}, "to[1]"),
        ({"cc": ["ok@example.com", f"{SECRET} x@example.com"]}, "cc[1]"),
        ({"bcc": [f"{SECRET}"]}, "bcc[0]"),
        ({"subject": None}, "subject"),
        ({"subject": "x" * 999}, "subject"),
        ({"subject": "Hello\r\nBcc: victim@example.com"}, "subject"),
        ({"text_body": None}, "text_body"),
        ({"text_body": 12}, "text_body"),
        ({"template_id": ""}, "template_id"),
        ({"template_params": {"a": 1}}, "template_params"),
        ({"headers": {"Bad Name": "v"}}, "headers"),
        ({"headers": {"X-A": "v\r\nBcc: victim@example.com"}}, "headers[X-A]"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": True}, "created_at"),
        ({"idempotency_key": ""}, "idempotency_key"),
    ],
)
def test_invalid_intents_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidIntentError) as caught:
        validate_intent(intent(**changes))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert SECRET not in str(caught.value)
    assert caught.value.error_type == "invalid_intent"


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidIntentError, match=r"^intent: "):
        validate_intent(["not", "a", "dict"])  # type: ignore[arg-type]


def test_recipient_limit_counts_to_cc_and_bcc() -> None:
    addresses = [f"r{i}@example.com" for i in range(500)]
    validate_intent(intent(to=addresses[:200], cc=addresses[200:400], bcc=addresses[400:]))
    with pytest.raises(InvalidIntentError, match="501 recipients"):
        validate_intent(intent(to=addresses[:200], cc=addresses[200:], bcc=["x@example.com"]))


def test_subject_limits() -> None:
    validate_intent(intent(subject="x" * 998))
    validate_intent(intent(subject=""))


def test_body_size_limit() -> None:
    body = "\u00e9" * 600  # 1200 bytes of UTF-8
    validate_intent(intent(text_body=body), max_body_bytes=1200)
    with pytest.raises(OversizeIntentError, match="1201 bytes; limit 1200") as caught:
        validate_intent(intent(text_body=body, html_body="x"), max_body_bytes=1200)
    assert caught.value.error_type == "oversize"
    with pytest.raises(OversizeIntentError):
        validate_intent(intent(template_id="t", template_params={"p": "x" * 50}), max_body_bytes=50)
    default_limit = 900_000  # fits a 1,000,000-byte record with the rest of the intent
    validate_intent(intent(text_body="x" * default_limit))
    with pytest.raises(OversizeIntentError):
        validate_intent(intent(text_body="x" * (default_limit + 1)))


def test_a_template_alone_is_enough() -> None:
    validate_intent(intent(text_body=None, template_id="welcome", template_params={}))
    validate_intent(intent(text_body=None, html_body="<p>x</p>"))


def test_supplied_key_intent_still_needs_a_valid_tenant() -> None:
    with pytest.raises(InvalidIntentError, match=r"^tenant_id"):
        idempotency_key_for(intent(tenant_id="a:b", idempotency_key="k"))


# ---- properties ----------------------------------------------------------------------------

TENANTS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
LABEL = st.from_regex(r"[a-z0-9äöüéàç]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
LOCAL = st.from_regex(r"[a-z0-9+_äöüéàç]([a-z0-9+_.-]{0,10}[a-z0-9])?", fullmatch=True)
ADDRESSES = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    LOCAL.filter(lambda s: ".." not in s),
    st.lists(LABEL, min_size=1, max_size=3),
    st.sampled_from(["com", "example", "de", "co.uk"]),
)
HEADER_VALUES = st.text(
    st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=8
)
TEXT = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")


@st.composite
def intents(draw: st.DrawFn, tenant: st.SearchStrategy[str] = TENANTS) -> dict[str, Any]:
    """Valid intents (sometimes with a template, sometimes with a supplied key)."""
    use_template = draw(st.booleans())
    return intent(
        tenant_id=draw(tenant),
        source_event_id=draw(TEXT),
        action_type=draw(st.sampled_from(["reply", "Escalation", " invite ", "receipt"])),
        sender=draw(ADDRESSES),
        to=draw(st.lists(ADDRESSES, min_size=1, max_size=4)),
        cc=draw(st.lists(ADDRESSES, max_size=3)),
        bcc=draw(st.lists(ADDRESSES, max_size=2)),
        subject=draw(st.text(max_size=30).map(lambda s: s.replace("\r", "").replace("\n", ""))),
        text_body=None if use_template else draw(TEXT),
        html_body=draw(st.none() | TEXT),
        template_id=draw(TEXT) if use_template else None,
        template_params=draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8))),
        headers=draw(st.dictionaries(st.sampled_from(["X-A", "X-B"]), HEADER_VALUES)),
        idempotency_key=draw(st.none() | st.from_regex(r"[A-Za-z0-9/_:-]{1,30}", fullmatch=True)),
    )


def _shout(address: str) -> str:
    return address.upper()


@given(intents())
def test_key_is_deterministic_and_well_formed(original: dict[str, Any]) -> None:
    validate_intent(original)
    key = idempotency_key_for(original)
    assert idempotency_key_for(copy.deepcopy(original)) == key
    assert fingerprint_for(copy.deepcopy(original)) == fingerprint_for(original)
    assert str(key).startswith(original["tenant_id"] + ":")
    assert IdempotencyKey.parse(str(key)) == key


@given(intents())
def test_identify_intent_equals_the_three_separate_calls(original: dict[str, Any]) -> None:
    identity = identify_intent(original)
    assert identity.key == idempotency_key_for(original)
    assert identity.fingerprint == fingerprint_for(original)
    assert identity.sender == mailbox_address(original["sender"])


@pytest.mark.parametrize(
    "changes",
    [{"sender": "nobody"}, {"to": ["ok@example.com", 5]}, {"text_body": None}, {"tenant_id": None}],
)
def test_identify_intent_rejects_what_validate_intent_rejects(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidIntentError) as separate:
        validate_intent(intent(**changes))
    with pytest.raises(InvalidIntentError) as combined:
        identify_intent(intent(**changes))
    assert str(combined.value) == str(separate.value)


def test_a_cached_address_still_reports_its_own_field() -> None:
    assert normalize_address("Ok@Example.com", field="to[0]") == "ok@example.com"
    with pytest.raises(InvalidAddressError, match=r"^cc\[1\]: "):
        normalize_address("nobody", field="cc[1]")
    with pytest.raises(InvalidAddressError, match=r"^bcc\[0\]: "):
        normalize_address("nobody", field="bcc[0]")


@given(intents(), TENANTS, TENANTS)
def test_two_tenants_never_share_a_key(base: dict[str, Any], first: str, second: str) -> None:
    assume(first != second)
    one = idempotency_key_for({**base, "tenant_id": first})
    other = idempotency_key_for({**base, "tenant_id": second})
    assert one != other
    assert str(one) != str(other)


@given(intents(), st.randoms(use_true_random=False))
def test_recipient_order_placement_case_and_duplicates_do_not_change_the_key(
    base: dict[str, Any], rng: Any
) -> None:
    base = {**base, "idempotency_key": None}
    everyone = base["to"] + base["cc"] + base["bcc"]
    shuffled = [_shout(a) if rng.random() < 0.5 else a for a in everyone]
    shuffled += rng.sample(everyone, k=min(2, len(everyone)))  # duplicates
    rng.shuffle(shuffled)
    cut1 = rng.randint(1, len(shuffled))
    cut2 = rng.randint(cut1, len(shuffled))
    moved = {
        **base,
        "to": shuffled[:cut1],
        "cc": shuffled[cut1:cut2],
        "bcc": [f"Someone <{a}>" for a in shuffled[cut2:]],
    }
    assert idempotency_key_for(moved) == idempotency_key_for(base)


@given(intents(), TEXT)
def test_different_content_gives_a_different_key(base: dict[str, Any], other: str) -> None:
    base = {**base, "idempotency_key": None, "template_id": None, "text_body": "original"}
    assume(unicodedata.normalize("NFC", other) != "original")
    assert idempotency_key_for({**base, "text_body": other}) != idempotency_key_for(base)


@given(ADDRESSES)
def test_normalize_address_is_idempotent(address: str) -> None:
    once = normalize_address(address)
    assert normalize_address(once) == once
    assert normalize_address(f"  Name <{_shout(address)}> ") == once


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_the_ascii_fast_path_forbids_exactly_what_the_unicode_rule_forbids(text: str) -> None:
    from sendonce import keys

    by_category = any(
        ch.isspace() or unicodedata.category(ch) in keys._FORBIDDEN_CATEGORIES for ch in text
    )
    assert keys._has_forbidden_char(text) == by_category


# ---- version 2: one intended email, one key -------------------------------------------------

BUECHER = "b\u00fccher.example"


@pytest.mark.parametrize(
    "spelling",
    [
        "xn--bcher-kva.example",  # the A-label (Punycode) spelling
        "XN--BCHER-KVA.Example",
        "\uff42\u00fc\uff43\uff48\uff45\uff52.example",  # fullwidth b, c, h, e, r
        "bu\u0308cher.example",  # NFD
    ],
)
def test_domain_spellings_of_one_domain_normalise_to_its_u_label(spelling: str) -> None:
    assert normalize_address(f"Bob@{spelling}") == f"bob@{BUECHER}"


@pytest.mark.parametrize(
    "spelling", ["xn--bcher-kva.example", "\uff42\u00fc\uff43\uff48\uff45\uff52.example"]
)
def test_domain_spellings_of_one_domain_share_key_and_fingerprint(spelling: str) -> None:
    unicode_form = intent(to=[f"bob@{BUECHER}"], sender=f"orders@{BUECHER}")
    other_form = intent(to=[f"bob@{spelling}"], sender=f"orders@{spelling}")
    assert idempotency_key_for(other_form) == idempotency_key_for(unicode_form)
    assert fingerprint_for(other_form) == fingerprint_for(unicode_form)


def test_template_subject_is_in_the_fingerprint_not_the_key() -> None:
    first = intent(text_body=None, template_id="welcome", template_params={"n": "Bob"})
    other = {**first, "subject": "Something else entirely"}
    assert idempotency_key_for(other) == idempotency_key_for(first)
    assert fingerprint_for(other) != fingerprint_for(first)


def test_template_html_body_is_in_the_fingerprint_not_the_key() -> None:
    first = intent(text_body=None, template_id="welcome", template_params={"n": "Bob"})
    other = {**first, "html_body": "<p>Something else</p>"}
    assert idempotency_key_for(other) == idempotency_key_for(first)
    assert fingerprint_for(other) != fingerprint_for(first)
    assert fingerprint_for({**first, "html_body": "<p>A third</p>"}) != fingerprint_for(other)


def test_a_label_vector_recomputed_from_the_spec_by_hand() -> None:
    vector = BY_NAME["idn_a_label"]
    assert vector["intent"]["to"] == ["Bob@XN--BCHER-KVA.example"]
    digest = "body:" + sha256(
        '{"html":null,"subject":"Your order 1001 has shipped",'
        '"text":"Hi Bob, your order is on its way."}'
    )
    key_input = (
        '{"action_type":"receipt","content":"' + digest + '",'
        '"recipients":["bob@b\u00fccher.example"],"source_event_id":"order-1001:shipped",'
        '"tenant":"acme","v":1}'
    )
    assert vector["key"] == "acme:" + sha256(key_input)[:32]


def test_template_subject_and_html_vectors_recomputed_from_the_spec_by_hand() -> None:
    digest = "tmpl:" + sha256(
        '{"params":{"carrier":"DHL","first_name":"Bob","order_id":"1001"},'
        '"template_id":"order-shipped-v2"}'
    )
    head = '{"action_type":"receipt","bcc":[],"cc":[],"content":"' + digest + '","headers":{},'
    sender = '"sender":"orders@acme.example",'
    to = '"to":["bob@example.com"]}'
    # Empty subject, no HTML: exactly version 1's fingerprint input.
    assert BY_NAME["template_empty_subject"]["content_fingerprint"] == sha256(head + sender + to)
    # Otherwise "subject" and "html" join it, in code-point order like every member.
    subject = '"subject":"Your order 1001 was cancelled",'
    assert BY_NAME["template_other_subject"]["content_fingerprint"] == sha256(
        head + sender + subject + to
    )
    html = '"html":"<p>Your order has shipped</p>",'
    subject = '"subject":"Your order 1001 has shipped",'
    assert BY_NAME["template_with_html"]["content_fingerprint"] == sha256(
        head + html + sender + subject + to
    )


# ---- version 2 properties ------------------------------------------------------------------

# A loaded machine (the suite runs beside Kafka brokers) must not turn a slow example
# into a failure.
NO_DEADLINE = settings(deadline=None)

IDN_LABEL = st.from_regex(r"[a-z\u00e4\u00f6\u00fc\u00e9\u00df\u03b1-\u03c9]{1,10}", fullmatch=True)
IDN_DOMAINS = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(IDN_LABEL, min_size=1, max_size=3),
    st.sampled_from(["example", "de", "xn--p1ai"]),
)


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(ch) - 0x61 + 0xFF41) if "a" <= ch <= "z" else ch for ch in text)


def _a_label(domain: str) -> str:
    return idna.encode(domain, uts46=True).decode("ascii")


@NO_DEADLINE
@given(LOCAL.filter(lambda s: ".." not in s), IDN_DOMAINS)
def test_every_spelling_of_a_domain_normalises_to_one_idempotent_form(
    local: str, domain: str
) -> None:
    canonical = normalize_address(f"{local}@{domain}")
    assert normalize_address(canonical) == canonical
    assert canonical_domain(canonical.partition("@")[2]) == canonical.partition("@")[2]
    try:
        a_label = _a_label(domain)
    except idna.IDNAError:
        # UTS-46 refuses it: version 1's form, which is also what the key had before.
        assert canonical == mailbox_address(f"{local}@{domain}")
        return
    spellings = [a_label, a_label.upper(), _fullwidth(domain)]
    if domain.upper().lower() == domain:  # not for "\u00df" (SS is ss) or final sigma
        spellings.append(domain.upper())
    for spelling in spellings:
        assert normalize_address(f"{local}@{spelling}") == canonical


def _v1_key(intent: dict[str, Any]) -> str:
    """Version 1 of schemas/README.md section 5, with version 1's address rule."""
    recipients = sorted({mailbox_address(a) for a in intent["to"] + intent["cc"] + intent["bcc"]})
    key_input = {
        "v": 1,
        "tenant": intent["tenant_id"],
        "source_event_id": intent["source_event_id"],
        "action_type": intent["action_type"].strip().lower(),
        "recipients": recipients,
        "content": _digest_of(intent),
    }
    return f"{intent['tenant_id']}:{hashlib.sha256(canonical_json(key_input)).hexdigest()[:32]}"


def _v1_fingerprint(intent: dict[str, Any]) -> str:
    """Version 1 of schemas/README.md section 7, with version 1's address rule."""
    fingerprint_input = {
        "sender": mailbox_address(intent["sender"]),
        **{f: sorted({mailbox_address(a) for a in intent[f]}) for f in ("to", "cc", "bcc")},
        "action_type": intent["action_type"].strip().lower(),
        "content": _digest_of(intent),
        "headers": intent["headers"],
    }
    return hashlib.sha256(canonical_json(fingerprint_input)).hexdigest()


def _digest_of(intent: dict[str, Any]) -> str:
    return content_digest(
        subject=intent["subject"],
        text_body=intent["text_body"],
        html_body=intent["html_body"],
        template_id=intent["template_id"],
        template_params=intent["template_params"],
    )


def _v1_canonical_addresses(intent: dict[str, Any]) -> bool:
    addresses = [intent["sender"], *intent["to"], *intent["cc"], *intent["bcc"]]
    return all(normalize_address(a) == mailbox_address(a) for a in addresses)


@NO_DEADLINE
@given(intents())
def test_what_version_1_had_canonical_keeps_its_key_and_fingerprint(
    original: dict[str, Any],
) -> None:
    original = {**original, "idempotency_key": None}
    assume(_v1_canonical_addresses(original))
    assert str(idempotency_key_for(original)) == _v1_key(original)
    template_extras = original["template_id"] is not None and bool(
        original["subject"] or original["html_body"]
    )
    if not template_extras:
        assert fingerprint_for(original) == _v1_fingerprint(original)


@NO_DEADLINE
@given(intents(), IDN_DOMAINS)
def test_a_label_recipients_share_the_u_label_key(base: dict[str, Any], domain: str) -> None:
    try:
        a_label = _a_label(domain)
    except idna.IDNAError:
        assume(False)
        return
    base = {**base, "idempotency_key": None}
    u_form = {**base, "to": [*base["to"], f"bob@{domain}"]}
    a_form = {**base, "to": [*base["to"], f"bob@{a_label}"]}
    assert idempotency_key_for(a_form) == idempotency_key_for(u_form)
    assert fingerprint_for(a_form) == fingerprint_for(u_form)


@NO_DEADLINE
@given(intents(), st.text(max_size=20).map(lambda s: s.replace("\r", "").replace("\n", "")))
def test_a_template_sent_under_another_subject_is_a_conflict(
    base: dict[str, Any], subject: str
) -> None:
    base = {**base, "text_body": None, "template_id": "welcome"}
    assume(unicodedata.normalize("NFC", subject) != unicodedata.normalize("NFC", base["subject"]))
    other = {**base, "subject": subject}
    assert idempotency_key_for(other) == idempotency_key_for(base)
    assert fingerprint_for(other) != fingerprint_for(base)


ANY_LABEL = st.text(
    st.characters(categories=["L", "M", "N"]) | st.sampled_from("-xn"), min_size=1, max_size=12
)


@NO_DEADLINE
@given(st.lists(ANY_LABEL, min_size=2, max_size=3))
def test_normalising_any_valid_address_is_idempotent(labels: list[str]) -> None:
    try:
        once = normalize_address("bob@" + ".".join(labels))
    except InvalidAddressError:
        assume(False)
        return
    assert normalize_address(once) == once
    # (Not always lower case: UTS-46 folds Cherokee to its capitals, U+AB70 to U+13A0.)
