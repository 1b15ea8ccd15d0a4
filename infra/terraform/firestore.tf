# Firestore (native mode): job state, approvals, masked result pages, sessions.

resource "google_firestore_database" "gateway" {
  project                 = var.project_id
  name                    = var.firestore_database
  location_id             = var.firestore_location
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = var.firestore_deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy         = var.firestore_deletion_protection ? "ABANDON" : "DELETE"
  depends_on              = [google_project_service.gateway]
}

# Documents carry an `expire_at` timestamp; Firestore deletes them after it.
# The field is left out of single-field indexes (TTL timestamps hotspot them).
resource "google_firestore_field" "expire_at" {
  for_each   = toset(local.firestore_ttl_collections)
  project    = var.project_id
  database   = google_firestore_database.gateway.name
  collection = each.value
  field      = "expire_at"

  ttl_config {}

  index_config {}
}

locals {
  # The composite indexes the queries use, by name: a collection and its fields in
  # order, each with its ordering (ASCENDING, DESCENDING) or CONTAINS for an array.
  firestore_indexes = {
    # An agent's or approver's job list, newest first (jobs.list).
    jobs_by_owner = { collection = "jobs", fields = [["owner", "ASCENDING"], ["created_ms", "DESCENDING"]] }
    # The approvers' list: requests awaiting approval, unexpired (a range on
    # expire_at_ms), newest first by creation time, paged by a cursor on all three
    # sort fields (bqgate.adapters.firestore_store.FirestoreJobStore.pending_approvals).
    jobs_pending_newest_first = {
      collection = "jobs"
      fields     = [["state", "ASCENDING"], ["created_ms", "DESCENDING"], ["expire_at_ms", "DESCENDING"], ["__name__", "DESCENDING"]]
    }
    # A principal's near-identical pending requests (one statement hash): a group.
    jobs_pending_group = {
      collection = "jobs"
      fields     = [["owner", "ASCENDING"], ["classification.statement_hash", "ASCENDING"], ["state", "ASCENDING"], ["expire_at_ms", "ASCENDING"]]
    }
    # The sweeper: requests past their expiry, and RUNNING jobs past the deadline.
    jobs_state_expiry  = { collection = "jobs", fields = [["state", "ASCENDING"], ["expire_at_ms", "ASCENDING"]] }
    jobs_state_started = { collection = "jobs", fields = [["state", "ASCENDING"], ["started_ms", "ASCENDING"]] }
    # A principal's sessions, newest first.
    sessions_by_principal = { collection = "sessions", fields = [["principal", "ASCENDING"], ["started_at", "DESCENDING"]] }
    # The approver console's history: decided requests, latest decision first, filtered
    # by requester, decision, table or decider (Firestore merges these for combined
    # filters).
    decided_by_owner   = { collection = "jobs", fields = [["owner", "ASCENDING"], ["approval.decided_at_ms", "DESCENDING"]] }
    decided_by_status  = { collection = "jobs", fields = [["approval.status", "ASCENDING"], ["approval.decided_at_ms", "DESCENDING"]] }
    decided_by_table   = { collection = "jobs", fields = [["classification.tables", "CONTAINS"], ["approval.decided_at_ms", "DESCENDING"]] }
    decided_by_decider = { collection = "jobs", fields = [["approval.deciders", "CONTAINS"], ["approval.decided_at_ms", "DESCENDING"]] }
  }
}

resource "google_firestore_index" "composite" {
  for_each    = local.firestore_indexes
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = each.value.collection
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path   = fields.value[0]
      order        = fields.value[1] == "CONTAINS" ? null : fields.value[1]
      array_config = fields.value[1] == "CONTAINS" ? "CONTAINS" : null
    }
  }
}
