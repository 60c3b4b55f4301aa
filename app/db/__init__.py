"""Storage: tables, rows as records, column types, engine and connections, the migrations."""
