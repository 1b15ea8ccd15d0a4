# Tamper evidence for the session record (docs/sessions.md).
#
# Events in Firestore are chained with HMAC-SHA256 under the audit chain key
# (secrets.tf): only the functions that append and the verifiers may read it, so
# someone who can write Firestore cannot re-seal an edited event. After every
# append the functions checkpoint the session head (session, seq, MAC, time)
# outside Firestore, twice:
#   * as a structured log line, which this file routes into a log bucket with a
#     locked retention and into the checkpoint bucket (hourly files), and
#   * as objects in the checkpoint bucket, written in one-second batches.
# The bucket's retention policy keeps anyone from deleting or replacing a
# checkpoint before it expires; locked (var.audit_anchor_lock), not even the
# project owner can shorten it. All checkpoints together are the index of every
# session: `bqgate sessions verify` names a session that is gone or shorter.
# Checkpoints past the retention are no longer evidence of anything: a lifecycle
# rule deletes them.

resource "google_storage_bucket" "audit_anchors" {
  project                     = var.project_id
  name                        = "${var.project_id}-${var.name_prefix}-audit-anchors"
  location                    = var.region
  labels                      = var.labels
  force_destroy               = false
  public_access_prevention    = "enforced"
  uniform_bucket_level_access = true

  retention_policy {
    retention_period = var.audit_anchor_retention_days * 86400
    is_locked        = var.audit_anchor_lock
  }

  lifecycle_rule {
    action {
      type = "Delete"
    }
    condition {
      age = var.audit_anchor_retention_days + 1
    }
  }

  depends_on = [google_project_service.gateway]
}

# Every function appends to the session record: each may create checkpoint
# objects (never read, replace or delete them), and mounts the chain key
# (functions.tf), which it may therefore read (modules/function).
resource "google_storage_bucket_iam_member" "audit_anchor_writer" {
  for_each = google_service_account.function
  bucket   = google_storage_bucket.audit_anchors.name
  role     = "roles/storage.objectCreator"
  member   = each.value.member
}

# Verifiers (`bqgate sessions verify`): read the checkpoints and the chain key.
resource "google_storage_bucket_iam_member" "audit_anchor_verifier" {
  for_each = toset(var.audit_verifiers)
  bucket   = google_storage_bucket.audit_anchors.name
  role     = "roles/storage.objectViewer"
  member   = each.value
}

resource "google_secret_manager_secret_iam_member" "audit_chain_key_verifier" {
  for_each  = toset(var.audit_verifiers)
  project   = var.project_id
  secret_id = google_secret_manager_secret.secret["audit_chain_key"].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value
}

# --- Cloud Logging: the per-append checkpoint lines.

resource "google_logging_project_bucket_config" "audit_anchors" {
  project        = var.project_id
  location       = "global"
  bucket_id      = "${var.name_prefix}-audit-anchors"
  description    = "bqgate session checkpoints (one log line per append), retention locked."
  retention_days = var.audit_anchor_retention_days
  locked         = var.audit_anchor_lock

  depends_on = [google_project_service.gateway]
}

resource "google_logging_project_sink" "audit_anchors_to_log_bucket" {
  project                = var.project_id
  name                   = "${var.name_prefix}-audit-anchors-log"
  description            = "Session checkpoints into the locked log bucket."
  destination            = "logging.googleapis.com/${google_logging_project_bucket_config.audit_anchors.id}"
  filter                 = local.audit_anchor_log_filter
  unique_writer_identity = true
}

resource "google_logging_project_sink" "audit_anchors_to_bucket" {
  project                = var.project_id
  name                   = "${var.name_prefix}-audit-anchors-gcs"
  description            = "Session checkpoints into the checkpoint bucket (hourly files)."
  destination            = "storage.googleapis.com/${google_storage_bucket.audit_anchors.name}"
  filter                 = local.audit_anchor_log_filter
  unique_writer_identity = true
}

resource "google_storage_bucket_iam_member" "audit_anchors_sink_writer" {
  bucket = google_storage_bucket.audit_anchors.name
  role   = "roles/storage.objectCreator"
  member = google_logging_project_sink.audit_anchors_to_bucket.writer_identity
}

# The approver console (approvals function) verifies the sessions it shows against the
# checkpoints: it may read them (it already holds the chain key, and the bucket's
# retention keeps it from replacing or deleting any).
resource "google_storage_bucket_iam_member" "console_anchor_reader" {
  bucket = google_storage_bucket.audit_anchors.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.function["approvals"].member
}
