# Google APIs the gateway needs. Disabling is left to people: destroying this
# configuration never turns an API off.

locals {
  gateway_apis = [
    "artifactregistry.googleapis.com", # function images
    "cloudbuild.googleapis.com",       # function builds
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com", # the sweeper's schedule
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com", # ID tokens: Pub/Sub push, ingress -> executor
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com", # gen2 functions are Cloud Run services
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]
}

resource "google_project_service" "gateway" {
  for_each           = toset(local.gateway_apis)
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# Jobs run in (and are billed to) the warehouse project.
resource "google_project_service" "warehouse_bigquery" {
  project            = local.warehouse_project_id
  service            = "bigquery.googleapis.com"
  disable_on_destroy = false
}
