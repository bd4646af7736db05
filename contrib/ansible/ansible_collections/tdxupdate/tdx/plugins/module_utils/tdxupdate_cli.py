# -*- coding: utf-8 -*-
# Copyright: tdxupdate developers
# MIT License (see the repository's licence)
"""Run the installed tdxupdate with --json and read its document (shared by the modules)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

EX_TEMPFAIL = 75

COMMON_OPTIONS = dict(
    executable=dict(type="str", default="tdxupdate"),
    repo=dict(type="str"),
    config=dict(type="path"),
    sysroot=dict(type="path"),
    state_dir=dict(type="path"),
    trusted_keys=dict(type="path"),
    offline=dict(type="bool", default=False),
    extra_args=dict(type="list", elements="str", default=[]),
)

SVN_KEYS = ("seamsvn", "module_seamsvn", "svn")
MRSEAM_KEYS = ("mrseam", "module_mrseam")


def common_argv(params):
    """The options every action shares, in tdxupdate's spelling."""
    argv = [params["executable"]]
    for name, flag in (
        ("repo", "--repo"),
        ("config", "--config"),
        ("sysroot", "--sysroot"),
        ("state_dir", "--state-dir"),
        ("trusted_keys", "--trusted-keys"),
    ):
        if params.get(name):
            argv += [flag, str(params[name])]
    if params.get("offline"):
        argv.append("--offline")
    argv += list(params.get("extra_args") or [])
    return argv


def run_json(module, argv):
    """Run argv; return (rc, document or None, stdout, stderr)."""
    rc, out, err = module.run_command(argv + ["--json"], check_rc=False)
    doc = None
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        doc = None
    if doc is not None and not isinstance(doc, dict):
        doc = None
    return rc, doc, out, err


def first(mapping, keys):
    """The first of keys present (and not None) in mapping."""
    if not isinstance(mapping, dict):
        return None
    for key in keys:
        if mapping.get(key) is not None:
            return mapping[key]
    return None


def host_identity(host):
    """Version, SEAMSVN and MRSEAM of the running module, as far as the document says."""
    host = host or {}
    return dict(
        version=host.get("module_version"),
        seamsvn=first(host, SVN_KEYS),
        mrseam=first(host, MRSEAM_KEYS),
    )


def candidate_identity(candidate):
    """Version, SEAMSVN and MRSEAM of a candidate (None when the document lacks them)."""
    candidate = candidate or {}
    return dict(
        version=candidate.get("version"),
        seamsvn=first(candidate, SVN_KEYS),
        mrseam=first(candidate, MRSEAM_KEYS),
    )


def module_lost(host):
    """True when the host's running module is gone (version unreadable while tdx_host exists)."""
    host = host or {}
    if host.get("module_lost") is not None:
        return bool(host["module_lost"])
    if host.get("module_version") is not None:
        return False
    for check in host.get("checks") or []:
        if check.get("name") == "module-version" and not check.get("ok"):
            detail = str(check.get("detail", "")).lower()
            return "lost" in detail or "enxio" in detail
    return False


def error_of(doc):
    """(code, message) of the document's error, or (None, None)."""
    error = (doc or {}).get("error") or {}
    return error.get("code"), error.get("message")


def describe(identity):
    """A few lines for diff mode."""
    lines = ["module_version: %s" % (identity.get("version") or "unknown")]
    lines.append("seamsvn: %s" % (identity.get("seamsvn") or "unknown"))
    lines.append("mrseam: %s" % (identity.get("mrseam") or "unknown"))
    return "\n".join(lines) + "\n"
