output "files" {
  description = "Map of path inside the bundle => path of the source file."
  value       = local.files
}
