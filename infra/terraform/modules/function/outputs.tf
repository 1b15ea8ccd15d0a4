output "name" {
  description = "Name of the function (and of its Cloud Run service)."
  value       = google_cloudfunctions2_function.function.name
}

output "uri" {
  description = "The function's Cloud Run service URI (service_config.uri)."
  value       = google_cloudfunctions2_function.function.service_config[0].uri
}

output "url" {
  description = "The function's URL."
  value       = google_cloudfunctions2_function.function.url
}
