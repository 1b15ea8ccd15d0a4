# Values derived from the variables, shared by several files.

locals {
  # The six functions, by folder name (functions/<name>/main.py); each folder's
  # functions-framework target has the same name. Everything a function is deployed
  # with is here; functions.tf deploys each through modules/function:
  #   env            settings beyond common_env (names from shared/bqgate/settings.py)
  #   secrets        secrets.tf secrets mounted as their environment variable, in this
  #                  order, after the audit chain key that every function holds; its
  #                  service account may read exactly these
  #   publishes      work topics (pubsub.tf) its service account may publish to
  #   calls_executor it calls the executor over HTTPS, so it gets BQGATE_EXECUTOR_URL
  #                  and may invoke the executor (iam.tf)
  functions = {
    approvals = {
      description    = "Slack interactivity endpoint, approver API and approver console."
      memory         = "512Mi"
      timeout        = 60 # Slack waits 3 s for an interactivity answer
      max_instances  = var.max_instance_count
      env            = { BQGATE_CONSOLE_CLIENT_ID = var.console_oidc_client_id, BQGATE_CONSOLE_ISSUER = var.console_oidc_issuer }
      secrets        = ["slack_bot_token", "slack_signing_secret", "console_client_secret", "console_session_key"]
      publishes      = ["execute"] # approved jobs
      calls_executor = false
    }
    executor = {
      description    = "Runs approved and allowed BigQuery jobs; the only identity with BigQuery access."
      memory         = "1Gi"
      timeout        = local.executor_timeout_seconds
      max_instances  = var.max_instance_count
      env            = { BQGATE_JOB_TIMEOUT_MS = tostring(local.executor_job_timeout_ms) }
      secrets        = ["masking_hmac_key"]
      publishes      = ["approvals"] # the cost guard and policy-bound jobs
      calls_executor = false
    }
    ingress = {
      description    = "BigQuery REST API for AI coding agents: authenticate, classify, record, route."
      memory         = "512Mi"
      timeout        = 120
      max_instances  = var.max_instance_count
      env            = {}
      secrets        = []
      publishes      = ["approvals", "execute"]
      calls_executor = true # allowed queries (the fast path) and metadata
    }
    mcp = {
      description    = "MCP server (Streamable HTTP) for AI coding agents: BigQuery MCP tools through the gateway."
      memory         = "512Mi"
      timeout        = 300 # execute_sql waits up to BQGATE_MCP_WAIT_MS (30 s)
      max_instances  = var.max_instance_count
      env            = {}
      secrets        = []
      publishes      = ["approvals", "execute"] # the direct path's fallback; closing a cancelled or expired approval's message
      calls_executor = true
    }
    slack_notify = {
      description    = "Posts approval requests to Slack."
      memory         = "256Mi"
      timeout        = 60
      max_instances  = var.max_instance_count
      env            = { BQGATE_SLACK_CHANNEL = var.slack_channel }
      secrets        = ["slack_bot_token"]
      publishes      = []
      calls_executor = false
    }
    sweeper = {
      description    = "Outbox reconciler, approval expiry, orphaned jobs (Cloud Scheduler) and dead-letter consumer."
      memory         = "256Mi"
      timeout        = 300
      max_instances  = 2
      env            = {}
      secrets        = []                       # no BigQuery, no Slack
      publishes      = ["approvals", "execute"] # re-publishes outbox records
      calls_executor = false
    }
  }

  # Cloud Run service names cannot hold underscores.
  function_names = { for k in keys(local.functions) : k => "${var.name_prefix}-${replace(k, "_", "-")}" }

  # Settings every function reads (see shared/bqgate/settings.py).
  # BQGATE_DEV_MODE is never set in the cloud.
  common_env = {
    BQGATE_ANCHOR_BUCKET      = google_storage_bucket.audit_anchors.name
    BQGATE_APPROVALS_TOPIC    = google_pubsub_topic.work["approvals"].name
    BQGATE_CALL_TIMEOUT_MS    = tostring(var.call_timeout_ms)
    BQGATE_EXECUTE_TOPIC      = google_pubsub_topic.work["execute"].name
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
