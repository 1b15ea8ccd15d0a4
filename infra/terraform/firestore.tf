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

# An agent's or approver's job list, newest first (jobs.list).
resource "google_firestore_index" "jobs_by_owner" {
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  fields {
    field_path = "owner"
    order      = "ASCENDING"
  }

  fields {
    field_path = "created_ms"
    order      = "DESCENDING"
  }
}

# The approvers' list: requests awaiting approval, unexpired (a range on
# expire_at_ms), newest first by creation time, paged by a cursor on all three
# sort fields (bqgate.adapters.firestore_store.FirestoreJobStore.pending_approvals).
resource "google_firestore_index" "jobs_pending_newest_first" {
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }

  fields {
    field_path = "created_ms"
    order      = "DESCENDING"
  }

  fields {
    field_path = "expire_at_ms"
    order      = "DESCENDING"
  }

  fields {
    field_path = "__name__"
    order      = "DESCENDING"
  }
}

# A principal's near-identical pending requests (one statement hash): a group.
resource "google_firestore_index" "jobs_pending_group" {
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  fields {
    field_path = "owner"
    order      = "ASCENDING"
  }

  fields {
    field_path = "classification.statement_hash"
    order      = "ASCENDING"
  }

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }

  fields {
    field_path = "expire_at_ms"
    order      = "ASCENDING"
  }
}

# The sweeper: requests past their expiry, and RUNNING jobs past the deadline.
resource "google_firestore_index" "jobs_state_expiry" {
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }

  fields {
    field_path = "expire_at_ms"
    order      = "ASCENDING"
  }
}

resource "google_firestore_index" "jobs_state_started" {
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }

  fields {
    field_path = "started_ms"
    order      = "ASCENDING"
  }
}

# A principal's sessions, newest first.
resource "google_firestore_index" "sessions_by_principal" {
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = "sessions"
  query_scope = "COLLECTION"

  fields {
    field_path = "principal"
    order      = "ASCENDING"
  }

  fields {
    field_path = "started_at"
    order      = "DESCENDING"
  }
}

# The approver console's history: decided requests, latest decision first, filtered by
# requester, decision, table or decider (Firestore merges these for combined filters).
resource "google_firestore_index" "decided_by_owner" {
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  fields {
    field_path = "owner"
    order      = "ASCENDING"
  }

  fields {
    field_path = "approval.decided_at_ms"
    order      = "DESCENDING"
  }
}

resource "google_firestore_index" "decided_by_status" {
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  fields {
    field_path = "approval.status"
    order      = "ASCENDING"
  }

  fields {
    field_path = "approval.decided_at_ms"
    order      = "DESCENDING"
  }
}

resource "google_firestore_index" "decided_by_table" {
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  fields {
    field_path   = "classification.tables"
    array_config = "CONTAINS"
  }

  fields {
    field_path = "approval.decided_at_ms"
    order      = "DESCENDING"
  }
}

resource "google_firestore_index" "decided_by_decider" {
  project     = var.project_id
  database    = google_firestore_database.gateway.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  fields {
    field_path   = "approval.deciders"
    array_config = "CONTAINS"
  }

  fields {
    field_path = "approval.decided_at_ms"
    order      = "DESCENDING"
  }
}
