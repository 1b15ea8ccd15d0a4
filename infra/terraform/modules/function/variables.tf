variable "function" {
  description = "The function: names, bundle, identity, sizing, settings, secrets and invokers."
  type = object({
    project_id            = string
    region                = string
    labels                = map(string)
    name                  = string # the Cloud Run service name
    description           = string
    entry_point           = string # the functions-framework target
    build_service_account = string # id of the Cloud Build service account
    bundle_bucket         = string
    bundle_object         = string
    service_account_email = string # the function's own runtime identity
    memory                = string
    timeout               = number # seconds
    max_instances         = number
    env                   = map(string)
    # Mounted as environment variables in this order, and readable by the function.
    secrets = list(object({ env = string, secret_id = string }))
    # Members given roles/run.invoker, by a key known at plan time.
    invokers = map(string)
  })
}
