variable "function_dir" {
  description = "Folder of the function (holds main.py and requirements.txt)."
  type        = string
}

variable "policy_file" {
  description = "Policy file, shipped as policy.yaml at the bundle root."
  type        = string
}

variable "shared_dir" {
  description = "Folder of the shared library package (shared/bqgate), shipped as bqgate/."
  type        = string
}
