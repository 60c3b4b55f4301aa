"""The Connexion adapter: OpenAPI 3.1 loading, JSON Schema 2020-12 validation, errors -> HTTP."""
