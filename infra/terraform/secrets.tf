# Secret Manager secrets, mounted into the functions as environment variables
# (local.functions, modules/function). Terraform creates the secrets only: their
# values never pass through Terraform or its state. Add them with, for example:
#   printf %s "$SLACK_BOT_TOKEN" | gcloud secrets versions add <prefix>-slack-bot-token --data-file=-
# A function cannot deploy until its secrets have a version (see README.md).

locals {
  # Each secret (its id: <prefix>-<name with hyphens>) and the environment
  # variable it is mounted as.
  secrets = {
    # Key of the HMAC that chains the session record (audit.tf, docs/sessions.md):
    # 32+ random bytes, hex. Firestore writers do not hold it, so they cannot re-seal
    # an edited event. Keep old versions when rotating: verification needs them.
    audit_chain_key = "BQGATE_AUDIT_KEY"
    # The approver console's OAuth client secret (from the identity provider), and the
    # key that signs its session cookie (32 random bytes or more; rotating it signs
    # everyone out).
    console_client_secret = "BQGATE_CONSOLE_CLIENT_SECRET"
    console_session_key   = "BQGATE_CONSOLE_SESSION_KEY"
    # Key of the HMAC the executor masks sensitive values with. Rotating it changes
    # every masked token, so joins across the rotation no longer match.
    masking_hmac_key     = "BQGATE_HMAC_KEY"
    slack_bot_token      = "BQGATE_SLACK_BOT_TOKEN"
    slack_signing_secret = "BQGATE_SLACK_SIGNING_SECRET"
  }
}

resource "google_secret_manager_secret" "secret" {
  for_each  = local.secrets
  project   = var.project_id
  secret_id = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  labels    = var.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.gateway]
}
