# -*- coding: utf-8 -*-
# Copyright: tdxupdate developers
# MIT License (see the repository's licence)
"""The options every module of the collection shares (module_utils.tdxupdate_cli.COMMON_OPTIONS)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  executable:
    description: The tdxupdate program on the managed host.
    type: str
    default: tdxupdate
  repo:
    description: Module repository (directory or URL), as C(--repo).
    type: str
  config:
    description: tdxupdate configuration file, as C(--config).
    type: path
  sysroot:
    description: Find the host's C(/sys) and C(/proc) under this directory, as C(--sysroot).
    type: path
  state_dir:
    description: Lock and history directory, as C(--state-dir).
    type: path
  trusted_keys:
    description: File of extra trusted signer fingerprints, as C(--trusted-keys).
    type: path
  offline:
    description: Remote repositories only from the cache, as C(--offline).
    type: bool
    default: false
  extra_args:
    description: Further tdxupdate arguments, one list item each.
    type: list
    elements: str
    default: []
"""
