# Secret Manager secrets, mounted into the functions as environment variables
# (functions.tf). Terraform creates the secrets only: their values never pass
# through Terraform or its state. Add them with, for example:
#   printf %s "$SLACK_BOT_TOKEN" | gcloud secrets versions add <prefix>-slack-bot-token --data-file=-
# A function cannot deploy until its secrets have a version (see README.md).

resource "google_secret_manager_secret" "slack_bot_token" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-slack-bot-token"
  labels    = var.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.gateway]
}

resource "google_secret_manager_secret" "slack_signing_secret" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-slack-signing-secret"
  labels    = var.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.gateway]
}

# Key of the HMAC the executor masks sensitive values with. Rotating it changes
# every masked token, so joins across the rotation no longer match.
resource "google_secret_manager_secret" "masking_hmac_key" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-masking-hmac-key"
  labels    = var.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.gateway]
}

# Key of the HMAC that chains the session record (audit.tf, docs/sessions.md):
# 32+ random bytes, hex. Firestore writers do not hold it, so they cannot re-seal
# an edited event. Keep old versions when rotating: verification needs them.
resource "google_secret_manager_secret" "audit_chain_key" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-audit-chain-key"
  labels    = var.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.gateway]
}

# The approver console's OAuth client secret (from the identity provider), and the key
# that signs its session cookie (32 random bytes or more; rotating it signs everyone out).
resource "google_secret_manager_secret" "console_client_secret" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-console-client-secret"
  labels    = var.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.gateway]
}

resource "google_secret_manager_secret" "console_session_key" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-console-session-key"
  labels    = var.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.gateway]
}
