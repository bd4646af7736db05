# Copyright: tdxupdate developers
# MIT License (see the repository's licence)
"""Filters that turn every host's tdxupdate fact into one fleet report."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: tdx_fleet_report
short_description: Build the fleet report from every host's tdxupdate fact
version_added: "0.1.0"
author:
  - tdxupdate developers (@tdxupdate)
description:
  - Takes a dict of host name to the C(tdxupdate) fact (from tdx_module_facts with plan=true) and
    returns rows, the union of reference values now and after the rollout, and the fleet minimum
    SEAMSVN.
options:
  _input:
    description: Host name to C(tdxupdate) fact.
    type: dict
    required: true
"""

EXAMPLES = r"""
report: "{{ facts_by_host | tdxupdate.tdx.tdx_fleet_report }}"
"""

RETURN = r"""
_value:
  description:
    - rows, reference_values (current, after_rollout, during_rollout), min_seamsvn,
      min_seamsvn_after_rollout, svn_unknown, module_lost, not_in_mapping (hosts running a
      version the mapping file does not list), no_svn_gain (hosts whose update raises no SEAMSVN).
  type: dict
"""

import csv
import io

COLUMNS = (
    "host",
    "module_version",
    "seamsvn",
    "mrseam",
    "num_remaining_updates",
    "last_result",
    "module_lost",
    "target_version",
    "target_seamsvn",
    "target_mrseam",
    "module_identity",
    "identity_source",
    "in_mapping",
    "target_svn_gain",
)


def _svn(value):
    if value is None:
        return None
    try:
        return int(str(value), 0)
    except ValueError:
        return None


def _ref(version, seamsvn, mrseam):
    return dict(version=version, seamsvn=seamsvn, mrseam=mrseam)


def _union(refs):
    seen = {}
    for ref in refs:
        if ref.get("version") is None:
            continue
        key = (ref["version"], ref.get("seamsvn"), ref.get("mrseam"))
        seen[key] = ref
    return [seen[key] for key in sorted(seen, key=lambda k: tuple(str(p) for p in k))]


def tdx_fleet_report(facts_by_host):
    rows = []
    for host in sorted(facts_by_host):
        fact = facts_by_host[host] or {}
        plan = fact.get("plan") or {}
        rows.append(
            dict(
                host=host,
                module_version=fact.get("module_version"),
                seamsvn=fact.get("seamsvn"),
                mrseam=fact.get("mrseam"),
                num_remaining_updates=fact.get("num_remaining_updates"),
                last_result=fact.get("last_result"),
                module_lost=bool(fact.get("module_lost")),
                target_version=plan.get("version") or fact.get("module_version"),
                target_seamsvn=plan.get("seamsvn") or fact.get("seamsvn"),
                target_mrseam=plan.get("mrseam") or fact.get("mrseam"),
                module_identity=fact.get("module_identity"),
                identity_source=fact.get("identity_source"),
                in_mapping=fact.get("in_mapping"),
                target_svn_gain=plan.get("svn_gain") if plan.get("would_change") else None,
            )
        )
    current = _union(_ref(r["module_version"], r["seamsvn"], r["mrseam"]) for r in rows)
    after = _union(_ref(r["target_version"], r["target_seamsvn"], r["target_mrseam"]) for r in rows)
    svns = [_svn(r["seamsvn"]) for r in rows]
    known = [s for s in svns if s is not None]
    after_svns = [_svn(r["target_seamsvn"]) for r in rows]
    after_known = [s for s in after_svns if s is not None]
    return dict(
        hosts=len(rows),
        rows=rows,
        module_lost=[r["host"] for r in rows if r["module_lost"]],
        reference_values=dict(
            current=current, after_rollout=after, during_rollout=_union(current + after)
        ),
        min_seamsvn=("0x%04x" % min(known)) if known and len(known) == len(svns) else None,
        min_seamsvn_after_rollout=(
            ("0x%04x" % min(after_known)) if after_known and len(after_known) == len(rows) else None
        ),
        svn_unknown=[r["host"] for r in rows if _svn(r["seamsvn"]) is None],
        not_in_mapping=[r["host"] for r in rows if r["in_mapping"] is False],
        no_svn_gain=[r["host"] for r in rows if r["target_svn_gain"] is False],
    )


def tdx_report_csv(report):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report["rows"]:
        writer.writerow(dict((k, "" if row.get(k) is None else row.get(k)) for k in COLUMNS))
    return out.getvalue()


def _cell(value):
    return "unknown" if value is None else str(value).replace("|", "\\|")


def tdx_report_markdown(report):
    lines = ["# TDX Module fleet report", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for row in report["rows"]:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k in COLUMNS) + " |")
    lines += ["", "## Reference values after the rollout", ""]
    lines += ["| version | seamsvn | mrseam |", "|---|---|---|"]
    for ref in report["reference_values"]["after_rollout"]:
        lines.append(
            "| %s | %s | %s |" % tuple(_cell(ref.get(k)) for k in ("version", "seamsvn", "mrseam"))
        )
    lines += [
        "",
        "Fleet minimum SEAMSVN now: %s; after the rollout: %s"
        % (_cell(report["min_seamsvn"]), _cell(report["min_seamsvn_after_rollout"])),
    ]
    if report["svn_unknown"]:
        lines.append("SEAMSVN unknown on: " + ", ".join(report["svn_unknown"]))
    if report.get("not_in_mapping"):
        lines.append(
            "Running a version the mapping file does not list: "
            + ", ".join(report["not_in_mapping"])
        )
    if report.get("no_svn_gain"):
        lines.append(
            "Update raises no SEAMSVN (TDs attest no newer TCB) on: "
            + ", ".join(report["no_svn_gain"])
        )
    lines.append("Module lost on: " + (", ".join(report["module_lost"]) or "none"))
    return "\n".join(lines) + "\n"


class FilterModule(object):
    def filters(self):
        return dict(
            tdx_fleet_report=tdx_fleet_report,
            tdx_report_csv=tdx_report_csv,
            tdx_report_markdown=tdx_report_markdown,
        )
