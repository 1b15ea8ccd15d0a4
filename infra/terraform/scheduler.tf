# Cloud Scheduler: calls the sweeper on var.sweep_schedule (every minute by
# default) with an OIDC token of its own service account (iam.tf), which may
# invoke the sweeper and nothing else (granted by modules/function, hence
# depends_on). One sweep re-publishes outbox records not marked sent after their
# deadline, expires stale approval requests (closing their Slack messages) and fails
# orphaned RUNNING jobs; every step is idempotent, so an overlapping or retried call
# is harmless.

resource "google_cloud_scheduler_job" "sweep" {
  project          = var.project_id
  region           = var.region
  name             = "${var.name_prefix}-sweep"
  description      = "bqgate sweeper: outbox reconciler, approval expiry, orphaned jobs."
  schedule         = var.sweep_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "300s"

  retry_config {
    retry_count          = 1
    min_backoff_duration = "10s"
    max_backoff_duration = "30s"
  }

  http_target {
    http_method = "POST"
    uri         = "${module.function["sweeper"].uri}/"
    body        = base64encode("{}")
    headers = {
      "Content-Type" = "application/json"
    }
    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = module.function["sweeper"].uri
    }
  }

  depends_on = [module.function, google_project_service.gateway]
}
