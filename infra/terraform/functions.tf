# The five Cloud Functions (gen2). Each runs as its own service account (iam.tf)
# from its own bundle (bundles.tf).
#
# executor and slack_notify are fed by Pub/Sub, but they are deployed without an
# `event_trigger`: the subscription an Eventarc trigger creates is managed by
# Eventarc and cannot carry a dead-letter policy. Instead pubsub.tf declares push
# subscriptions to the functions' URLs (authenticated with an OIDC token of a
# dedicated push service account) that do have a dead-letter topic and a retry
# policy. slack_notify is a CloudEvent function (functions-framework turns the push
# body into the CloudEvent an Eventarc trigger would deliver); the executor is an HTTP
# function that reads the same push body itself, so it can also answer the ingress's
# metadata requests (POST /bqgate/catalog).

resource "google_cloudfunctions2_function" "ingress" {
  project     = var.project_id
  location    = var.region
  name        = local.function_names.ingress
  description = local.functions.ingress.description
  labels      = var.labels

  build_config {
    runtime         = "python312"
    entry_point     = "ingress"
    service_account = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.bundles.name
        object = google_storage_bucket_object.bundle["ingress"].name
      }
    }
  }

  service_config {
    service_account_email          = google_service_account.function["ingress"].email
    available_memory               = "512Mi"
    timeout_seconds                = 120
    max_instance_count             = var.max_instance_count
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    environment_variables = merge(local.common_env, {
      BQGATE_EXECUTOR_URL = google_cloudfunctions2_function.executor.service_config[0].uri
    })

    secret_environment_variables {
      key        = "BQGATE_AUDIT_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.audit_chain_key.secret_id
      version    = "latest"
    }
  }

  lifecycle {
    precondition {
      condition     = !var.require_cloud_run_iam || length(var.ingress_invokers) > 0
      error_message = "require_cloud_run_iam = true needs at least one member in ingress_invokers."
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_project_iam_member.datastore_user,
    google_project_service.gateway,
    google_secret_manager_secret_iam_member.audit_chain_key,
  ]
}

# The MCP endpoint (<url>/mcp) for agents that speak MCP: the ingress's core behind the
# MCP SDK's Streamable HTTP transport, in its own function because that transport is ASGI
# (the ingress is WSGI) and its dependencies stay out of the ingress's bundle. Public at the
# network level like the ingress, with the same optional Cloud Run IAM front; it calls the
# executor like the ingress does. execute_sql waits up to BQGATE_MCP_WAIT_MS (30 s).
resource "google_cloudfunctions2_function" "mcp" {
  project     = var.project_id
  location    = var.region
  name        = local.function_names.mcp
  description = local.functions.mcp.description
  labels      = var.labels

  build_config {
    runtime         = "python312"
    entry_point     = "mcp"
    service_account = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.bundles.name
        object = google_storage_bucket_object.bundle["mcp"].name
      }
    }
  }

  service_config {
    service_account_email          = google_service_account.function["mcp"].email
    available_memory               = "512Mi"
    timeout_seconds                = 300
    max_instance_count             = var.max_instance_count
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    environment_variables = merge(local.common_env, {
      BQGATE_EXECUTOR_URL = google_cloudfunctions2_function.executor.service_config[0].uri
    })

    secret_environment_variables {
      key        = "BQGATE_AUDIT_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.audit_chain_key.secret_id
      version    = "latest"
    }
  }

  lifecycle {
    precondition {
      condition     = !var.require_cloud_run_iam || length(var.ingress_invokers) > 0
      error_message = "require_cloud_run_iam = true needs at least one member in ingress_invokers."
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_project_iam_member.datastore_user,
    google_project_service.gateway,
    google_secret_manager_secret_iam_member.audit_chain_key,
  ]
}

# Reached by ingress over HTTPS (fast path) and by Pub/Sub push, so its
# network ingress is open; only those two identities may invoke it (iam.tf).
# Its timeout stays under the push subscription's 600 s ack deadline.
resource "google_cloudfunctions2_function" "executor" {
  project     = var.project_id
  location    = var.region
  name        = local.function_names.executor
  description = local.functions.executor.description
  labels      = var.labels

  build_config {
    runtime         = "python312"
    entry_point     = "executor"
    service_account = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.bundles.name
        object = google_storage_bucket_object.bundle["executor"].name
      }
    }
  }

  service_config {
    service_account_email          = google_service_account.function["executor"].email
    available_memory               = "1Gi"
    timeout_seconds                = local.executor_timeout_seconds
    max_instance_count             = var.max_instance_count
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    environment_variables = merge(local.common_env, {
      BQGATE_JOB_TIMEOUT_MS = tostring(local.executor_job_timeout_ms)
    })

    secret_environment_variables {
      key        = "BQGATE_AUDIT_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.audit_chain_key.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "BQGATE_HMAC_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.masking_hmac_key.secret_id
      version    = "latest"
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_project_iam_member.datastore_user,
    google_project_service.gateway,
    google_secret_manager_secret_iam_member.audit_chain_key,
    google_secret_manager_secret_iam_member.executor_hmac_key,
  ]
}

# Public so Slack can reach it (the code verifies Slack's request signature) and
# approvers' browsers can open the console under /console (OIDC sign-in, signed
# session cookie). Slack waits 3 s for an interactivity answer.
resource "google_cloudfunctions2_function" "approvals" {
  project     = var.project_id
  location    = var.region
  name        = local.function_names.approvals
  description = local.functions.approvals.description
  labels      = var.labels

  build_config {
    runtime         = "python312"
    entry_point     = "approvals"
    service_account = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.bundles.name
        object = google_storage_bucket_object.bundle["approvals"].name
      }
    }
  }

  service_config {
    service_account_email          = google_service_account.function["approvals"].email
    available_memory               = "512Mi"
    timeout_seconds                = 60
    max_instance_count             = var.max_instance_count
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    environment_variables = merge(local.common_env, {
      BQGATE_CONSOLE_CLIENT_ID = var.console_oidc_client_id
      BQGATE_CONSOLE_ISSUER    = var.console_oidc_issuer
    })

    secret_environment_variables {
      key        = "BQGATE_AUDIT_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.audit_chain_key.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "BQGATE_SLACK_BOT_TOKEN"
      project_id = var.project_id
      secret     = google_secret_manager_secret.slack_bot_token.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "BQGATE_SLACK_SIGNING_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.slack_signing_secret.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "BQGATE_CONSOLE_CLIENT_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.console_client_secret.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "BQGATE_CONSOLE_SESSION_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.console_session_key.secret_id
      version    = "latest"
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_project_iam_member.datastore_user,
    google_project_service.gateway,
    google_secret_manager_secret_iam_member.approvals_console_client_secret,
    google_secret_manager_secret_iam_member.approvals_console_session_key,
    google_secret_manager_secret_iam_member.approvals_slack_bot_token,
    google_secret_manager_secret_iam_member.audit_chain_key,
    google_secret_manager_secret_iam_member.approvals_slack_signing_secret,
  ]
}

# Invoked only by its Pub/Sub push identity (iam.tf).
resource "google_cloudfunctions2_function" "slack_notify" {
  project     = var.project_id
  location    = var.region
  name        = local.function_names.slack_notify
  description = local.functions.slack_notify.description
  labels      = var.labels

  build_config {
    runtime         = "python312"
    entry_point     = "slack_notify"
    service_account = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.bundles.name
        object = google_storage_bucket_object.bundle["slack_notify"].name
      }
    }
  }

  service_config {
    service_account_email          = google_service_account.function["slack_notify"].email
    available_memory               = "256Mi"
    timeout_seconds                = 60
    max_instance_count             = var.max_instance_count
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    environment_variables = merge(local.common_env, {
      BQGATE_SLACK_CHANNEL = var.slack_channel
    })

    secret_environment_variables {
      key        = "BQGATE_AUDIT_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.audit_chain_key.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "BQGATE_SLACK_BOT_TOKEN"
      project_id = var.project_id
      secret     = google_secret_manager_secret.slack_bot_token.secret_id
      version    = "latest"
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_project_iam_member.datastore_user,
    google_project_service.gateway,
    google_secret_manager_secret_iam_member.audit_chain_key,
    google_secret_manager_secret_iam_member.slack_notify_slack_bot_token,
  ]
}

# Called by Cloud Scheduler (scheduler.tf) and by Pub/Sub push of the dead-letter
# topics (pubsub.tf); only those two identities may invoke it (iam.tf). It never
# talks to Slack or BigQuery: it publishes to the work topics, and appends to the
# session record (the chain key, like every function).
resource "google_cloudfunctions2_function" "sweeper" {
  project     = var.project_id
  location    = var.region
  name        = local.function_names.sweeper
  description = local.functions.sweeper.description
  labels      = var.labels

  build_config {
    runtime         = "python312"
    entry_point     = "sweeper"
    service_account = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.bundles.name
        object = google_storage_bucket_object.bundle["sweeper"].name
      }
    }
  }

  service_config {
    service_account_email          = google_service_account.function["sweeper"].email
    available_memory               = "256Mi"
    timeout_seconds                = 300
    max_instance_count             = 2
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    environment_variables          = local.common_env

    secret_environment_variables {
      key        = "BQGATE_AUDIT_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.audit_chain_key.secret_id
      version    = "latest"
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_project_iam_member.datastore_user,
    google_project_service.gateway,
    google_secret_manager_secret_iam_member.audit_chain_key,
  ]
}
