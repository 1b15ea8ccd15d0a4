# Identities and grants. One service account per function, each with only what
# it needs; no service account keys anywhere. Only the executor has BigQuery
# roles: the jobUser role on the warehouse project and data roles on the
# datasets listed in var.warehouse_datasets, nothing project-wide.

resource "google_service_account" "function" {
  for_each     = local.functions
  project      = var.project_id
  account_id   = local.function_names[each.key]
  display_name = "bqgate ${each.key} function"
  description  = local.functions[each.key].description
  depends_on   = [google_project_service.gateway]
}

# Identities Pub/Sub pushes with (OIDC token); each may invoke only its function.
resource "google_service_account" "push" {
  for_each     = toset(["executor", "slack_notify", "sweeper"])
  project      = var.project_id
  account_id   = "${local.function_names[each.key]}-push"
  display_name = "bqgate Pub/Sub push to ${each.key}"
  depends_on   = [google_project_service.gateway]
}

# Cloud Build identity for the function builds (the default compute service
# account often lacks these rights, or has far more).
resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-build"
  display_name = "bqgate function builds"
  depends_on   = [google_project_service.gateway]
}

resource "google_project_iam_member" "build" {
  project = var.project_id
  role    = "roles/cloudbuild.builds.builder"
  member  = google_service_account.build.member
}

# --- Firestore: every function reads and writes job state, only in the gateway database.

resource "google_project_iam_member" "datastore_user" {
  for_each = google_service_account.function
  project  = var.project_id
  role     = "roles/datastore.user"
  member   = each.value.member

  condition {
    title       = "bqgate Firestore database only"
    description = "Only the gateway's Firestore database."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${var.firestore_database}\""
  }
}

# --- executor: the only BigQuery identity.

resource "google_project_iam_member" "executor_bigquery_job_user" {
  project = local.warehouse_project_id
  role    = "roles/bigquery.jobUser"
  member  = google_service_account.function["executor"].member
}

resource "google_bigquery_dataset_iam_member" "executor" {
  for_each   = var.warehouse_datasets
  project    = local.warehouse_project_id
  dataset_id = each.key
  role       = each.value == "write" ? "roles/bigquery.dataEditor" : "roles/bigquery.dataViewer"
  member     = google_service_account.function["executor"].member
}

# The executor sends approval requests on (the cost guard and policy-bound jobs).
resource "google_pubsub_topic_iam_member" "executor_approvals" {
  project = var.project_id
  topic   = google_pubsub_topic.approvals.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["executor"].member
}

resource "google_secret_manager_secret_iam_member" "executor_hmac_key" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.masking_hmac_key.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function["executor"].member
}

# Pub/Sub pushes to the executor, and ingress and mcp call it directly (allowed queries,
# metadata).
resource "google_cloud_run_v2_service_iam_member" "executor_push" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.executor.name
  role     = "roles/run.invoker"
  member   = google_service_account.push["executor"].member
}

resource "google_cloud_run_v2_service_iam_member" "executor_from_ingress" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.executor.name
  role     = "roles/run.invoker"
  member   = google_service_account.function["ingress"].member
}

resource "google_cloud_run_v2_service_iam_member" "executor_from_mcp" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.executor.name
  role     = "roles/run.invoker"
  member   = google_service_account.function["mcp"].member
}

# --- ingress: publishes to both topics; public at the network level (README).

resource "google_pubsub_topic_iam_member" "ingress_execute" {
  project = var.project_id
  topic   = google_pubsub_topic.execute.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["ingress"].member
}

resource "google_pubsub_topic_iam_member" "ingress_approvals" {
  project = var.project_id
  topic   = google_pubsub_topic.approvals.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["ingress"].member
}

resource "google_cloud_run_v2_service_iam_member" "ingress_invoker" {
  for_each = var.require_cloud_run_iam ? toset(var.ingress_invokers) : toset(["allUsers"])
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.ingress.name
  role     = "roles/run.invoker"
  member   = each.value
}

# --- mcp: publishes to execute (the fallback of the direct path); public like the ingress.

resource "google_pubsub_topic_iam_member" "mcp_execute" {
  project = var.project_id
  topic   = google_pubsub_topic.execute.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["mcp"].member
}

resource "google_cloud_run_v2_service_iam_member" "mcp_invoker" {
  for_each = var.require_cloud_run_iam ? toset(var.ingress_invokers) : toset(["allUsers"])
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.mcp.name
  role     = "roles/run.invoker"
  member   = each.value
}

# --- approvals: publishes approved jobs; public so Slack and approvers' browsers reach it.

resource "google_pubsub_topic_iam_member" "approvals_execute" {
  project = var.project_id
  topic   = google_pubsub_topic.execute.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["approvals"].member
}

resource "google_secret_manager_secret_iam_member" "approvals_slack_bot_token" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.slack_bot_token.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function["approvals"].member
}

resource "google_secret_manager_secret_iam_member" "approvals_slack_signing_secret" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.slack_signing_secret.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function["approvals"].member
}

resource "google_secret_manager_secret_iam_member" "approvals_console_client_secret" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.console_client_secret.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function["approvals"].member
}

resource "google_secret_manager_secret_iam_member" "approvals_console_session_key" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.console_session_key.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function["approvals"].member
}

# Public: Slack must reach it, and approvers' browsers reach the console (which signs
# them in itself, with the same identity checks as the approver API).
resource "google_cloud_run_v2_service_iam_member" "approvals_public" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.approvals.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# --- slack_notify: reads the bot token; invoked only by its Pub/Sub push identity.

resource "google_secret_manager_secret_iam_member" "slack_notify_slack_bot_token" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.slack_bot_token.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function["slack_notify"].member
}

resource "google_cloud_run_v2_service_iam_member" "slack_notify_push" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.slack_notify.name
  role     = "roles/run.invoker"
  member   = google_service_account.push["slack_notify"].member
}

# --- sweeper: re-publishes outbox records to both work topics; invoked only by
# Cloud Scheduler's identity and its dead-letter push identity. No BigQuery, no
# secrets: Firestore (datastore_user above) and publishing are all it does.

resource "google_pubsub_topic_iam_member" "sweeper_publisher" {
  for_each = {
    approvals = google_pubsub_topic.approvals.name
    execute   = google_pubsub_topic.execute.name
  }
  project = var.project_id
  topic   = each.value
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["sweeper"].member
}

# Cloud Scheduler calls the sweeper with an OIDC token of this identity.
resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "bqgate Cloud Scheduler -> sweeper"
  depends_on   = [google_project_service.gateway]
}

resource "google_cloud_run_v2_service_iam_member" "sweeper_scheduler" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.sweeper.name
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

resource "google_cloud_run_v2_service_iam_member" "sweeper_push" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.sweeper.name
  role     = "roles/run.invoker"
  member   = google_service_account.push["sweeper"].member
}

# --- Pub/Sub service agent: mints the push OIDC tokens, moves dead letters.

resource "google_service_account_iam_member" "push_token_creator" {
  for_each           = google_service_account.push
  service_account_id = each.value.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

resource "google_pubsub_topic_iam_member" "execute_dead_letter_pubsub_agent" {
  project = var.project_id
  topic   = google_pubsub_topic.execute_dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_topic_iam_member" "approvals_dead_letter_pubsub_agent" {
  project = var.project_id
  topic   = google_pubsub_topic.approvals_dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "execute_pubsub_agent" {
  project      = var.project_id
  subscription = google_pubsub_subscription.execute.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "approvals_pubsub_agent" {
  project      = var.project_id
  subscription = google_pubsub_subscription.approvals.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
