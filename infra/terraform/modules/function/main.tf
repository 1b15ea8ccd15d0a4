# One Cloud Function (gen2) from its bundle, with who may invoke it and the secrets
# it mounts. The root module deploys every function through this one definition
# (functions.tf), with the values of its table of functions (locals.tf).
#
# No `event_trigger`: the subscription an Eventarc trigger creates is managed by
# Eventarc and cannot carry a dead-letter policy. Pub/Sub-fed functions get push
# subscriptions instead (pubsub.tf), authenticated with an OIDC token of a dedicated
# push service account, which `invokers` lets in.

# Deployed once its identity may read its secrets (without them it fails to start).
resource "google_cloudfunctions2_function" "function" {
  project     = var.function.project_id
  location    = var.function.region
  name        = var.function.name
  description = var.function.description
  labels      = var.function.labels

  build_config {
    runtime         = "python312"
    entry_point     = var.function.entry_point
    service_account = var.function.build_service_account
    source {
      storage_source {
        bucket = var.function.bundle_bucket
        object = var.function.bundle_object
      }
    }
  }

  service_config {
    service_account_email          = var.function.service_account_email
    available_memory               = var.function.memory
    timeout_seconds                = var.function.timeout
    max_instance_count             = var.function.max_instances
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    environment_variables          = var.function.env

    dynamic "secret_environment_variables" {
      for_each = var.function.secrets
      content {
        key        = secret_environment_variables.value.env
        project_id = var.function.project_id
        secret     = secret_environment_variables.value.secret_id
        version    = "latest"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = length(var.function.invokers) > 0
      error_message = "Nobody may invoke ${var.function.name}: require_cloud_run_iam = true needs at least one member in ingress_invokers."
    }
  }

  depends_on = [google_secret_manager_secret_iam_member.secret]
}

# Only the members in var.function.invokers may call the function (Cloud Run IAM;
# its network ingress is open to all).
resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = var.function.invokers
  project  = var.function.project_id
  location = var.function.region
  name     = google_cloudfunctions2_function.function.name
  role     = "roles/run.invoker"
  member   = each.value
}

# The function's identity may read exactly the secrets it mounts.
resource "google_secret_manager_secret_iam_member" "secret" {
  for_each  = { for s in var.function.secrets : s.env => s.secret_id }
  project   = var.function.project_id
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${var.function.service_account_email}"
}
