# Bucket holding the function bundles (see bundles.tf). Bundles are named by
# content hash; Terraform deletes a replaced one, and versioning keeps it 30
# more days for rollback.

resource "google_storage_bucket" "bundles" {
  project                     = var.project_id
  name                        = "${var.project_id}-${var.name_prefix}-bundles"
  location                    = var.region
  labels                      = var.labels
  force_destroy               = false
  public_access_prevention    = "enforced"
  uniform_bucket_level_access = true

  versioning {
    enabled = true
  }

  lifecycle_rule {
    action {
      type = "Delete"
    }
    condition {
      days_since_noncurrent_time = 30
    }
  }

  depends_on = [google_project_service.gateway]
}
