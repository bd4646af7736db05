#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tdxupdate developers
# MIT License (see the repository's licence)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: tdx_module_update
short_description: Update the running Intel TDX Module with tdxupdate
description:
  - Runs the installed C(tdxupdate --update --json) on the managed host and returns its document.
  - C(changed) is true exactly when the running module changed. After a change the module reads
    the host again (C(tdxupdate --status --json)) and fails unless the new version is running, so
    every updated host is confirmed inside this task.
  - In check mode it runs C(tdxupdate --update --dry-run) (nothing is written) and C(changed)
    says whether a real run would change the module.
  - In diff mode it shows the module version, SEAMSVN and MRSEAM before and after (C(unknown)
    where the installed tdxupdate does not report them).
  - A lost module (the update failed after the old module was shut down) fails with a message of
    its own and C(fatal=true); every TD on that host is gone and it needs a reboot.
  - Exit code 75 (try again later) is returned as C(rc), so an C(until) of
    C(result.rc != 75) retries; the module can also retry it itself with back-off
    (O(busy_retries)).
version_added: "0.1.0"
author:
  - tdxupdate developers (@tdxupdate)
extends_documentation_fragment:
  - tdxupdate.tdx.common
options:
  version:
    description: Install exactly this version (after the same checks); default the newest eligible.
    type: str
  timeout:
    description: Longest wait in seconds for the kernel to finish, as C(--timeout).
    type: int
  allow_debug:
    description: Make debug-signed modules eligible. Never enable this on production hosts.
    type: bool
    default: false
  pre_update_command:
    description:
      - Shell command tdxupdate runs after every check and before the first write (a
        generic TD-launch fence), as C(--pre-update-command); if it fails nothing is
        written and tdxupdate exits 75 (C(pre-update-failed)), which I(busy_retries) retries.
    type: str
  post_update_command:
    description:
      - Shell command tdxupdate runs after the attempt, whatever its outcome (for example to
        let TD launches resume), as C(--post-update-command). Its failure is a warning
        (C(post-update-failed)), never a failed update.
    type: str
  hook_timeout:
    description: Longest run in seconds of each of those commands, as C(--hook-timeout).
    type: float
  fence_timeout:
    description:
      - Longest wait in seconds for TD builds in progress to finish before the first write, as
        C(--fence-timeout); when they do not, nothing is written and tdxupdate exits 75
        (C(td-build-in-progress)), which O(busy_retries) retries.
    type: float
  busy_retries:
    description: Retry this many times when tdxupdate exits 75 (try again later).
    type: int
    default: 0
  busy_delay:
    description: Seconds before the first retry; doubled for every further retry, up to 300.
    type: float
    default: 5
notes:
  - Supports check mode and diff mode.
  - Runs on the managed host; tdxupdate must be installed there.
"""

EXAMPLES = r"""
- name: Update to the newest eligible module
  tdxupdate.tdx.tdx_module_update:
    repo: /usr/share/tdx-module-binaries
  register: update

- name: Retry "try again later" with Ansible's own loop
  tdxupdate.tdx.tdx_module_update:
    version: 1.5.24
  register: update
  until: update.rc != 75
  retries: 5
  delay: 30

- name: What would change (writes nothing)
  tdxupdate.tdx.tdx_module_update:
  check_mode: true
  diff: true
"""

RETURN = r"""
rc:
  description: tdxupdate's exit code (0 success, 75 try again later, 1 kernel failure, ...).
  returned: always
  type: int
changed:
  description: The running module changed (check mode, would change).
  returned: always
  type: bool
from_version:
  description: The module running before.
  returned: when tdxupdate printed a document
  type: str
to_version:
  description: The target version, or null when nothing is eligible.
  returned: when tdxupdate printed a document
  type: str
running_version:
  description: The version read back after the run.
  returned: when tdxupdate printed a document
  type: str
before:
  description: version, seamsvn and mrseam of the running module before the run.
  returned: when tdxupdate printed a document
  type: dict
after:
  description: version, seamsvn and mrseam after the run (check mode, the plan's target).
  returned: when tdxupdate printed a document
  type: dict
fatal:
  description: The module was lost; every TD on the host is gone and it needs a reboot.
  returned: always
  type: bool
error_code:
  description: tdxupdate's error token (for example C(locked), C(device-busy), C(module-lost)).
  returned: on failure
  type: str
would_change:
  description: Same as C(changed); kept when a task overrides C(changed_when).
  returned: on success
  type: bool
svn_gain:
  description:
    - True when the target's SEAMSVN is above the running one's, false when it is not (TDs
      attest no newer TCB after this update), null when either is unknown.
  returned: when tdxupdate printed a document
  type: bool
retryable:
  description: True when rc is 75.
  returned: always
  type: bool
busy_attempts:
  description: The refusals with exit code 75 that were retried.
  returned: always
  type: list
  elements: dict
document:
  description: The complete JSON document tdxupdate printed.
  returned: when tdxupdate printed a document
  type: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.tdxupdate.tdx.plugins.module_utils.tdxupdate_cli import (
    COMMON_OPTIONS,
    EX_TEMPFAIL,
    candidate_identity,
    common_argv,
    describe,
    error_of,
    host_identity,
    module_lost,
    run_json,
)

LOST_MESSAGE = (
    "TDX MODULE LOST on this host (fatal): the update failed after the old module was shut "
    "down; every TD on this host is gone and TDX is unusable until the host reboots. Do not "
    "retry: reboot it, then run the rollout again."
)


def update_argv(module):
    params = module.params
    argv = common_argv(params) + ["--update"]
    if params["version"]:
        argv.append(params["version"])
    if module.check_mode:
        argv.append("--dry-run")
    if params["timeout"] is not None:
        argv += ["--timeout", str(params["timeout"])]
    if params["allow_debug"]:
        argv.append("--allow-debug")
    if params["pre_update_command"]:
        argv += ["--pre-update-command", params["pre_update_command"]]
    if params["post_update_command"]:
        argv += ["--post-update-command", params["post_update_command"]]
    for name, flag in (("hook_timeout", "--hook-timeout"), ("fence_timeout", "--fence-timeout")):
        if params[name] is not None:
            argv += [flag, "%g" % params[name]]
    return argv


def run_until_not_busy(module, argv):
    """Run the update, again after a growing delay while it exits 75 and retries remain:
    (rc, document, stdout, stderr, the refusals retried)."""
    busy = []
    delay = max(module.params["busy_delay"], 0)
    while True:
        rc, doc, out, err = run_json(module, argv)
        if rc != EX_TEMPFAIL or len(busy) >= module.params["busy_retries"]:
            return rc, doc, out, err, busy
        code, message = error_of(doc)
        busy.append(dict(rc=rc, error_code=code, message=message, waited=delay))
        time.sleep(delay)
        delay = min(delay * 2, 300)


def confirm_update(module, result, target, to_version):
    """Confirm inside this task that the host now runs ``to_version``; fail the task if not."""
    s_rc, status, _out, s_err = run_json(module, common_argv(module.params) + ["--status"])
    now = host_identity((status or {}).get("host"))
    result["running_version"] = now.get("version")
    result["after"] = dict(
        version=now.get("version"),
        seamsvn=now.get("seamsvn") or target.get("seamsvn"),
        mrseam=now.get("mrseam") or target.get("mrseam"),
    )
    if status is not None and now.get("version") == to_version:
        return
    result["changed"] = True
    lost = status is not None and module_lost(status.get("host"))
    if lost:
        result["fatal"] = True
        module.fail_json(msg=LOST_MESSAGE, **result)
    module.fail_json(
        msg="update reported success but the host runs %s, not %s (status exit %d): %s"
        % (now.get("version"), to_version, s_rc, s_err.strip()),
        **result,
    )


def main():
    spec = dict(COMMON_OPTIONS)
    spec.update(
        version=dict(type="str"),
        timeout=dict(type="int"),
        allow_debug=dict(type="bool", default=False),
        pre_update_command=dict(type="str"),
        post_update_command=dict(type="str"),
        hook_timeout=dict(type="float"),
        fence_timeout=dict(type="float"),
        busy_retries=dict(type="int", default=0),
        busy_delay=dict(type="float", default=5),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    argv = update_argv(module)
    rc, doc, out, err, busy = run_until_not_busy(module, argv)

    result = dict(
        rc=rc,
        changed=False,
        fatal=False,
        retryable=rc == EX_TEMPFAIL,
        busy_attempts=busy,
        cmd=argv + ["--json"],
        stderr=err,
    )
    if doc is None:
        module.fail_json(
            msg="tdxupdate printed no JSON document (exit %d): %s" % (rc, err.strip() or out),
            **result,
        )

    code, message = error_of(doc)
    host = doc.get("host") or {}
    before = host_identity(host)
    if doc.get("from_version"):
        before["version"] = doc["from_version"]
    target = candidate_identity(doc.get("selected"))
    if doc.get("to_version"):
        target["version"] = doc["to_version"]
    fatal = bool(doc.get("fatal")) or code == "module-lost"
    result.update(
        document=doc,
        from_version=doc.get("from_version"),
        to_version=doc.get("to_version"),
        before=before,
        after=before,
        running_version=before.get("version"),
        fatal=fatal,
        error_code=code,
        warnings_tdxupdate=doc.get("warnings") or [],
        kernel_error=doc.get("kernel_error"),
        svn_gain=doc.get("svn_gain"),
    )

    if fatal:
        result["after"] = dict(version=None, seamsvn=None, mrseam=None)
        result["running_version"] = None
        module.fail_json(msg="%s tdxupdate: %s" % (LOST_MESSAGE, message or ""), **result)
    if rc != 0 or not doc.get("ok"):
        result["msg"] = "tdxupdate --update failed (exit %d, %s): %s" % (rc, code, message)
        if rc == EX_TEMPFAIL:
            result["msg"] += " (try again later; retried %d times)" % len(busy)
        module.fail_json(**result)

    to_version = doc.get("to_version")
    would_change = bool(to_version) and to_version != before.get("version")
    if module.check_mode:
        changed = would_change and doc.get("selected") is not None
        if changed:
            result["after"] = target
    else:
        changed = bool(doc.get("changed"))
        if changed:
            confirm_update(module, result, target, to_version)
    result["changed"] = changed
    result["would_change"] = changed
    if module._diff:
        result["diff"] = dict(
            before_header="running module",
            after_header="after the update" + (" (check mode)" if module.check_mode else ""),
            before=describe(before),
            after=describe(result["after"]),
        )
    if changed:
        result["msg"] = "%s %s -> %s" % (
            "would update" if module.check_mode else "updated",
            before.get("version"),
            to_version,
        )
    else:
        result["msg"] = "no change: running %s is the newest eligible module" % before.get(
            "version"
        )
        if doc.get("to_version") and doc.get("to_version") == before.get("version"):
            result["msg"] = "no change: %s is already running" % to_version
    module.exit_json(**result)


if __name__ == "__main__":
    main()
