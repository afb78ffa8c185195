"""One module per topic (billing, jobs, …); each calls `email_renderer_register` at import."""
