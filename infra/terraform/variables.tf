# Input variables, in alphabetical order.

variable "audit_anchor_lock" {
  description = "Lock the retention of the session checkpoint bucket and log bucket (irreversible: nobody, not even the project owner, can then delete a checkpoint, shorten the retention or delete the bucket before every object expires)."
  type        = bool
  default     = true
}

variable "audit_anchor_retention_days" {
  description = "Days session checkpoints are kept; at least the policy's sessions.retention (30 days by default)."
  type        = number
  default     = 400
  validation {
    condition     = var.audit_anchor_retention_days >= 1 && var.audit_anchor_retention_days <= 3650 && floor(var.audit_anchor_retention_days) == var.audit_anchor_retention_days
    error_message = "audit_anchor_retention_days must be a whole number of days between 1 and 3650."
  }
}

variable "audit_verifiers" {
  description = "Members who may verify the session record: read the checkpoints and the audit chain key, e.g. group:security@example.com."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for m in var.audit_verifiers : can(regex("^(user|serviceAccount|group|domain|principal|principalSet):.+", m))])
    error_message = "Each audit_verifiers entry must be an IAM member such as user:..., serviceAccount:... or group:..."
  }
}

variable "bigquery_location" {
  description = "BigQuery location the executor runs jobs in (BQGATE_LOCATION), e.g. US, EU or a region."
  type        = string
  default     = "US"
  validation {
    condition     = can(regex("^(US|EU|[a-z]+-[a-z]+[0-9]+)$", var.bigquery_location))
    error_message = "bigquery_location must be US, EU or a region such as europe-west1."
  }
}

variable "call_timeout_ms" {
  description = "Deadline of each Firestore and Pub/Sub call in the functions, retries included (BQGATE_CALL_TIMEOUT_MS): an outage answers 503 after it."
  type        = number
  default     = 5000
  validation {
    condition     = var.call_timeout_ms >= 500 && var.call_timeout_ms <= 30000 && floor(var.call_timeout_ms) == var.call_timeout_ms
    error_message = "call_timeout_ms must be a whole number of milliseconds between 500 and 30000 (well under the functions' timeouts)."
  }
}

variable "console_oidc_client_id" {
  description = "OAuth client id the approver console signs approvers in with (BQGATE_CONSOLE_CLIENT_ID), e.g. a Google \"Web application\" client. It must also be one of that issuer's audiences in the policy. Empty leaves the console off."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^[A-Za-z0-9._:@-]{0,255}$", var.console_oidc_client_id))
    error_message = "console_oidc_client_id must be an OAuth client id (letters, digits, . _ : @ -), or empty."
  }
}

variable "console_oidc_issuer" {
  description = "OpenID Connect issuer of the approver console's sign-in (BQGATE_CONSOLE_ISSUER); it must be a trusted issuer of the policy."
  type        = string
  default     = "https://accounts.google.com"
  validation {
    condition     = can(regex("^https://[a-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/-]*)?[^/]$", var.console_oidc_issuer))
    error_message = "console_oidc_issuer must be an https URL without a trailing slash, e.g. https://accounts.google.com."
  }
}

variable "firestore_database" {
  description = "Firestore database id for job state, approvals, result pages and sessions (BQGATE_FIRESTORE_DATABASE)."
  type        = string
  default     = "(default)"
  validation {
    condition     = var.firestore_database == "(default)" || can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.firestore_database))
    error_message = "firestore_database must be \"(default)\" or 4-63 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "firestore_deletion_protection" {
  description = "Refuse to delete the Firestore database (and keep it when Terraform destroys it)."
  type        = bool
  default     = true
}

variable "firestore_location" {
  description = "Firestore location: a multi-region (nam5, eur3) or a region. Cannot be changed once created."
  type        = string
  default     = "nam5"
  validation {
    condition     = can(regex("^(nam5|nam7|eur3|[a-z]+-[a-z]+[0-9]+)$", var.firestore_location))
    error_message = "firestore_location must be nam5, nam7, eur3 or a region such as us-central1."
  }
}

variable "ingress_invokers" {
  description = "Members granted roles/run.invoker on the ingress and mcp functions when require_cloud_run_iam is true, e.g. serviceAccount:agent@p.iam.gserviceaccount.com."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for m in var.ingress_invokers : can(regex("^(user|serviceAccount|group|domain|principal|principalSet):.+", m))])
    error_message = "Each ingress_invokers entry must be an IAM member such as user:..., serviceAccount:..., group:... or domain:... (allUsers is what require_cloud_run_iam = false means)."
  }
}

variable "labels" {
  description = "Labels applied to the resources that take them."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "Label keys must start with a lowercase letter; keys and values may hold lowercase letters, digits, _ and - (63 characters at most)."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of a Pub/Sub message to a function before it goes to the topic's dead-letter topic."
  type        = number
  default     = 5
  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "Pub/Sub accepts max_delivery_attempts between 5 and 100."
  }
}

variable "max_instance_count" {
  description = "Most instances each function may scale to."
  type        = number
  default     = 20
  validation {
    condition     = var.max_instance_count >= 1 && var.max_instance_count <= 1000 && floor(var.max_instance_count) == var.max_instance_count
    error_message = "max_instance_count must be a whole number between 1 and 1000."
  }
}

variable "name_prefix" {
  description = "Prefix of every named resource (functions, service accounts, topics, secrets, bucket)."
  type        = string
  default     = "bqgate"
  validation {
    condition     = can(regex("^[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?$", var.name_prefix))
    error_message = "name_prefix must be 1-12 lowercase letters, digits or hyphens, start with a letter and not end with a hyphen (service account ids are 30 characters at most)."
  }
}

variable "policy_file" {
  description = "Path of the policy YAML to deploy (shipped in every bundle as policy.yaml), e.g. ../../policies/prod.yaml."
  type        = string
  validation {
    condition     = can(regex("\\.ya?ml$", var.policy_file)) && fileexists(var.policy_file)
    error_message = "policy_file must name an existing .yaml or .yml file (relative paths are from the folder terraform runs in)."
  }
}

variable "project_id" {
  description = "Gateway project: functions, Firestore, Pub/Sub, secrets and the bundle bucket live here."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of the functions and the bundle bucket."
  type        = string
  default     = "us-central1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 or europe-west1."
  }
}

variable "require_cloud_run_iam" {
  description = "When true, the ingress and mcp functions are not public: only ingress_invokers get roles/run.invoker, and agents must send a Google-signed ID token for them. When false (default) anyone can reach them and the gateway authenticates every request itself."
  type        = bool
  default     = false
}

variable "slack_channel" {
  description = "Slack channel the approval requests are posted to (BQGATE_SLACK_CHANNEL): a channel id (C0123ABCD) or #name."
  type        = string
  default     = "#bqgate-approvals"
  validation {
    condition     = can(regex("^([CGD][A-Z0-9]{6,}|#[a-z0-9][a-z0-9_-]{0,79})$", var.slack_channel))
    error_message = "slack_channel must be a Slack channel id (C0123ABCD) or a #channel-name."
  }
}

variable "sweep_schedule" {
  description = "Cron schedule (UTC) of the sweeper: outbox reconciler, approval expiry, orphaned jobs. Every minute by default, the most often Cloud Scheduler runs."
  type        = string
  default     = "* * * * *"
  validation {
    condition     = length(split(" ", trimspace(var.sweep_schedule))) == 5
    error_message = "sweep_schedule must be a five-field cron expression, e.g. \"* * * * *\"."
  }
}

variable "warehouse_datasets" {
  description = "Datasets of the warehouse project the executor may use, as dataset id => \"read\" (roles/bigquery.dataViewer) or \"write\" (roles/bigquery.dataEditor). The executor gets no data access anywhere else."
  type        = map(string)
  validation {
    condition     = alltrue([for d, access in var.warehouse_datasets : can(regex("^[A-Za-z0-9_]{1,1024}$", d)) && contains(["read", "write"], access)])
    error_message = "Keys must be dataset ids (letters, digits, underscores) and values \"read\" or \"write\"."
  }
}

variable "warehouse_project_id" {
  description = "BigQuery project the executor runs jobs in and bills to (BQGATE_WAREHOUSE_PROJECT); null means project_id."
  type        = string
  default     = null
  validation {
    condition     = var.warehouse_project_id == null || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.warehouse_project_id))
    error_message = "warehouse_project_id must be a project id: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}
