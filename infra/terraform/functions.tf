# The six Cloud Functions (gen2), each from local.functions through modules/function:
# its own service account (iam.tf), its own bundle (bundles.tf), the settings every
# function reads (local.common_env) plus its own, and its secrets.
#
# executor, slack_notify and the sweeper's dead-letter consumer are fed by Pub/Sub
# push subscriptions (pubsub.tf) rather than an Eventarc `event_trigger`, whose
# subscription cannot carry a dead-letter policy. slack_notify is a CloudEvent function
# (functions-framework turns the push body into the CloudEvent an Eventarc trigger
# would deliver); the executor is an HTTP function that reads the same push body
# itself, so it can also answer the ingress's metadata requests (POST /bqgate/catalog).
#
# The functions that call the executor (calls_executor: ingress and mcp) get its URL,
# so they are a second call of the same module: a resource cannot refer to its own
# instances.

locals {
  # What modules/function deploys, by function.
  function_deployments = {
    for k, f in local.functions : k => {
      project_id            = var.project_id
      region                = var.region
      labels                = var.labels
      name                  = local.function_names[k]
      description           = f.description
      entry_point           = k
      build_service_account = google_service_account.build.id
      bundle_bucket         = google_storage_bucket.bundles.name
      bundle_object         = google_storage_bucket_object.bundle[k].name
      service_account_email = google_service_account.function[k].email
      memory                = f.memory
      timeout               = f.timeout
      max_instances         = f.max_instances
      env                   = merge(local.common_env, f.env)
      secrets = [
        for s in concat(["audit_chain_key"], f.secrets) :
        { env = local.secrets[s], secret_id = google_secret_manager_secret.secret[s].secret_id }
      ]
      invokers = local.invokers[k]
    }
  }

  # Every deployed function (name, uri, url), by folder name.
  deployed_functions = merge(module.function, module.executor_caller)
}

module "function" {
  source     = "./modules/function"
  for_each   = { for k, f in local.functions : k => local.function_deployments[k] if !f.calls_executor }
  function   = each.value
  depends_on = [google_project_iam_member.build, google_project_iam_member.datastore_user]
}

module "executor_caller" {
  source   = "./modules/function"
  for_each = { for k, f in local.functions : k => local.function_deployments[k] if f.calls_executor }
  function = merge(each.value, {
    env = merge(each.value.env, { BQGATE_EXECUTOR_URL = module.function["executor"].uri })
  })
  depends_on = [google_project_iam_member.build, google_project_iam_member.datastore_user]
}
