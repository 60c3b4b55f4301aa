"""Code generation from openapi.yaml that datamodel-code-generator does not cover."""
