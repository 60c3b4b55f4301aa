"""Storage: tables, column types, the engine and its sessions, and the migrations."""
