# Values derived from the variables, shared by several files.

locals {
  # The five functions, by folder name (functions/<name>/main.py); each
  # folder's functions-framework target has the same name (functions.tf).
  functions = {
    approvals = {
      description = "Slack interactivity endpoint, approver API and approver console."
    }
    executor = {
      description = "Runs approved and allowed BigQuery jobs; the only identity with BigQuery access."
    }
    ingress = {
      description = "BigQuery REST API for AI coding agents: authenticate, classify, record, route."
    }
    mcp = {
      description = "MCP server (Streamable HTTP) for AI coding agents: BigQuery MCP tools through the gateway."
    }
    slack_notify = {
      description = "Posts approval requests to Slack."
    }
    sweeper = {
      description = "Outbox reconciler, approval expiry, orphaned jobs (Cloud Scheduler) and dead-letter consumer."
    }
  }

  # Cloud Run service names cannot hold underscores.
  function_names = { for k in keys(local.functions) : k => "${var.name_prefix}-${replace(k, "_", "-")}" }

  # Settings every function reads (see shared/bqgate/settings.py).
  # BQGATE_DEV_MODE is never set in the cloud.
  common_env = {
    BQGATE_ANCHOR_BUCKET      = google_storage_bucket.audit_anchors.name
    BQGATE_APPROVALS_TOPIC    = google_pubsub_topic.approvals.name
    BQGATE_CALL_TIMEOUT_MS    = tostring(var.call_timeout_ms)
    BQGATE_EXECUTE_TOPIC      = google_pubsub_topic.execute.name
    BQGATE_FIRESTORE_DATABASE = google_firestore_database.gateway.name
    BQGATE_LOCATION           = var.bigquery_location
    BQGATE_POLICY             = "policy.yaml"
    BQGATE_PROJECT            = var.project_id
    BQGATE_WAREHOUSE_PROJECT  = local.warehouse_project_id
  }

  # The executor's timeout (under the execute subscription's 600 s ack deadline), and
  # the longest it waits for one BigQuery job before cancelling it: a minute less, so a
  # slow job still ends with an error instead of a killed function and a redelivery.
  executor_timeout_seconds = 540
  executor_job_timeout_ms  = (local.executor_timeout_seconds - 60) * 1000

  # The log lines that carry session checkpoints (bqgate.adapters.anchor_sinks.LogSink).
  audit_anchor_log_filter = "jsonPayload.bqgate_anchor:*"

  # Firestore collection groups whose documents carry an `expire_at` timestamp
  # that the TTL policy deletes them at.
  firestore_ttl_collections = ["approval_quotas", "events", "jobs", "outbox", "pages", "sessions"]

  # Pub/Sub's own service agent: it publishes dead letters and acks the
  # messages it forwarded, so it needs rights on both sides.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.gateway.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  repo_root = "${path.module}/../.."

  warehouse_project_id = coalesce(var.warehouse_project_id, var.project_id)
}

data "google_project" "gateway" {
  project_id = var.project_id
}
