# Pub/Sub: the `execute` and `approvals` work topics, each with a dead-letter topic.
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

  # Each work topic (<prefix>-<name>), the function its messages are pushed to, and
  # that subscription's ack deadline: above the function's timeout (the executor's
  # 540 s, slack_notify's 60 s).
  work_topics = {
    approvals = { function = "slack_notify", ack_deadline_seconds = 120 }
    execute   = { function = "executor", ack_deadline_seconds = 600 }
  }

  # Every push subscription, by the topic it drains: each work topic to its function
  # (the push path only names the topic in the CloudEvent source; any path reaches
  # the function), dead-lettered; each dead-letter topic to the sweeper's consumer
  # (/dead-letter/{topic}), retried with backoff while the sweeper fails and never
  # dead-lettered again (the pull subscriptions below keep a copy of each regardless).
  push_subscriptions = merge(
    {
      for t, w in local.work_topics : t => {
        name                 = "${t}-to-${replace(w.function, "_", "-")}"
        topic                = google_pubsub_topic.work[t]
        function             = w.function
        path                 = "/projects/${var.project_id}/topics/${google_pubsub_topic.work[t].name}"
        ack_deadline_seconds = w.ack_deadline_seconds
        dead_letter_topics   = [google_pubsub_topic.dead_letter[t].id]
      }
    },
    {
      for t in keys(local.work_topics) : "${t}_dead_letter" => {
        name                 = "${t}-dead-letter-to-sweeper"
        topic                = google_pubsub_topic.dead_letter[t]
        function             = "sweeper"
        path                 = "/dead-letter/${t}"
        ack_deadline_seconds = 60
        dead_letter_topics   = []
      }
    },
  )
}

resource "google_pubsub_topic" "work" {
  for_each                   = local.work_topics
  project                    = var.project_id
  name                       = "${var.name_prefix}-${each.key}"
  labels                     = var.labels
  message_retention_duration = local.seven_days
  depends_on                 = [google_project_service.gateway]
}

resource "google_pubsub_topic" "dead_letter" {
  for_each   = local.work_topics
  project    = var.project_id
  name       = "${var.name_prefix}-${each.key}-dead-letter"
  labels     = var.labels
  depends_on = [google_project_service.gateway]
}

# Pushed with an OIDC token of the function's push identity (iam.tf), which alone
# may invoke it (once modules/function has granted that, hence depends_on).
# Subscriptions never expire.
resource "google_pubsub_subscription" "push" {
  for_each                   = local.push_subscriptions
  project                    = var.project_id
  name                       = "${var.name_prefix}-${each.value.name}"
  topic                      = each.value.topic.id
  labels                     = var.labels
  ack_deadline_seconds       = each.value.ack_deadline_seconds
  message_retention_duration = local.seven_days

  expiration_policy {
    ttl = ""
  }

  push_config {
    push_endpoint = "${local.deployed_functions[each.value.function].uri}${each.value.path}"
    oidc_token {
      service_account_email = google_service_account.push[each.value.function].email
      audience              = local.deployed_functions[each.value.function].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter_topics
    content {
      dead_letter_topic     = dead_letter_policy.value
      max_delivery_attempts = var.max_delivery_attempts
    }
  }

  depends_on = [module.function, google_pubsub_topic_iam_member.dead_letter_pubsub_agent]
}

# Dead letters are kept here: a topic without a subscription drops messages.
resource "google_pubsub_subscription" "dead_letter" {
  for_each                   = local.work_topics
  project                    = var.project_id
  name                       = "${var.name_prefix}-${each.key}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  labels                     = var.labels
  message_retention_duration = local.seven_days
  retain_acked_messages      = true

  expiration_policy {
    ttl = ""
  }
}
