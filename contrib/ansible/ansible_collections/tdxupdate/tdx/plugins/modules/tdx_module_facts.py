#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tdxupdate developers
# MIT License (see the repository's licence)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: tdx_module_facts
short_description: Read the TDX Module state of a host with tdxupdate (changes nothing)
description:
  - Runs C(tdxupdate --status --json) and returns the document and a summary as the
    C(tdxupdate) fact - module and P-SEAMLDR versions, SEAMSVN and MRSEAM when the installed
    tdxupdate reports them, remaining updates, module-lost state, failing checks.
  - With O(plan=true) it also runs C(tdxupdate --update --dry-run --json) (never writes) and says
    which module the host would run after an update; with O(history=true) the last recorded
    update attempt is included.
  - Never changes anything; check mode behaves the same.
version_added: "0.1.0"
author:
  - tdxupdate developers (@tdxupdate)
extends_documentation_fragment:
  - tdxupdate.tdx.common
options:
  allow_debug:
    description: Count debug-signed modules as eligible in the plan. Never enable on production.
    type: bool
    default: false
  version:
    description: With O(plan=true), plan for exactly this version.
    type: str
  plan:
    description: Also report the module an update would install (a dry run).
    type: bool
    default: false
  history:
    description: Also report the last recorded update attempt.
    type: bool
    default: true
notes:
  - Supports check mode.
"""

EXAMPLES = r"""
- name: Read the module state
  tdxupdate.tdx.tdx_module_facts:
    plan: true
- name: Show it
  ansible.builtin.debug:
    var: ansible_facts.tdxupdate
"""

RETURN = r"""
status:
  description: The C(tdxupdate --status --json) document.
  returned: always
  type: dict
ansible_facts:
  description: The C(tdxupdate) fact.
  returned: always
  type: dict
  contains:
    tdxupdate:
      description:
        - module_version, seamldr_version, seamsvn, mrseam, mrseam_prefix, module_identity,
          identity_source (where SEAMSVN and MRSEAM come from, C(published), Intel's release
          table, or C(repository), the image in the repository), in_mapping (the running
          version is in the mapping file),
          num_remaining_updates, module_lost, failed_checks, warnings, last_result,
          last_attempt, plan (target version, seamsvn, mrseam, svn_gain, tcb_status,
          would_change, warnings, error).
      type: dict
      returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.tdxupdate.tdx.plugins.module_utils.tdxupdate_cli import (
    COMMON_OPTIONS,
    candidate_identity,
    common_argv,
    error_of,
    host_identity,
    module_lost,
    run_json,
)


def main():
    spec = dict(COMMON_OPTIONS)
    spec.update(
        allow_debug=dict(type="bool", default=False),
        version=dict(type="str"),
        plan=dict(type="bool", default=False),
        history=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    params = module.params
    base = common_argv(params)
    rc, doc, out, err = run_json(module, base + ["--status"])
    code, message = error_of(doc)
    # A lost module is a fact about the host (tdxupdate --status exits 1 for it), not a
    # failure to gather facts: report it as module_lost.
    if doc is None or (rc != 0 and code != "module-lost"):
        module.fail_json(
            msg="tdxupdate --status failed (exit %d, %s): %s"
            % (rc, code, message or err.strip() or out),
            rc=rc,
            error_code=code,
            status=doc,
        )
    host = doc.get("host") or {}
    identity = host_identity(host)
    facts = dict(
        module_version=identity["version"],
        seamsvn=identity["seamsvn"],
        mrseam=identity["mrseam"],
        mrseam_prefix=host.get("mrseam_prefix"),
        module_identity=host.get("module_identity"),
        identity_source=host.get("identity_source"),
        in_mapping=host.get("in_mapping"),
        seamldr_version=host.get("seamldr_version"),
        num_remaining_updates=host.get("num_remaining_updates"),
        cpu_signature=host.get("cpu_signature"),
        module_lost=module_lost(host),
        failed_checks=[c.get("name") for c in host.get("checks") or [] if not c.get("ok")],
        warnings=doc.get("warnings") or [],
        tool_version=doc.get("tool_version"),
        last_result=None,
        last_attempt=None,
        plan=None,
    )
    if params["history"]:
        h_rc, h_doc, _o, _e = run_json(module, base + ["--history"])
        records = (h_doc or {}).get("history") or []
        if h_rc == 0 and records:
            facts["last_attempt"] = records[-1]
            facts["last_result"] = records[-1].get("result")
    if params["plan"]:
        argv = base + ["--update"]
        if params["version"]:
            argv.append(params["version"])
        argv.append("--dry-run")
        if params["allow_debug"]:
            argv.append("--allow-debug")
        p_rc, p_doc, _o, _p_err = run_json(module, argv)
        code, message = error_of(p_doc)
        target = candidate_identity((p_doc or {}).get("selected"))
        to_version = (p_doc or {}).get("to_version")
        if to_version:
            target["version"] = to_version
        selected = (p_doc or {}).get("selected") or {}
        would = bool(p_rc == 0 and to_version and to_version != identity["version"])
        if not would:
            target = dict(identity)
        target.update(
            rc=p_rc,
            would_change=would,
            svn_gain=(p_doc or {}).get("svn_gain") if would else None,
            tcb_status=selected.get("tcb_status") if would else None,
            warnings=(p_doc or {}).get("warnings") or [],
            error_code=code,
            message=message,
        )
        facts["plan"] = target
    module.exit_json(changed=False, status=doc, ansible_facts=dict(tdxupdate=facts))


if __name__ == "__main__":
    main()
