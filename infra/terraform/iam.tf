# Identities and grants. One service account per function, each with only what
# it needs; no service account keys anywhere. Only the executor has BigQuery
# roles: the jobUser role on the warehouse project and data roles on the
# datasets listed in var.warehouse_datasets, nothing project-wide.
#
# What a function may do follows from local.functions: it may read the secrets it
# mounts and invoke the functions in local.invokers (both granted by
# modules/function), and publish to the topics it `publishes` (below).

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

# --- Pub/Sub: each function publishes to the work topics local.functions names.

resource "google_pubsub_topic_iam_member" "publisher" {
  for_each = {
    for p in flatten([for fn, f in local.functions : [for t in f.publishes : { function = fn, topic = t }]]) :
    "${p.function}/${p.topic}" => p
  }
  project = var.project_id
  topic   = google_pubsub_topic.work[each.value.topic].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function[each.value.function].member
}

# --- Who may invoke each function (roles/run.invoker on its Cloud Run service,
# granted by modules/function), by a key known at plan time.

locals {
  invokers = {
    # Public: Slack must reach it (the code verifies Slack's request signature), and
    # approvers' browsers reach the console under /console (which signs them in itself,
    # with the same identity checks as the approver API).
    approvals = { allUsers = "allUsers" }
    # Pub/Sub pushes to it, and the functions that call it directly (allowed queries,
    # metadata).
    executor = merge(
      { push = google_service_account.push["executor"].member },
      { for k, f in local.functions : k => google_service_account.function[k].member if f.calls_executor },
    )
    # Public at the network level (README), unless var.require_cloud_run_iam; the
    # gateway authenticates every request itself either way.
    ingress = local.agent_invokers
    mcp     = local.agent_invokers
    # Only its Pub/Sub push identity.
    slack_notify = { push = google_service_account.push["slack_notify"].member }
    # Cloud Scheduler's identity and its dead-letter push identity.
    sweeper = {
      push      = google_service_account.push["sweeper"].member
      scheduler = google_service_account.scheduler.member
    }
  }
  agent_invokers        = { for m in local.agent_invoker_members : m => m }
  agent_invoker_members = var.require_cloud_run_iam ? var.ingress_invokers : ["allUsers"]
}

# Cloud Scheduler calls the sweeper with an OIDC token of this identity.
resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "bqgate Cloud Scheduler -> sweeper"
  depends_on   = [google_project_service.gateway]
}

# --- Pub/Sub service agent: mints the push OIDC tokens, moves dead letters.

resource "google_service_account_iam_member" "push_token_creator" {
  for_each           = google_service_account.push
  service_account_id = each.value.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

resource "google_pubsub_topic_iam_member" "dead_letter_pubsub_agent" {
  for_each = google_pubsub_topic.dead_letter
  project  = var.project_id
  topic    = each.value.name
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent" {
  for_each     = local.work_topics
  project      = var.project_id
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
