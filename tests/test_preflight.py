"""tdxupdate.preflight: the checks discover() runs, their order and the precedence of failures."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from factories.hosts import (
    at,
    build_host_tree,
    faulty_reads,
    host_facts,
)

from tdxupdate import host, preflight
from tdxupdate.errors import EXIT_CODES

T = "/sys/devices/faux/tdx_host"


def test_discover_busy_status_is_upload_busy(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, status="transferring")
    check = facts.check("upload-idle")
    assert facts.upload_status == "transferring"
    assert (check.ok, check.code) == (False, "upload-busy")
    assert check.detail == (
        f'{root}/sys/class/firmware/tdx_module/status is "transferring", not "idle": another '
        "upload is in progress; try again when it finishes"
    )
    assert check.code is not None
    assert EXIT_CODES[check.code] == 75


def test_discover_remaining_zero_fails_with_no_remaining_updates(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, remaining=0)
    assert facts.num_remaining_updates == 0
    assert facts.check("remaining-updates") == preflight.HostCheck(
        "remaining-updates",
        False,
        "num_remaining_updates is 0: no update possible until reboot",
        "no-remaining-updates",
    )


@pytest.mark.parametrize(
    ("online", "present", "detail"),
    [
        (
            "0-1",
            "0-3",
            "2 of 4 CPUs online (offline: 2-3); the update needs every present CPU online",
        ),
        (
            "0-1,3",
            "0-3",
            "3 of 4 CPUs online (offline: 2); the update needs every present CPU online",
        ),
    ],
)
def test_discover_offline_cpus_fail(tmp_path: Path, online: str, present: str, detail: str) -> None:
    _, facts = host_facts(tmp_path, online=online, present=present)
    assert facts.check("cpus-online") == preflight.HostCheck(
        "cpus-online", False, detail, "cpus-offline"
    )
    assert EXIT_CODES["cpus-offline"] == 75


def test_discover_cpu_lists_compare_as_sets(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, online="0,1,2,3", present="0-3")
    assert facts.check("cpus-online") == preflight.HostCheck(
        "cpus-online", True, "all 4 present CPUs are online (0-3)", None
    )


def test_discover_online_cpu_not_present_is_inconsistent(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, online="0-4", present="0-3")
    check = facts.check("cpus-online")
    assert (check.ok, check.code) == (False, "io-error")
    assert check.detail == (
        f"{at(root, '/sys/devices/system/cpu/online')} lists CPUs 4 that "
        f"{at(root, '/sys/devices/system/cpu/present')} does not: the CPU lists are inconsistent"
    )


def test_discover_erratum_in_bugs_fails_the_erratum_check(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, bugs="seamret_invd_vmcs")
    assert facts.erratum_seamret_invd_vmcs is True
    assert facts.check("erratum-seamret-invd-vmcs") == preflight.HostCheck(
        "erratum-seamret-invd-vmcs",
        False,
        f"{root}/proc/cpuinfo: the bugs line lists seamret_invd_vmcs: this CPU cannot update "
        "the TDX module at runtime; updates need a reboot",
        "no-upload-interface",
    )


def test_discover_erratum_must_be_a_whole_word(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, bugs="seamret_invd_vmcs_fixed")
    assert facts.erratum_seamret_invd_vmcs is False
    assert facts.check("erratum-seamret-invd-vmcs").ok


def test_host_facts_check_unknown_name_raises_key_error(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path)
    with pytest.raises(KeyError, match="no host check named 'nope'"):
        facts.check("nope")


# --------------------------------------------------------------------------- order and precedence


def test_the_orders_name_every_check_once() -> None:
    assert preflight.CHECK_NAMES is preflight.REPORT_ORDER
    assert len(set(preflight.REPORT_ORDER)) == len(preflight.REPORT_ORDER) == 9
    assert set(preflight.UPDATE_ORDER) <= set(preflight.REPORT_ORDER)
    assert "erratum-seamret-invd-vmcs" not in preflight.UPDATE_ORDER
    assert frozenset({69, 77}) == preflight.PERMANENT_FIRST


def test_first_failure_is_none_on_a_good_host(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path)
    assert preflight.first_failure(facts) is None


def test_a_permanent_failure_beats_an_earlier_transient_one(tmp_path: Path) -> None:
    # upload-idle (75) comes before cpus-online in UPDATE_ORDER, remaining-updates (69) after
    # neither: the permanent one is reported whatever the order.
    _, facts = host_facts(tmp_path, status="transferring", remaining=0, online="0-2")
    error = preflight.first_failure(facts)
    assert error is not None
    assert (error.code, error.exit_code) == ("no-remaining-updates", 69)


def test_without_a_permanent_failure_the_first_transient_one_is_reported(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, status="transferring", online="0-2")
    error = preflight.first_failure(facts)
    assert error is not None
    assert (error.code, error.exit_code) == ("upload-busy", 75)


def test_permission_denied_is_permanent(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host", status="transferring")
    facts = host.discover(faulty_reads(root, {f"{T}/seamldr_version": errno.EACCES}))
    error = preflight.first_failure(facts)
    assert error is not None
    assert (error.code, error.exit_code) == ("permission-denied", 77)


def test_update_preflight_error_is_first_failure() -> None:
    from tdxupdate import update

    # the name update.py imported (not re-exported: read from its globals)
    assert vars(update)["preflight_error"] is preflight.first_failure
