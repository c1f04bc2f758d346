"""The HTTP side: the Klein API, its site and guards, the dashboard, metrics and the OpenAPI document."""
