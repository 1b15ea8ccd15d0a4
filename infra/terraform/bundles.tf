# One zip per function: functions/<name>/ + shared/bqgate/ (as bqgate/) +
# the policy file (as policy.yaml), uploaded under its content hash so that any
# change to the function, the library or the policy redeploys the function.
# infra/package.py (`nox -s package`) builds the same layout outside Terraform.

module "bundle_files" {
  source       = "./modules/bundle-files"
  for_each     = local.functions
  function_dir = "${local.repo_root}/functions/${each.key}"
  shared_dir   = "${local.repo_root}/shared/bqgate"
  policy_file  = var.policy_file
}

data "archive_file" "bundle" {
  for_each    = local.functions
  type        = "zip"
  output_path = "${path.module}/build/${each.key}.zip"

  dynamic "source" {
    for_each = module.bundle_files[each.key].files
    content {
      content  = file(source.value)
      filename = source.key
    }
  }
}

resource "google_storage_bucket_object" "bundle" {
  for_each = local.functions
  bucket   = google_storage_bucket.bundles.name
  name     = "${each.key}-${data.archive_file.bundle[each.key].output_md5}.zip"
  source   = data.archive_file.bundle[each.key].output_path

  lifecycle {
    precondition {
      condition = alltrue([
        for f in ["main.py", "requirements.txt", "bqgate/__init__.py", "policy.yaml"] :
        contains(keys(module.bundle_files[each.key].files), f)
      ])
      error_message = "A function bundle needs main.py and requirements.txt in functions/<name>/ and the bqgate package."
    }
  }
}
