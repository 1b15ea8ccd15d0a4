# Provider configuration. Resources set `project` explicitly; these are only defaults.

provider "google" {
  project = var.project_id
  region  = var.region
}
