# Pub/Sub: the `execute` and `approvals` topics, each with a dead-letter topic.
#
# Every message on a work topic is delivered by a push subscription declared
# here (not by a function event_trigger, whose Eventarc-managed subscription
# cannot take a dead-letter policy in Terraform; see functions.tf). A message
# the function keeps failing is retried with exponential backoff and, after
# var.max_delivery_attempts deliveries, moved to the dead-letter topic. Each
# dead-letter topic has two subscriptions: a push to the sweeper's dead-letter
# consumer (a job whose execute message died is failed with a clear error), and a
# pull subscription that keeps every dead letter 7 days for inspection and replay:
#   gcloud pubsub subscriptions pull <prefix>-execute-dead-letter --auto-ack=false

locals {
  seven_days = "604800s"
}

resource "google_pubsub_topic" "execute" {
  project                    = var.project_id
  name                       = "${var.name_prefix}-execute"
  labels                     = var.labels
  message_retention_duration = local.seven_days
  depends_on                 = [google_project_service.gateway]
}

resource "google_pubsub_topic" "execute_dead_letter" {
  project    = var.project_id
  name       = "${var.name_prefix}-execute-dead-letter"
  labels     = var.labels
  depends_on = [google_project_service.gateway]
}

resource "google_pubsub_topic" "approvals" {
  project                    = var.project_id
  name                       = "${var.name_prefix}-approvals"
  labels                     = var.labels
  message_retention_duration = local.seven_days
  depends_on                 = [google_project_service.gateway]
}

resource "google_pubsub_topic" "approvals_dead_letter" {
  project    = var.project_id
  name       = "${var.name_prefix}-approvals-dead-letter"
  labels     = var.labels
  depends_on = [google_project_service.gateway]
}

# execute -> executor. The ack deadline is above the executor's 540 s timeout;
# the push path only names the topic in the CloudEvent source (any path
# reaches the function). Subscriptions never expire.
resource "google_pubsub_subscription" "execute" {
  project                    = var.project_id
  name                       = "${var.name_prefix}-execute-to-executor"
  topic                      = google_pubsub_topic.execute.id
  labels                     = var.labels
  ack_deadline_seconds       = 600
  message_retention_duration = local.seven_days

  expiration_policy {
    ttl = ""
  }

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.executor.service_config[0].uri}/projects/${var.project_id}/topics/${google_pubsub_topic.execute.name}"
    oidc_token {
      service_account_email = google_service_account.push["executor"].email
      audience              = google_cloudfunctions2_function.executor.service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.execute_dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  depends_on = [
    google_cloud_run_v2_service_iam_member.executor_push,
    google_pubsub_topic_iam_member.execute_dead_letter_pubsub_agent,
  ]
}

# approvals -> slack_notify; the ack deadline is above its 60 s timeout.
resource "google_pubsub_subscription" "approvals" {
  project                    = var.project_id
  name                       = "${var.name_prefix}-approvals-to-slack-notify"
  topic                      = google_pubsub_topic.approvals.id
  labels                     = var.labels
  ack_deadline_seconds       = 120
  message_retention_duration = local.seven_days

  expiration_policy {
    ttl = ""
  }

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.slack_notify.service_config[0].uri}/projects/${var.project_id}/topics/${google_pubsub_topic.approvals.name}"
    oidc_token {
      service_account_email = google_service_account.push["slack_notify"].email
      audience              = google_cloudfunctions2_function.slack_notify.service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.approvals_dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  depends_on = [
    google_cloud_run_v2_service_iam_member.slack_notify_push,
    google_pubsub_topic_iam_member.approvals_dead_letter_pubsub_agent,
  ]
}

# Dead letters are kept here: a topic without a subscription drops messages.
resource "google_pubsub_subscription" "execute_dead_letter" {
  project                    = var.project_id
  name                       = "${var.name_prefix}-execute-dead-letter"
  topic                      = google_pubsub_topic.execute_dead_letter.id
  labels                     = var.labels
  message_retention_duration = local.seven_days
  retain_acked_messages      = true

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "approvals_dead_letter" {
  project                    = var.project_id
  name                       = "${var.name_prefix}-approvals-dead-letter"
  topic                      = google_pubsub_topic.approvals_dead_letter.id
  labels                     = var.labels
  message_retention_duration = local.seven_days
  retain_acked_messages      = true

  expiration_policy {
    ttl = ""
  }
}

# Dead letters -> the sweeper's consumer (/dead-letter/{topic}). Retried with
# backoff while the sweeper fails; never dead-lettered again (the pull
# subscriptions above keep a copy of each regardless).
resource "google_pubsub_subscription" "execute_dead_letter_to_sweeper" {
  project                    = var.project_id
  name                       = "${var.name_prefix}-execute-dead-letter-to-sweeper"
  topic                      = google_pubsub_topic.execute_dead_letter.id
  labels                     = var.labels
  ack_deadline_seconds       = 60
  message_retention_duration = local.seven_days

  expiration_policy {
    ttl = ""
  }

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.sweeper.service_config[0].uri}/dead-letter/execute"
    oidc_token {
      service_account_email = google_service_account.push["sweeper"].email
      audience              = google_cloudfunctions2_function.sweeper.service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  depends_on = [google_cloud_run_v2_service_iam_member.sweeper_push]
}

resource "google_pubsub_subscription" "approvals_dead_letter_to_sweeper" {
  project                    = var.project_id
  name                       = "${var.name_prefix}-approvals-dead-letter-to-sweeper"
  topic                      = google_pubsub_topic.approvals_dead_letter.id
  labels                     = var.labels
  ack_deadline_seconds       = 60
  message_retention_duration = local.seven_days

  expiration_policy {
    ttl = ""
  }

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.sweeper.service_config[0].uri}/dead-letter/approvals"
    oidc_token {
      service_account_email = google_service_account.push["sweeper"].email
      audience              = google_cloudfunctions2_function.sweeper.service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  depends_on = [google_cloud_run_v2_service_iam_member.sweeper_push]
}
