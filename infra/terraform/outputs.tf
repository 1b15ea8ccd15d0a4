# Outputs, in alphabetical order.

output "approvals_url" {
  description = "URL of the approvals function (approver API; the console is at console_url)."
  value       = module.function["approvals"].url
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
  value       = "${module.function["approvals"].uri}/console/auth/callback"
}

output "console_url" {
  description = "The approver console (open it on the function's run.app address, where its paths start at /)."
  value       = "${module.function["approvals"].uri}/console/"
}

output "dead_letter_subscriptions" {
  description = "Pull subscriptions holding the messages no function could process, by topic."
  value       = { for t, s in google_pubsub_subscription.dead_letter : t => s.name }
}

output "executor_url" {
  description = "URL of the executor function (IAM-only: Pub/Sub push and ingress)."
  value       = module.function["executor"].uri
}

output "gateway_url" {
  description = "BigQuery API endpoint to give agents (api_endpoint of the BigQuery client, --api of bq)."
  value       = module.executor_caller["ingress"].url
}

output "mcp_url" {
  description = "MCP endpoint (Streamable HTTP) to give agents that speak MCP."
  value       = "${module.executor_caller["mcp"].url}/mcp"
}

output "secret_ids" {
  description = "Secret Manager secrets to add values to, by purpose."
  value       = { for k, s in google_secret_manager_secret.secret : k => s.secret_id }
}

output "service_account_emails" {
  description = "Runtime service account of each function."
  value       = { for k, sa in google_service_account.function : k => sa.email }
}

output "slack_interactivity_url" {
  description = "Request URL for the Slack app's Interactivity settings (slack-app-manifest.yaml)."
  value       = "${module.function["approvals"].url}/slack/interactions"
}

output "sweeper_url" {
  description = "URL of the sweeper function (IAM-only: Cloud Scheduler and the dead-letter push)."
  value       = module.function["sweeper"].uri
}

output "topic_names" {
  description = "Pub/Sub topics, by role."
  value = merge(
    { for t, topic in google_pubsub_topic.work : t => topic.name },
    { for t, topic in google_pubsub_topic.dead_letter : "${t}_dead_letter" => topic.name },
  )
}
