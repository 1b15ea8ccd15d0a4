# Outputs, in alphabetical order.

output "approvals_url" {
  description = "URL of the approvals function (approver API; the console is at console_url)."
  value       = google_cloudfunctions2_function.approvals.url
}

output "audit_anchor_bucket" {
  description = "Bucket of the session checkpoints (bqgate sessions verify --anchor-bucket)."
  value       = google_storage_bucket.audit_anchors.name
}

output "bundle_bucket" {
  description = "Bucket holding the function bundles."
  value       = google_storage_bucket.bundles.name
}

output "console_redirect_uri" {
  description = "Redirect URI to register with the console's OAuth client (Authorized redirect URIs)."
  value       = "${google_cloudfunctions2_function.approvals.service_config[0].uri}/console/auth/callback"
}

output "console_url" {
  description = "The approver console (open it on the function's run.app address, where its paths start at /)."
  value       = "${google_cloudfunctions2_function.approvals.service_config[0].uri}/console/"
}

output "dead_letter_subscriptions" {
  description = "Pull subscriptions holding the messages no function could process, by topic."
  value = {
    approvals = google_pubsub_subscription.approvals_dead_letter.name
    execute   = google_pubsub_subscription.execute_dead_letter.name
  }
}

output "executor_url" {
  description = "URL of the executor function (IAM-only: Pub/Sub push and ingress)."
  value       = google_cloudfunctions2_function.executor.service_config[0].uri
}

output "gateway_url" {
  description = "BigQuery API endpoint to give agents (api_endpoint of the BigQuery client, --api of bq)."
  value       = google_cloudfunctions2_function.ingress.url
}

output "mcp_url" {
  description = "MCP endpoint (Streamable HTTP) to give agents that speak MCP."
  value       = "${google_cloudfunctions2_function.mcp.url}/mcp"
}

output "secret_ids" {
  description = "Secret Manager secrets to add values to, by purpose."
  value = {
    audit_chain_key       = google_secret_manager_secret.audit_chain_key.secret_id
    console_client_secret = google_secret_manager_secret.console_client_secret.secret_id
    console_session_key   = google_secret_manager_secret.console_session_key.secret_id
    masking_hmac_key      = google_secret_manager_secret.masking_hmac_key.secret_id
    slack_bot_token       = google_secret_manager_secret.slack_bot_token.secret_id
    slack_signing_secret  = google_secret_manager_secret.slack_signing_secret.secret_id
  }
}

output "service_account_emails" {
  description = "Runtime service account of each function."
  value       = { for k, sa in google_service_account.function : k => sa.email }
}

output "slack_interactivity_url" {
  description = "Request URL for the Slack app's Interactivity settings (slack-app-manifest.yaml)."
  value       = "${google_cloudfunctions2_function.approvals.url}/slack/interactions"
}

output "sweeper_url" {
  description = "URL of the sweeper function (IAM-only: Cloud Scheduler and the dead-letter push)."
  value       = google_cloudfunctions2_function.sweeper.service_config[0].uri
}

output "topic_names" {
  description = "Pub/Sub topics, by role."
  value = {
    approvals             = google_pubsub_topic.approvals.name
    approvals_dead_letter = google_pubsub_topic.approvals_dead_letter.name
    execute               = google_pubsub_topic.execute.name
    execute_dead_letter   = google_pubsub_topic.execute_dead_letter.name
  }
}
