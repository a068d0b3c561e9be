"""What the API routes and the dashboards do with the store, in one place each (the crud layer of
full-stack-fastapi-template): `jobs` (submit, read, list, cancel, re-run), `results` (a worker's
rows saved, rows queried and compared) and `filters` (the one filter both of them take)."""
