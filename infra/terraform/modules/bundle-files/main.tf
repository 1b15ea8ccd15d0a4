# Which files go into one function's bundle, and under which name.
#
# A bundle is the function's own folder, plus a copy of the shared library
# `shared/bqgate` as `bqgate/`, plus the policy file as `policy.yaml`, all at the
# bundle root. This module only computes the file list (it has no providers), so
# tests can evaluate it offline with `terraform console` and compare it with
# `infra/package.py`, which builds the same layout for `nox -s package`.

locals {
  # Never shipped: bytecode caches, hidden files and folders, compiled files.
  junk = "(^|/)(__pycache__|\\.[^/]*)(/|$)|\\.py[co]$"

  function_files = {
    for f in fileset(var.function_dir, "**") : f => "${var.function_dir}/${f}"
    if !can(regex(local.junk, f)) && !can(regex("^tests/", f))
  }

  # `bqgate/dev` is the local dev stack (emulators, fakes): never deployed.
  shared_files = {
    for f in fileset(var.shared_dir, "**") : "bqgate/${f}" => "${var.shared_dir}/${f}"
    if !can(regex(local.junk, f)) && !can(regex("^dev/", f))
  }

  files = merge(local.function_files, local.shared_files, { "policy.yaml" = var.policy_file })
}
