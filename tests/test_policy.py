"""policy: one test per rule and reason token, and a table over Intel's current mapping file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tdxupdate import policy
from tdxupdate.catalog import Release, parse_catalog
from tdxupdate.errors import DataError
from tdxupdate.policy import HostView, ImageFacts, Options, choose, evaluate, evaluate_one
from tdxupdate.versions import Version

ROOT = Path(__file__).resolve().parent.parent
INTEL_MAPPING = ROOT / "mapping_samples" / "mapping_file.json"

V = Version.parse
SPR, EMR, SRF, GNR = 0x806F8, 0xC06F2, 0xA06F3, 0xA06D1
CPUIDS_15 = (0x806F8, 0xC06F0, 0xA06F0)
CPUIDS_20 = (0xA06D0, 0xA06E0)


def release(
    version: str,
    *,
    min_td: str = "1.5.01",
    seamldr: tuple[str, ...] = ("1.5.00", "2.0.00"),
    strict: list[str] | None = None,
    feature0: str | None = None,
) -> Release:
    entry: dict[str, object] = {
        "version": version,
        "min_module_version_for_td_preserving": min_td,
        "min_seamldr_versions": list(seamldr),
    }
    if strict is not None:
        entry["strict_compat_versions"] = strict
    if feature0 is not None:
        entry["tdx_feature0"] = feature0
    doc = {"Header": {"Version": "1.0"}, "tdx_module_releases": [entry]}
    return parse_catalog(json.dumps(doc), "test").releases[0]


def img(
    cpuids: tuple[int, ...] = CPUIDS_15,
    *,
    debug: bool = False,
    failures: tuple[tuple[str, str], ...] = (),
    fmt: int = 0x200,
) -> ImageFacts:
    return ImageFacts(
        "repo/x.blob", image_format=fmt, is_debug=debug, cpuid_table=cpuids, failures=failures
    )


HOST = HostView(V("1.5.06"), V("2.0.00"), SPR)
DEFAULT = Options()


def reasons(
    version: str,
    rel: Release | None,
    image: ImageFacts | None,
    host: HostView = HOST,
    options: Options = DEFAULT,
) -> tuple[str, ...]:
    return evaluate_one(V(version), rel, image, host, options).reasons


# --- one test per reason token --------------------------------------------------------------


def test_eligible_candidate_has_no_reasons() -> None:
    c = evaluate_one(V("1.5.08"), release("1.5.08"), img(), HOST, Options())
    assert c.reasons == ()
    assert c.eligible
    assert c.details == {}


def test_not_in_mapping() -> None:
    assert reasons("1.5.08", None, img()) == ("not-in-mapping",)


def test_image_missing_leaves_out_image_reasons() -> None:
    # cpu-unsupported and debug-module need the image: left out when it is missing (§3).
    assert reasons("1.5.08", release("1.5.08"), None) == ("image-missing",)


@pytest.mark.parametrize("check", ["container", "checksum", "seamhash", "version", "cpuid-table"])
def test_image_invalid_from_each_integrity_check(check: str) -> None:
    assert reasons("1.5.08", release("1.5.08"), img(failures=((check, "bad"),))) == (
        "image-invalid",
    )


def test_unparseable_image_leaves_out_cpu_and_debug() -> None:
    broken = ImageFacts("x", failures=(("container", "truncated"),))
    assert reasons(
        "1.5.08", release("1.5.08"), broken, HostView(V("1.5.06"), V("2.0.00"), GNR)
    ) == ("image-invalid",)


def test_signature_invalid() -> None:
    assert reasons("1.5.08", release("1.5.08"), img(failures=(("signature", "bad"),))) == (
        "signature-invalid",
    )


def test_untrusted_signer() -> None:
    assert reasons("1.5.08", release("1.5.08"), img(failures=(("trusted-signer", "who"),))) == (
        "untrusted-signer",
    )


def test_major_minor_mismatch() -> None:
    assert reasons(
        "2.0.08", release("2.0.08", min_td="2.0.04", seamldr=("2.0.00",)), img(CPUIDS_20)
    ) == (
        "major-minor-mismatch",
        "below-min-td-preserving",
        "cpu-unsupported",
    )


def test_older_than_running() -> None:
    assert reasons("1.5.05", release("1.5.05"), img()) == ("older-than-running",)


def test_same_as_running() -> None:
    assert reasons("1.5.06", release("1.5.06"), img()) == ("same-as-running",)


def test_older_and_same_only_within_the_running_stream() -> None:
    host = HostView(V("2.0.08"), V("2.0.00"), GNR)
    got = reasons("1.5.01", release("1.5.01"), img(), host)
    assert "older-than-running" not in got
    assert "major-minor-mismatch" in got


def test_below_min_td_preserving_compares_whole_versions() -> None:
    # Intel's script compares only the update numbers; 1.5.06 vs a minimum of 1.6.01 would pass.
    host = HostView(V("1.5.06"), V("2.0.00"), SPR)
    rel = release("1.5.08", min_td="1.6.01")
    assert reasons("1.5.08", rel, img(), host) == ("below-min-td-preserving",)
    assert reasons("1.5.08", release("1.5.08", min_td="1.5.06"), img(), host) == ()
    assert reasons("1.5.08", release("1.5.08", min_td="1.5.07"), img(), host) == (
        "below-min-td-preserving",
    )


@pytest.mark.parametrize(
    ("minimums", "running", "ok"),
    [
        (("1.5.00",), "1.5.00", True),
        (("1.5.00",), "1.5.07", True),
        (("1.5.03",), "1.5.02", False),
        (("1.5.00",), "2.0.00", False),
        (("1.5.00", "2.0.00"), "2.0.00", True),
        (("2.0.01",), "2.0.00", False),
        (("2.0.00",), "2.1.00", False),
    ],
)
def test_seamldr_rule(minimums: tuple[str, ...], running: str, ok: bool) -> None:
    host = HostView(V("1.5.06"), V(running), SPR)
    got = reasons("1.5.08", release("1.5.08", seamldr=minimums), img(), host)
    assert got == (() if ok else ("seamldr-incompatible",))


@pytest.mark.parametrize(
    ("cpu", "ok"),
    [
        (0x806F8, True),
        (0x806F0, True),
        (0x806FF, True),
        (0xC06F2, True),
        (0xA06D1, False),
        (0x906F8, False),
    ],
)
def test_cpu_rule_masks_the_stepping(cpu: int, ok: bool) -> None:
    host = HostView(V("1.5.06"), V("2.0.00"), cpu)
    got = reasons("1.5.08", release("1.5.08"), img((0x806F8, 0xC06F0)), host)
    assert got == (() if ok else ("cpu-unsupported",))


def test_debug_module_needs_allow_debug() -> None:
    assert reasons("1.5.08", release("1.5.08"), img(debug=True)) == ("debug-module",)
    assert (
        reasons("1.5.08", release("1.5.08"), img(debug=True), options=Options(allow_debug=True))
        == ()
    )


def test_debug_allowed_does_not_lift_trust() -> None:
    image = img(debug=True, failures=(("trusted-signer", "untrusted"),))
    assert reasons("1.5.08", release("1.5.08"), image, options=Options(allow_debug=True)) == (
        "untrusted-signer",
    )


def test_not_strict_compatible_only_with_the_option() -> None:
    rel = release("1.5.08", strict=["1.5.05"])
    assert reasons("1.5.08", rel, img()) == ()
    assert reasons("1.5.08", rel, img(), options=Options(strict_compat=True)) == (
        "not-strict-compatible",
    )
    ok = release("1.5.08", strict=["1.5.06"])
    assert reasons("1.5.08", ok, img(), options=Options(strict_compat=True)) == ()
    absent = release("1.5.08")
    assert reasons("1.5.08", absent, img(), options=Options(strict_compat=True)) == (
        "not-strict-compatible",
    )


def test_details_name_both_sides() -> None:
    host = HostView(V("1.5.06"), V("1.5.00"), GNR)
    c = evaluate_one(
        V("1.5.25"), release("1.5.25", seamldr=("2.0.00",)), img((0xA06F0,)), host, Options()
    )
    assert c.reasons == ("seamldr-incompatible", "cpu-unsupported")
    assert (
        c.details["seamldr-incompatible"]
        == "1.5.25 needs P-SEAMLDR 2.0.x ≥ 2.0.00; this host runs 1.5.00"
    )
    assert c.details["cpu-unsupported"] == "1.5.25 supports CPUs 0xa06f0; this CPU is 0xa06d1"


def test_reasons_are_in_contract_order() -> None:
    host = HostView(V("1.5.06"), V("1.5.00"), GNR)
    got = reasons(
        "1.5.05",
        release("1.5.05", min_td="1.5.07", seamldr=("2.0.00",)),
        img(debug=True, failures=(("signature", "x"), ("checksum", "y"))),
        host,
    )
    assert got == (
        "image-invalid",
        "signature-invalid",
        "older-than-running",
        "below-min-td-preserving",
        "seamldr-incompatible",
        "cpu-unsupported",
        "debug-module",
    )
    assert list(got) == [r for r in policy.REASONS if r in got]


# --- choose ---------------------------------------------------------------------------------


def candidates_for(
    *specs: tuple[str, tuple[int, ...]], host: HostView = HOST
) -> list[policy.Candidate]:
    rels = [release(v) for v, _ in specs]
    images = {V(v): img(c) for v, c in specs}
    return evaluate(rels, images, host, Options())


def test_choose_newest_eligible() -> None:
    cands = candidates_for(("1.5.06", CPUIDS_15), ("1.5.08", CPUIDS_15), ("1.5.09", CPUIDS_15))
    d = choose(cands, V("1.5.06"))
    assert d.action == "install"
    assert d.selected is not None
    assert d.selected.version == V("1.5.09")


def test_choose_skips_newest_that_does_not_fit_the_cpu() -> None:
    # reference-tool.md defect 3: 1.5.25 is Sierra Forest only; SPR must get 1.5.24.
    cands = candidates_for(("1.5.24", (0x806F8, 0xC06F0)), ("1.5.25", (0xA06F0,)))
    d = choose(cands, V("1.5.06"))
    assert d.selected is not None
    assert d.selected.version == V("1.5.24")


def test_choose_nothing_to_do_explains() -> None:
    cands = candidates_for(("1.5.06", CPUIDS_15), ("1.5.25", (0xA06F0,)))
    d = choose(cands, V("1.5.06"))
    assert d.action == "nothing-to-do"
    assert d.selected is None
    assert (
        d.message
        == "nothing to do: no newer module is eligible for this host (1.5.25: cpu-unsupported)"
    )


def test_choose_nothing_newer_at_all() -> None:
    d = choose(candidates_for(("1.5.06", CPUIDS_15)), V("1.5.06"))
    assert d.message == "nothing to do: no module newer than the running 1.5.06 in its Z-stream"


def test_explicit_version_unknown() -> None:
    d = choose(candidates_for(("1.5.08", CPUIDS_15)), V("1.5.06"), V("1.5.99"))
    assert d.action == "refuse"
    assert d.error_code == "version-unknown"
    assert d.selected is None


def test_explicit_version_not_eligible_carries_reasons() -> None:
    d = choose(candidates_for(("1.5.25", (0xA06F0,))), V("1.5.06"), V("1.5.25"))
    assert d.action == "refuse"
    assert d.error_code == "not-eligible"
    assert d.selected is not None
    assert d.selected.reasons == ("cpu-unsupported",)
    assert (
        d.message == "1.5.25 is not eligible: cpu-unsupported: "
        "1.5.25 supports CPUs 0xa06f0; this CPU is 0x806f8"
    )


def test_explicit_older_version_is_refused_downgrades_never() -> None:
    d = choose(candidates_for(("1.5.05", CPUIDS_15)), V("1.5.06"), V("1.5.05"))
    assert d.action == "refuse"
    assert d.selected is not None
    assert d.selected.reasons == ("older-than-running",)


def test_explicit_eligible_version_is_installed_even_if_not_newest() -> None:
    cands = candidates_for(("1.5.08", CPUIDS_15), ("1.5.09", CPUIDS_15))
    d = choose(cands, V("1.5.06"), V("1.5.08"))
    assert d.action == "install"
    assert d.selected is not None
    assert d.selected.version == V("1.5.08")


def test_explicit_running_version_is_nothing_to_do_without_allow_reinstall() -> None:
    cands = candidates_for(("1.5.06", CPUIDS_15))
    d = choose(cands, V("1.5.06"), V("1.5.06"))
    assert d.action == "nothing-to-do"
    assert not d.reinstall


def test_reinstall_with_allow_reinstall_needs_the_other_checks() -> None:
    cands = candidates_for(("1.5.06", CPUIDS_15))
    d = choose(cands, V("1.5.06"), V("1.5.06"), allow_reinstall=True)
    assert d.action == "install"
    assert d.reinstall
    bad = candidates_for(("1.5.06", (0xA06F0,)))
    d = choose(bad, V("1.5.06"), V("1.5.06"), allow_reinstall=True)
    assert d.action == "refuse"
    assert d.error_code == "not-eligible"


def test_refused_decision_raises_data_error() -> None:
    d = choose(candidates_for(("1.5.25", (0xA06F0,))), V("1.5.06"), V("1.5.25"))
    with pytest.raises(DataError) as info:
        d.raise_if_refused()
    assert info.value.exit_code == 65
    assert info.value.code == "not-eligible"


# --- table over Intel's current mapping file ------------------------------------------------

INTEL = parse_catalog(INTEL_MAPPING.read_bytes(), str(INTEL_MAPPING))

# Which CPUs each published or assumed image supports (published-blobs.json for ≤ 1.5.16 and
# ≤ 2.0.08; later ones follow reference-tool.md: 1.5.24 is for SPR/EMR, 1.5.25 for Sierra Forest).
TABLES = {
    **{r.version: CPUIDS_15 for r in INTEL.releases if r.version.stream == (1, 5)},
    V("1.5.24"): (0x806F8, 0xC06F0),
    V("1.5.25"): (0xA06F0,),
    **{r.version: CPUIDS_20 for r in INTEL.releases if r.version.stream == (2, 0)},
}
INTEL_IMAGES = {v: img(t) for v, t in TABLES.items()}

MATRIX = [
    # running, seamldr, cpu, chosen, {version: reasons} spot checks
    (
        "1.5.06",
        "2.0.00",
        SPR,
        "1.5.34",
        {"1.5.24": ("seamldr-incompatible",), "1.5.25": ("cpu-unsupported",)},
    ),
    ("1.5.06", "1.5.00", SPR, "1.5.34", {"1.5.25": ("seamldr-incompatible", "cpu-unsupported")}),
    (
        "1.5.06",
        "1.5.00",
        SRF,
        "1.5.34",
        {"1.5.24": ("cpu-unsupported",), "1.5.25": ("seamldr-incompatible",)},
    ),
    ("1.5.06", "2.0.00", SRF, "1.5.34", {"1.5.24": ("seamldr-incompatible", "cpu-unsupported")}),
    (
        "1.5.34",
        "2.0.00",
        SPR,
        None,
        {"1.5.34": ("same-as-running",), "1.5.28": ("older-than-running",)},
    ),
    (
        "2.0.02",
        "2.0.00",
        GNR,
        None,
        {
            "2.0.18": ("below-min-td-preserving",),
            "1.5.34": ("major-minor-mismatch", "cpu-unsupported"),
        },
    ),
    ("2.0.04", "2.0.00", GNR, "2.0.18", {"2.0.05": ()}),
    ("2.0.08", "1.5.00", GNR, None, {"2.0.18": ("seamldr-incompatible",)}),
    ("1.5.06", "2.0.00", GNR, None, {"1.5.34": ("cpu-unsupported",)}),
    (
        "1.5.01",
        "1.5.00",
        EMR,
        "1.5.34",
        {
            "1.5.05": (),
            "2.0.02": (
                "major-minor-mismatch",
                "below-min-td-preserving",
                "seamldr-incompatible",
                "cpu-unsupported",
            ),
        },
    ),
]


@pytest.mark.parametrize(
    ("running", "seamldr", "cpu", "chosen", "spot"),
    MATRIX,
    ids=[f"{m[0]}-ldr{m[1]}-{m[2]:#x}" for m in MATRIX],
)
def test_matrix_against_intel_mapping(
    running: str, seamldr: str, cpu: int, chosen: str | None, spot: dict[str, tuple[str, ...]]
) -> None:
    host = HostView(V(running), V(seamldr), cpu)
    cands = evaluate(INTEL.releases, INTEL_IMAGES, host, Options())
    assert [c.version for c in cands] == sorted(TABLES, reverse=True)
    for version, expected in spot.items():
        got = next(c for c in cands if c.version == V(version))
        assert got.reasons == expected, version
    d = choose(cands, V(running))
    assert (str(d.selected.version) if d.selected else None) == chosen


def test_matrix_sierra_forest_on_2_0_loader_takes_1_5_34_not_1_5_24() -> None:
    host = HostView(V("1.5.20"), V("2.0.00"), SRF)
    cands = evaluate(INTEL.releases, INTEL_IMAGES, host, Options())
    eligible = [str(c.version) for c in cands if c.eligible]
    assert eligible == ["1.5.34", "1.5.28", "1.5.25"]


# --- properties -------------------------------------------------------------------------------

versions = st.builds(Version, st.integers(1, 2), st.integers(0, 5), st.integers(0, 40))


@given(running=versions, cand=versions, cpu=st.integers(0, 0xFFFFFFF))
def test_property_eligible_iff_no_reasons_and_never_downgrades(
    running: Version, cand: Version, cpu: int
) -> None:
    host = HostView(running, V("2.0.00"), cpu)
    c = evaluate_one(cand, release(str(cand), min_td="1.0.00"), img((cpu,)), host, Options())
    assert c.eligible == (c.reasons == ())
    if c.eligible:
        assert cand.stream == running.stream
        assert cand > running
    d = choose([c], running)
    if d.selected is not None:
        assert d.selected.version > running
